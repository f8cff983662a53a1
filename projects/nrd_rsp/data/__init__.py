"""Datasets (toy, PASCAL Context; Detectron2's built-ins for COCO, Cityscapes, ADE20K), mappers
and the resumable training loader. Importing it registers the datasets.

* :mod:`.catalog`: datasets root, dataset availability checks;
* :mod:`.datasets`: one registration module per dataset family;
* :mod:`.toy`: the toy data generator;
* :mod:`.panoptic_separated`: COCO panoptic -> Panoptic FPN stuff labels;
* :mod:`.checked_reading`: image / label reading that names bad files;
* :mod:`.mappers`: dataset dict -> model input;
* :mod:`.resumable_loader`: the deterministic, resumable training loader.
"""

from . import datasets  # noqa: F401  (registers datasets)
from .mappers import (
    CheckedDatasetMapper,
    PanopticFPNDatasetMapper,
    SemanticSegDatasetMapper,
    build_test_mapper,
    build_train_mapper,
)

__all__ = [
    "CheckedDatasetMapper",
    "PanopticFPNDatasetMapper",
    "SemanticSegDatasetMapper",
    "build_test_mapper",
    "build_train_mapper",
]
