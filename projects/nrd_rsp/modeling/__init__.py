"""Heads and meta-architectures; importing this module registers them with Detectron2.

* :mod:`.rsp`: RSE, RSP, :class:`RSPHead` and :class:`RSPSemSegHead` (Bai et al. 2021);
* :mod:`.rsp_panoptic_fpn`: :class:`RSPPanopticFPN`, Panoptic FPN with the RSP head;
* :mod:`.dynamic_mlp`: NRD's per-location dynamic MLPs (parameter layout, coordinates);
* :mod:`.nrd_head`: :class:`LightASPP` and :class:`NRDHead` (Zhang et al. 2021);
* :mod:`.test_time_augmentation`: multi-scale + flip wrappers.
"""

from .dynamic_mlp import DynamicMLP, dynamic_param_layout, num_dynamic_params, relative_coordinates
from .nrd_head import LightASPP, NRDHead
from .rsp import RSE, RSP, RSPHead, RSPSemSegHead
from .rsp_panoptic_fpn import RSPPanopticFPN, combine_panoptic
from .test_time_augmentation import PanopticFPNWithTTA, SemanticSegmentorWithTTA, build_tta_model

__all__ = [
    "RSE",
    "RSP",
    "RSPHead",
    "RSPSemSegHead",
    "RSPPanopticFPN",
    "combine_panoptic",
    "DynamicMLP",
    "dynamic_param_layout",
    "num_dynamic_params",
    "relative_coordinates",
    "LightASPP",
    "NRDHead",
    "SemanticSegmentorWithTTA",
    "PanopticFPNWithTTA",
    "build_tta_model",
]
