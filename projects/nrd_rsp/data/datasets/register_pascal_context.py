"""Registration of PASCAL Context: ``pascal_context_59_sem_seg_{train,val}`` (59 classes,
background ignored) and ``pascal_context_60_sem_seg_{train,val}`` (background = class 0), under
``$DETECTRON2_DATASETS/pascal_context`` as read at import. Made by
``datasets/prepare_pascal_context.py``; see ``datasets/README.md``.
"""

import os
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from ..catalog import datasets_root, unregister

__all__ = ["PASCAL_CONTEXT_59_CLASSES", "register_pascal_context"]

# The 59 most frequent classes (Mottaghi et al. CVPR 2014), alphabetical = ascending id in the
# official 459-class labels.txt; the list used by mmsegmentation / Mask2Former.
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]  # fmt: skip


def _voc_colormap(n: int) -> List[List[int]]:
    """The PASCAL VOC label colour map (bit-interleaved), entries 0..n-1."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def register_pascal_context(root: Optional[str] = None) -> None:
    """Register ``pascal_context_{59,60}_sem_seg_{train,val}`` under ``<root>/pascal_context``.

    Layout (made by ``datasets/prepare_pascal_context.py``)::

        pascal_context/images/{train,val}/*.jpg
        pascal_context/annotations_ctx59/{train,val}/*.png   # 0..58, 255 = background/ignore
        pascal_context/annotations_ctx60/{train,val}/*.png   # 0 = background, 1..59
    """
    base = os.path.join(root if root is not None else datasets_root(), "pascal_context")
    colors = _voc_colormap(60)
    variants = {
        59: (list(PASCAL_CONTEXT_59_CLASSES), colors[1:]),
        60: (["background"] + PASCAL_CONTEXT_59_CLASSES, colors),
    }
    for n, (classes, class_colors) in variants.items():
        for split in ("train", "val"):
            name = f"pascal_context_{n}_sem_seg_{split}"
            image_dir = os.path.join(base, "images", split)
            gt_dir = os.path.join(base, f"annotations_ctx{n}", split)
            unregister(name)
            DatasetCatalog.register(
                name,
                lambda x=image_dir, y=gt_dir: load_sem_seg(y, x, gt_ext="png", image_ext="jpg"),
            )
            MetadataCatalog.get(name).set(
                stuff_classes=list(classes),
                stuff_colors=[list(c) for c in class_colors],
                image_root=image_dir,
                sem_seg_root=gt_dir,
                evaluator_type="sem_seg",
                ignore_label=255,
            )


register_pascal_context()
