"""Heads and meta-architectures; importing this module registers them with Detectron2."""
from . import rsp, nrd, meta_arch  # noqa: F401
from .test_time_augmentation import PanopticFPNWithTTA, SemanticSegmentorWithTTA, build_tta_model

__all__ = ["SemanticSegmentorWithTTA", "PanopticFPNWithTTA", "build_tta_model"]
