"""Model zoo API of nrd_rsp, mirroring :mod:`detectron2.model_zoo`.

    from nrd_rsp import model_zoo
    cfg = model_zoo.get_config("Toy/rsp_panoptic_fpn_R_18_toy.yaml")
    model = model_zoo.get("Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
                          opts=["MODEL.WEIGHTS", ""])       # random init, no download
    model = model_zoo.get("Toy/rsp_R_18_toy.yaml", trained=True)  # once a checkpoint is published

Config paths are relative to the project's ``configs/`` directory, with or without ``.yaml``.
That directory is ``$NRD_RSP_CONFIGS`` when set, else the first ``configs/`` found walking up
from this package (``<repo>/configs`` in an editable install). ``CHECKPOINT_URLS`` lists one
published checkpoint per config (see MODEL_ZOO.md); every URL is empty until a release fills it.
A downloaded checkpoint is checked against the sha256 in ``CHECKPOINT_SHA256`` (or, without an
entry there, the ``<sha256[:6]>`` of its ``model_final_<sha256[:6]>.pth`` name) before use.
"""

import difflib
import os
from typing import Dict, List, Optional, Sequence

from .checkpoint import load_weights
from .engine import Trainer, setup_cfg
from .errors import ConfigError
from .safe_loading import register_sha256

__all__ = [
    "CONFIGS_ENV",
    "CHECKPOINT_URLS",
    "CHECKPOINT_SHA256",
    "ModelZooError",
    "get_configs_dir",
    "list_configs",
    "get_config_file",
    "get_checkpoint_url",
    "get_config",
    "get",
]

CONFIGS_ENV = "NRD_RSP_CONFIGS"

# Config (relative to configs/, without ".yaml") -> URL of its published checkpoint, "" while
# none is published. A release fills the URL with the file written by tools/publish_model.py
# (model_final_<sha256[:6]>.pth); MODEL_ZOO.md has one row per entry.
CHECKPOINT_URLS: Dict[str, str] = {
    # Toy data: the only models this repository can train from scratch on CPU.
    "Toy/semantic_fpn_R_18_toy": "",
    "Toy/deeplabv3plus_R_18_toy": "",
    "Toy/rsp_R_18_toy": "",
    "Toy/nrd_R_18_toy": "",
    "Toy/panoptic_fpn_R_18_toy": "",
    "Toy/rsp_panoptic_fpn_R_18_toy": "",
    "Toy/nrd_rsp_panoptic_fpn_R_18_toy": "",
    # Cityscapes semantic segmentation.
    "Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16": "",
    "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16": "",
    "Cityscapes-SemanticSegmentation/rsp_R_101_FPN_90k_bs16": "",
    "Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16": "",
    "Cityscapes-SemanticSegmentation/nrd_R_101_84k_bs16": "",
    "Cityscapes-SemanticSegmentation/nrd_R_50_deeplab_stem_84k_bs16": "",
    # ADE20K, PASCAL Context.
    "ADE20K-SemanticSegmentation/semantic_fpn_R_50_160k_bs16": "",
    "ADE20K-SemanticSegmentation/nrd_R_101_164k_bs16": "",
    "PascalContext-SemanticSegmentation/semantic_fpn_R_50_80k_bs16": "",
    "PascalContext-SemanticSegmentation/nrd_R_101_84k_bs16": "",
    # COCO panoptic segmentation.
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "",
    "COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_1x": "",
    "COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_3x": "",
    "COCO-PanopticSegmentation/rsp_panoptic_fpn_R_101_3x": "",
    "COCO-PanopticSegmentation/nrd_rsp_panoptic_fpn_R_50_1x": "",
}

# Config -> full sha256 of its published checkpoint (the "sha256" of tools/publish_model.py's
# metrics.json); get_checkpoint_url registers it, and the download is checked against it.
CHECKPOINT_SHA256: Dict[str, str] = {}


class ModelZooError(ConfigError):
    """Unknown config path, missing configs directory, or no published checkpoint. A
    ``ConfigError``, so the project's CLIs print it as one line and exit with status 2."""


def get_configs_dir() -> str:
    """Absolute path of the project's ``configs/`` directory.

    ``$NRD_RSP_CONFIGS`` wins when set (it must be a directory); otherwise the nearest
    ``configs/`` directory holding ``Toy/`` found walking up from this package's directory.
    """
    env = os.environ.get(CONFIGS_ENV)
    if env:
        if not os.path.isdir(env):
            raise ModelZooError(f"${CONFIGS_ENV} is set to '{env}', which is not a directory.")
        return os.path.abspath(env)
    here = os.path.dirname(os.path.abspath(__file__))
    d = here
    while True:
        candidate = os.path.join(d, "configs")
        if os.path.isdir(os.path.join(candidate, "Toy")):
            return candidate
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    raise ModelZooError(
        f"Cannot find the nrd_rsp configs/ directory above {here}. Set ${CONFIGS_ENV} to the "
        "repository's configs/ directory."
    )


def _normalize(config_path: str) -> str:
    """'Toy/x.yaml' / 'Toy/x' / './Toy/x.yaml' -> 'Toy/x' (POSIX separators, no extension)."""
    name = os.path.normpath(str(config_path)).replace(os.sep, "/")
    if name.startswith("configs/"):
        name = name[len("configs/") :]
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def list_configs() -> List[str]:
    """Every model config under ``configs/`` (``Base-*`` files excluded), as ``Group/name.yaml``."""
    root = get_configs_dir()
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".yaml") and not f.startswith("Base-"):
                found.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """
    Args:
        config_path: config relative to ``configs/``, e.g. ``"Toy/rsp_panoptic_fpn_R_18_toy.yaml"``.

    Returns:
        the absolute path of the YAML file.

    Raises:
        ModelZooError: no such config; the message lists the closest existing ones.
    """
    name = _normalize(config_path)
    root = get_configs_dir()
    path = os.path.join(root, *name.split("/")) + ".yaml"
    if os.path.isfile(path):
        return path
    known = list_configs()
    close = difflib.get_close_matches(name + ".yaml", known, n=5, cutoff=0.5)
    if not close:  # a right file name in the wrong group, or a partial name
        base = os.path.basename(name)
        close = [k for k in known if base and base in k][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Available: {', '.join(known)}."
    raise ModelZooError(f"'{config_path}' is not in the nrd_rsp model zoo ({root}).{hint}")


def get_checkpoint_url(config_path: str) -> str:
    """URL (or path) of the published checkpoint of ``config_path``; its sha256 in
    ``CHECKPOINT_SHA256``, if any, is registered for the check of the download.

    Raises:
        ModelZooError: the config is unknown, or no checkpoint is published for it (yet).
    """
    get_config_file(config_path)  # unknown config -> error with close matches
    name = _normalize(config_path)
    url = CHECKPOINT_URLS.get(name, "")
    if not url:
        raise ModelZooError(
            f"No checkpoint is published for '{name}.yaml' (see MODEL_ZOO.md). Train it with "
            f"`python train_net.py --config-file {os.path.join('configs', name)}.yaml` and pass "
            "MODEL.WEIGHTS, or use trained=False."
        )
    if CHECKPOINT_SHA256.get(name):  # checked when the file is fetched
        register_sha256(url, CHECKPOINT_SHA256[name])
    return url


def get_config(config_path: str, trained: bool = False, opts: Sequence[str] = ()):
    """Config of a model-zoo model, like :func:`detectron2.model_zoo.get_config`.

    Loaded with :func:`nrd_rsp.engine.setup_cfg` (project keys, CPU fallback, toy datasets
    registered) and returned unfrozen.

    Args:
        config_path: relative to ``configs/``, e.g. ``"Toy/rsp_R_18_toy.yaml"``.
        trained: set ``MODEL.WEIGHTS`` to the published checkpoint (error if there is none);
            otherwise keep the config's ``MODEL.WEIGHTS`` (ImageNet weights for real datasets,
            "" for the toy configs).
        opts: ``KEY VALUE`` overrides applied after loading (before ``trained``).
    """
    cfg = setup_cfg(get_config_file(config_path), opts, freeze=False)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def get(
    config_path: str, trained: bool = False, device: Optional[str] = None, opts: Sequence[str] = ()
):
    """Build a model-zoo model and load its weights, like :func:`detectron2.model_zoo.get`.

    Args:
        config_path, trained, opts: see :func:`get_config`. Real-dataset configs point
            ``MODEL.WEIGHTS`` at ImageNet weights that are downloaded on first use; pass
            ``opts=["MODEL.WEIGHTS", ""]`` for a randomly initialised model.
        device: overrides ``MODEL.DEVICE``; default: the config's (``setup_cfg`` made it "cpu"
            without CUDA).

    Returns:
        nn.Module in training mode (call ``.eval()`` for inference).
    Raises:
        CheckpointMismatchError: the weights do not fit the model. A published checkpoint
            (``trained``) must hold every model tensor with its shape; other weights (ImageNet)
            at least one (:func:`nrd_rsp.checkpoint.load_weights`).
    """
    cfg = get_config(config_path, trained=trained, opts=opts)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, strict=trained)
    return model
