"""Config and model for analysis: load a config like ``train_net.py``, adapt it to one process
without network (:func:`make_single_process`), build the model (:func:`build_model`), and the
semantic path of a segmentation model (:class:`SemanticPath`)."""

import functools
import logging
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from torch import nn

from ..checkpoint import load_weights
from ..engine import Trainer, check_device, check_weights_file, norm_keys_set_to, setup_cfg
from ..errors import ConfigError

__all__ = [
    "SemanticPath",
    "build_model",
    "default_input_size",
    "make_single_process",
    "resolve_device",
    "semantic_path",
    "setup",
]

logger = logging.getLogger("nrd_rsp.analysis")

_SYNC_NORMS = {"SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N"}


def make_single_process(cfg: CfgNode) -> List[str]:
    """Adapt an unfrozen ``cfg`` to a single process without network, in place.

    * every ``*NORM`` key set to a synchronised BatchNorm becomes ``"BN"`` (same computation
      and parameters in one process);
    * ``MODEL.WEIGHTS`` given as a URL becomes ``""`` (random initialisation): FLOPs,
      parameters and speed do not depend on weight values (except through the number of
      detections an instance head keeps). A local path is kept (and loaded by
      :func:`build_model`); a missing local file is a :class:`ConfigError`
      (:func:`nrd_rsp.engine.check_weights_file`).

    Returns:
        human-readable descriptions of the changes (also logged).
    """
    changes = []
    if comm.get_world_size() == 1:
        for key in norm_keys_set_to(cfg, _SYNC_NORMS):
            value = functools.reduce(lambda node, part: node[part], key.split("."), cfg)
            changes.append(f"{key}: {value} -> BN (single process)")
            cfg.merge_from_list([key, "BN"])
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" in weights:
        changes.append(
            f"MODEL.WEIGHTS: '{weights}' -> '' (URL weights are not loaded; random initialisation "
            "gives the same FLOPs, parameters and speed, up to the number of detections of "
            "instance heads; pass a local file to load weights)"
        )
        cfg.MODEL.WEIGHTS = ""
    check_weights_file(cfg)
    for c in changes:
        logger.info(c)
    return changes


def resolve_device(name: str) -> torch.device:
    """``"cuda"``/``"cuda:1"``/``"cpu"`` (``--device``) -> device; a CUDA device without CUDA is
    a ConfigError (:func:`nrd_rsp.engine.check_device`)."""
    return check_device(name, "--device")


def setup(config_file: str, opts: Sequence[str] = (), device: Optional[str] = None) -> CfgNode:
    """Load a config like ``train_net.py`` does (:func:`nrd_rsp.engine.setup_cfg`), then
    :func:`make_single_process` and set ``MODEL.DEVICE`` (default: the config's, CPU if CUDA is
    missing). Returns a frozen config."""
    cfg = setup_cfg(config_file, opts, freeze=False)
    make_single_process(cfg)
    if device is not None:
        cfg.MODEL.DEVICE = str(resolve_device(device))
    cfg.freeze()
    return cfg


def build_model(cfg: CfgNode, eval_mode: bool = True) -> nn.Module:
    """``Trainer.build_model(cfg)``, weights loaded when ``MODEL.WEIGHTS`` is set (checked:
    :func:`nrd_rsp.checkpoint.load_weights`; ImageNet weights are allowed, so at least one
    tensor must fit), eval mode."""
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, strict=False)
    return model.train(not eval_mode)


def default_input_size(cfg: CfgNode, task: str = "inference") -> Tuple[int, int]:
    """(H, W) a benchmark uses when none is given.

    train: ``INPUT.CROP.SIZE`` when absolute crops are on; toy datasets: their image size;
    otherwise ``(MIN_SIZE_TEST, MAX_SIZE_TEST)`` (the largest test input, e.g. 1024x2048).
    """
    if task == "train" and cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        return tuple(int(x) for x in cfg.INPUT.CROP.SIZE)
    if any(name.startswith("toy_") for name in cfg.DATASETS.TEST):
        return tuple(int(x) for x in cfg.DATASETS.TOY.IMAGE_SIZE)
    return int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)


class SemanticPath(nn.Module):
    """The semantic path of a segmentation model: ``backbone -> [rsp] -> sem_seg_head``.

    Input: normalised images ``[N, 3, H, W]`` (H, W multiples of the backbone's size
    divisibility); output: logits ``[N, K, H, W]``. Used to compare semantic decoders without
    pre/post-processing or instance branches. Sub-module names follow the meta-architectures
    (``backbone``, ``rsp``, ``sem_seg_head``), so :func:`component_breakdown` applies.
    """

    def __init__(
        self, backbone: nn.Module, sem_seg_head: nn.Module, rsp: Optional[nn.Module] = None
    ):
        super().__init__()
        self.backbone = backbone
        self.rsp = rsp
        self.sem_seg_head = sem_seg_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        if self.rsp is not None:
            features = self.rsp(features)
        return self.sem_seg_head(features)[0]


def semantic_path(model: nn.Module) -> SemanticPath:
    """:class:`SemanticPath` of a ``SemanticSegmentor``, ``PanopticFPN`` or ``RSPPanopticFPN``
    (shares their modules), in the model's train/eval mode."""
    if getattr(model, "sem_seg_head", None) is None:
        raise ConfigError(f"{type(model).__name__} has no semantic head (sem_seg_head).")
    path = SemanticPath(model.backbone, model.sem_seg_head, getattr(model, "rsp", None))
    return path.train(model.training)
