"""Dataset registration, one family per module (registered at import):

* :mod:`.register_toy`: the built-in toy data (``toy_panoptic_*``, ``toy_sem_seg_*``);
* :mod:`.register_pascal_context`: PASCAL Context 59 / 60.

COCO panoptic, Cityscapes and ADE20K use Detectron2's own registrations (``detectron2.data``).
See ``datasets/README.md`` for the expected directory trees.
"""

from . import register_pascal_context, register_toy  # noqa: F401  (register at import)
