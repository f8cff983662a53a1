"""Heads and meta-architectures; importing this module registers them with Detectron2."""
from . import rsp, nrd, meta_arch  # noqa: F401
from .test_time_augmentation import SemanticSegmentorWithTTA

__all__ = ["SemanticSegmentorWithTTA"]
