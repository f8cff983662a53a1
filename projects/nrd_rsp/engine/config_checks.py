"""Config set-up and the start-up checks, each done once, here.

:func:`setup_cfg` loads a config (project keys, overrides, CPU fallback, toy datasets);
:func:`validate_cfg` runs the checks that turn late, deep failures into one clear
:class:`~nrd_rsp.errors.ConfigError` before any data is loaded: ``MODEL.WEIGHTS``
(:func:`check_weights`, :func:`check_weights_file`), ``OUTPUT_DIR``, class counts, datasets.
:func:`adapt_cfg_to_cpu` is the one CUDA fallback of the project and :func:`check_device` the one
check of a device asked for on a command line.
"""

import logging
import os
import tempfile

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..config import add_nrd_rsp_config
from ..data.catalog import check_dataset_available
from ..data.datasets.register_toy import configure_toy_datasets_from_cfg
from ..errors import ConfigError, UnsafeConfigError, WeightsHashMismatchError
from ..safe_loading import fetch_weights, merge_config_file
from .precision import amp_dtype

__all__ = [
    "setup_cfg",
    "norm_keys_set_to",
    "adapt_cfg_to_cpu",
    "check_device",
    "check_weights_file",
    "check_weights",
    "check_output_dir_writable",
    "validate_cfg",
]

logger = logging.getLogger("nrd_rsp")


def _load_cfg(config_file, opts, allow_unsafe_config=None):
    """Detectron2's defaults + the project's keys + ``config_file`` (``yaml.safe_load`` only,
    :func:`nrd_rsp.safe_loading.merge_config_file`) + ``opts``; ConfigError on a missing file, a
    Python YAML tag, an unknown key or a bad override."""
    if not config_file:
        raise ConfigError(
            "No config file given: pass --config-file, e.g. configs/Toy/semantic_fpn_R_18_toy.yaml"
        )
    if not os.path.isfile(config_file):
        raise ConfigError(
            f"Config file not found: '{config_file}'. Pass an existing YAML, e.g. configs/Toy/..."
        )
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    try:
        merge_config_file(cfg, config_file, allow_unsafe=allow_unsafe_config)
    except UnsafeConfigError:
        raise
    except KeyError as e:
        key = e.args[0] if e.args else e
        raise ConfigError(f"Unknown config key in {config_file}: {key}") from e
    except Exception as e:  # yaml errors, missing _BASE_ files
        raise ConfigError(f"Cannot read config file {config_file}: {e}") from e
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"Config overrides must be KEY VALUE pairs; got an odd number: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(f"Bad config override {opts}: {e.args[0] if e.args else e}") from e
    return cfg


def setup_cfg(config_file, opts=(), freeze=True, quiet=False, allow_unsafe_config=None):
    """Load ``config_file`` on top of Detectron2's and the project's defaults, apply ``opts``
    (KEY VALUE pairs), fall back to CPU when CUDA is missing (:func:`adapt_cfg_to_cpu`), and
    register the toy datasets with the config's ``DATASETS.TOY`` parameters. ``quiet``: no log
    lines (for a check before the processes that will log them start). ``allow_unsafe_config``:
    read a config with Python YAML tags (default: ``--allow-unsafe-config`` was given,
    :func:`nrd_rsp.safe_loading.unsafe_config_allowed`)."""
    cfg = _load_cfg(config_file, opts, allow_unsafe_config)
    adapt_cfg_to_cpu(cfg, log=logger.warning if not quiet else (lambda msg: None))
    configure_toy_datasets_from_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def norm_keys_set_to(node, values, prefix=""):
    """Full names of the norm keys (``*NORM``) of config ``node`` whose value is in ``values``."""
    keys = []
    for k, v in node.items():
        if hasattr(v, "items"):
            keys += norm_keys_set_to(v, values, f"{prefix}{k}.")
        elif k.endswith("NORM") and isinstance(v, str) and v in values:
            keys.append(prefix + k)
    return keys


def adapt_cfg_to_cpu(cfg, log=logger.warning):
    """Without CUDA: ``MODEL.DEVICE`` becomes ``cpu``, float16 AMP becomes bfloat16 AMP (CPU
    autocast; bfloat16 needs no GradScaler), every ``SyncBN`` norm becomes Detectron2's
    ``naiveSyncBN`` (``NaiveSyncBatchNorm`` all-reduces the batch statistics with
    ``torch.distributed``, which works over Gloo; PyTorch's ``SyncBatchNorm`` needs CUDA), and
    ``DATALOADER.NUM_WORKERS`` is capped at the cores per process of this machine. Same
    parameter names, so checkpoints are interchangeable. ``log`` gets one line per change.
    A ``SOLVER.AMP.PRECISION`` that is not a precision is a ``ConfigError``, on any device."""
    if cfg.SOLVER.AMP.ENABLED:
        amp_dtype(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        log(f"CUDA is not available: MODEL.DEVICE falls back from '{cfg.MODEL.DEVICE}' to 'cpu'.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE != "cpu":
        return
    if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "float16":
        log(
            "On CPU, SOLVER.AMP.PRECISION float16 -> bfloat16 (CPU autocast: float16 kernels are "
            "slow there, bfloat16 needs no GradScaler)."
        )
        cfg.SOLVER.AMP.PRECISION = "bfloat16"
    sync_bn = norm_keys_set_to(cfg, {"SyncBN"})
    for key in sync_bn:
        cfg.merge_from_list([key, "naiveSyncBN"])
    if sync_bn:
        log(
            f"On CPU, SyncBN becomes naiveSyncBN (batch statistics all-reduced over Gloo) in "
            f"{', '.join(sync_bn)}."
        )
    procs = comm.get_local_size()
    cap = max(1, (os.cpu_count() or 1) // procs)
    if cfg.DATALOADER.NUM_WORKERS > cap:
        log(
            f"On CPU, DATALOADER.NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS} -> {cap} per process "
            f"({os.cpu_count()} cores shared by {procs} process(es)); more workers only compete "
            "with training for the cores."
        )
        cfg.DATALOADER.NUM_WORKERS = cap


def check_device(name: str, flag: str = "--device") -> torch.device:
    """A device asked for on a command line (``cuda``, ``cuda:1``, ``cpu``); ConfigError for an
    unknown device type or a CUDA device without CUDA (no silent fallback: the user asked)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{flag} {name}: not a device ({e}); use cuda or cpu.") from None
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"Unsupported device '{name}': use cuda or cpu.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {name}: CUDA is not available on this machine; use {flag} cpu.")
    return device


def _frozen_bn_backbone(cfg):
    """True for a ResNet backbone with frozen norms (FrozenBN), which needs pretrained weights."""
    return "resnet" in cfg.MODEL.BACKBONE.NAME and cfg.MODEL.RESNETS.NORM == "FrozenBN"


WEIGHTS_ROUTES = (
    "download it on a machine with internet and pass MODEL.WEIGHTS /path/to/file.pkl, or convert "
    "torchvision ImageNet weights with `python tools/convert-torchvision-to-d2.py` "
    '(GETTING_STARTED.md, "ImageNet weights")'
)


def _missing_weights_advice(cfg, eval_only):
    """What to do about a missing ``MODEL.WEIGHTS`` file, for this use and config's backbone."""
    if eval_only:
        return (
            "Evaluation and inference need the trained checkpoint "
            "(e.g. OUTPUT_DIR/model_final.pth)."
        )
    deep_stem = cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone" and (
        cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    )
    if deep_stem and cfg.MODEL.RESNETS.STEM_OUT_CHANNELS == 64:
        return (
            "This config's ResNetV1c encoder starts from OpenMMLab's ImageNet weights: convert "
            "open-mmlab://resnet50_v1c (or resnet101_v1c) with `python "
            f"tools/convert-mmcls-v1c-to-d2.py IN.pth {cfg.MODEL.WEIGHTS}` (docs/NRD.md), or pass "
            'MODEL.WEIGHTS "" to start from random initialisation.'
        )
    if _frozen_bn_backbone(cfg):
        return f"This config's FrozenBN backbone needs pretrained weights: {WEIGHTS_ROUTES}."
    return 'Or pass MODEL.WEIGHTS "" to start from random initialisation.'


def check_weights_file(cfg, eval_only=False):
    """The one ``MODEL.WEIGHTS``-exists check: a local path that is not a file is a ConfigError
    whose advice fits the use (``eval_only``: evaluation or inference) and the backbone. ``""``
    and URLs pass (see :func:`check_weights` for URLs)."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.WEIGHTS file not found: '{weights}'. Fix the path. "
            + _missing_weights_advice(cfg, eval_only)
        )


def check_weights(cfg, eval_only=False, resume=False, quiet=False):
    """``MODEL.WEIGHTS`` at start-up, before any data is loaded: a missing local file
    (:func:`check_weights_file`) or a URL that cannot be fetched (it is fetched now, into
    Detectron2's cache) is a ``ConfigError``, a download whose sha256 differs from the one its
    name or the model zoo records a ``WeightsHashMismatchError``; empty weights with a FrozenBN
    backbone log that such a backbone cannot train from scratch. Skipped with ``resume`` when
    ``OUTPUT_DIR`` has a checkpoint to resume from. ``quiet``: no warning."""
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if not weights:
        if _frozen_bn_backbone(cfg) and not (eval_only or quiet):
            logger.warning(
                "MODEL.WEIGHTS is empty but MODEL.RESNETS.NORM is FrozenBN: a frozen-norm backbone "
                "cannot train from scratch (the loss diverges within a few iterations). Give "
                f"ImageNet weights ({WEIGHTS_ROUTES}), or set MODEL.RESNETS.NORM GN and "
                "MODEL.BACKBONE.FREEZE_AT 0."
            )
        return
    check_weights_file(cfg, eval_only=eval_only)
    if "://" not in weights:
        return
    try:
        fetch_weights(weights)  # PathManager.get_local_path, then the sha256 check
    except WeightsHashMismatchError:
        raise
    except Exception as e:  # URLError, HTTPError, socket errors, ...
        reason = getattr(e, "reason", None) or e
        raise ConfigError(
            f"Cannot fetch MODEL.WEIGHTS '{weights}' ({type(e).__name__}: {reason}). No network? "
            f"Then {WEIGHTS_ROUTES}."
        ) from None


def _expected_class_counts(cfg, dataset_name):
    """[(config key, value in config, value from metadata)] for the class counts the model
    uses."""
    meta = MetadataCatalog.get(dataset_name)
    arch = cfg.MODEL.META_ARCHITECTURE
    checks = []
    semantic = (
        arch in ("SemanticSegmentor", "PanopticFPN", "RSPPanopticFPN") or cfg.MODEL.SEM_SEG_ON
    )
    if semantic and hasattr(meta, "stuff_classes"):
        key = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
        checks.append((key, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, len(meta.stuff_classes)))
    instances = arch in ("PanopticFPN", "RSPPanopticFPN", "GeneralizedRCNN")
    if instances and hasattr(meta, "thing_classes"):
        key = "MODEL.ROI_HEADS.NUM_CLASSES"
        checks.append((key, cfg.MODEL.ROI_HEADS.NUM_CLASSES, len(meta.thing_classes)))
    return checks


def _output_dir_problem(path):
    """Why the absolute ``path`` is not (and cannot be created as) a writable directory, or
    None. Creates nothing but a temporary file in an existing directory."""
    if os.path.isdir(path):
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            return e.strerror or str(e)
        return None
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"'{parent}' is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create directories in '{parent}'"
    return None


def check_output_dir_writable(output_dir):
    """Raise ``ConfigError`` unless ``output_dir`` is (or can be created as) a writable
    directory. Creates nothing: an existing directory gets a temporary file, else its nearest
    existing ancestor must be a writable directory."""
    if not output_dir or "://" in output_dir:
        return
    problem = _output_dir_problem(os.path.abspath(output_dir))
    if problem:
        raise ConfigError(
            f"OUTPUT_DIR '{output_dir}' is not writable ({problem}). "
            "Pass OUTPUT_DIR <a writable directory>."
        )


def _check_dataset_registered(cfg, name):
    """ConfigError for an unregistered dataset or a class count that disagrees with it."""
    if name not in DatasetCatalog.list():
        known = sorted(n for n in DatasetCatalog.list() if "toy" in n or "cityscapes_fine" in n)
        raise ConfigError(
            f"Dataset '{name}' is not registered. Registered datasets include: "
            f"{', '.join(known)} ..."
        )
    for key, configured, expected in _expected_class_counts(cfg, name):
        if configured != expected:
            raise ConfigError(
                f"{key} is {configured} but dataset '{name}' has {expected} classes. "
                f"Set {key} {expected} (or use a config made for this dataset)."
            )


def validate_cfg(cfg, eval_only=False, resume=False, quiet=False):
    """Start-up checks that turn late, deep failures into one clear error.

    Raises ``ConfigError`` for unusable ``MODEL.WEIGHTS`` (:func:`check_weights`), an unwritable
    ``OUTPUT_DIR`` or a class count that disagrees with the dataset metadata, and
    ``DatasetNotFoundError`` for a missing or incomplete dataset directory. ``quiet``: no
    warnings (for a check before the processes that log them).
    """
    check_output_dir_writable(cfg.OUTPUT_DIR)
    check_weights(cfg, eval_only=eval_only, resume=resume, quiet=quiet)
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    for name in names:
        _check_dataset_registered(cfg, name)
    for name in names:
        check_dataset_available(name)
