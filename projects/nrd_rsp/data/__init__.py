"""Datasets (toy, PASCAL Context; Detectron2's built-ins for COCO, Cityscapes, ADE20K) and mappers."""
from . import datasets  # noqa: F401  (registers datasets)
from .mappers import PanopticFPNDatasetMapper, SemanticSegDatasetMapper, build_train_mapper

__all__ = ["PanopticFPNDatasetMapper", "SemanticSegDatasetMapper", "build_train_mapper"]
