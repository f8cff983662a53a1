"""Datasets (toy, PASCAL Context; Detectron2's built-ins for COCO, Cityscapes, ADE20K) and mappers."""
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
