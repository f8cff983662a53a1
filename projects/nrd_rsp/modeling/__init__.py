"""Heads and meta-architectures; importing this module registers them with Detectron2."""
from . import rsp, nrd, meta_arch  # noqa: F401
