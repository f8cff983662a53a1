"""Training and evaluation glue: config set-up with start-up checks, the ``Trainer``, prediction
visualisation. ``train_net.py`` and the tools are thin wrappers around this module.

Reliability (README "Reliability"): the ``Trainer`` saves checkpoints atomically and resumes with
a fallback over corrupt ones (``nrd_rsp.checkpoint``), streams training samples as a pure
function of (seed, position) and skips bad ones (``nrd_rsp.data.robust``), reseeds the model's
RNGs from (seed, iteration, rank) before every step, logs the raw losses to
``OUTPUT_DIR/losses.jsonl`` and stops every rank before the optimizer step on a non-finite loss.
"""
import functools
import json
import logging
import os
import random
import sys
import tempfile
import weakref
from collections import OrderedDict

import cv2
import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.visualizer import ColorMode, Visualizer

from .checkpoint import CheckpointError, SafeCheckpointer
from .config import add_nrd_rsp_config
from .data.datasets import DatasetNotFoundError, check_dataset_available, configure_toy_datasets_from_cfg
from .data.mappers import CheckedDatasetMapper, build_test_mapper, build_train_mapper
from .data.robust import BadSampleError, TooManyBadSamplesError, build_resumable_train_loader, mix_seed
from .evaluation import CityscapesScriptsEvaluator
from .modeling.test_time_augmentation import build_tta_model
from .solver import build_lr_scheduler as build_poly_lr_scheduler

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "USER_ERRORS",
    "RUNTIME_ERRORS",
    "exit_on_user_error",
    "one_line",
    "setup_cfg",
    "validate_cfg",
    "Trainer",
    "evaluate",
    "save_eval_results",
    "visualize_predictions",
    "load_model_for_eval",
]

logger = logging.getLogger("nrd_rsp")


class ConfigError(ValueError):
    """A config, a path in it, or a command-line override is wrong. The message says how to fix it."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/inf; raised (on every rank) before the optimizer step."""


# Errors caused by what the user passed: CLIs print them as one line and exit with status 2.
USER_ERRORS = (ConfigError, DatasetNotFoundError, CheckpointError)
# Faults during a run (bad data, diverged training): one line and exit status 1.
RUNTIME_ERRORS = (NonFiniteLossError, TooManyBadSamplesError, BadSampleError)


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. An exception re-raised by a DataLoader worker carries
    the worker's whole traceback; its last line holds the original message."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1]
        head, sep, rest = last.partition(": ")
        msg = rest if sep and head.endswith(("Error", "Exception")) else last
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def error_exit_code(e: BaseException) -> int:
    """2 for ``USER_ERRORS``, 1 for ``RUNTIME_ERRORS``."""
    return 2 if isinstance(e, USER_ERRORS) else 1


def report_error(e: BaseException) -> None:
    """Print ``e`` for a user: its details (e.g. a table of mismatched checkpoint keys), then
    ``ERROR: <one line>``, on stderr."""
    table = getattr(e, "table", "")
    if table:
        print(table, file=sys.stderr)
    print(f"ERROR: {one_line(e)}", file=sys.stderr)


def exit_on_user_error(fn):
    """Decorator for CLI entry points: a ``USER_ERRORS`` exception becomes ``ERROR: <message>`` on
    stderr and exit status 2, a ``RUNTIME_ERRORS`` one the same with exit status 1, instead of a
    stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS + RUNTIME_ERRORS as e:
            report_error(e)
            sys.exit(error_exit_code(e))

    return wrapper


def setup_cfg(config_file, opts=(), freeze=True, quiet=False):
    """Load ``config_file`` on top of Detectron2's and the project's defaults, apply ``opts``
    (KEY VALUE pairs), fall back to CPU when CUDA is missing (:func:`adapt_cfg_to_cpu`), and
    register the toy datasets with the config's ``DATASETS.TOY`` parameters. ``quiet``: no log
    lines (for a check before the processes that will log them start)."""
    if not config_file:
        raise ConfigError("No config file given: pass --config-file, e.g. configs/Toy/semantic_fpn_R_18_toy.yaml")
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file not found: '{config_file}'. Pass an existing YAML, e.g. configs/Toy/...")
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        raise ConfigError(f"Unknown config key in {config_file}: {e.args[0] if e.args else e}") from e
    except Exception as e:  # yaml errors, missing _BASE_ files
        raise ConfigError(f"Cannot read config file {config_file}: {e}") from e
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"Config overrides must be KEY VALUE pairs; got an odd number: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(f"Bad config override {opts}: {e.args[0] if e.args else e}") from e
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
    """Without CUDA: ``MODEL.DEVICE`` becomes ``cpu``, AMP is off, every ``SyncBN`` norm becomes
    Detectron2's ``naiveSyncBN`` (``NaiveSyncBatchNorm`` all-reduces the batch statistics with
    ``torch.distributed``, which works over Gloo; PyTorch's ``SyncBatchNorm`` needs CUDA), and
    ``DATALOADER.NUM_WORKERS`` is capped at the cores per process of this machine. Same
    parameter names, so checkpoints are interchangeable. ``log`` gets one line per change."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        log(f"CUDA is not available: MODEL.DEVICE falls back from '{cfg.MODEL.DEVICE}' to 'cpu'.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE != "cpu":
        return
    if cfg.SOLVER.AMP.ENABLED:
        log("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on CPU.")
        cfg.SOLVER.AMP.ENABLED = False
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


def _frozen_bn_backbone(cfg):
    """True if the backbone is a ResNet with frozen norms (FrozenBN), which needs pretrained weights."""
    return "resnet" in cfg.MODEL.BACKBONE.NAME and cfg.MODEL.RESNETS.NORM == "FrozenBN"


WEIGHTS_ROUTES = (
    "download it on a machine with internet and pass MODEL.WEIGHTS /path/to/file.pkl, or convert "
    "torchvision ImageNet weights with `python tools/convert-torchvision-to-d2.py` (README, "
    '"Training on the real datasets")'
)


def _missing_weights_advice(cfg, eval_only):
    """What to do about a missing ``MODEL.WEIGHTS`` file, for this config's backbone."""
    if eval_only:
        return "--eval-only needs the trained checkpoint (e.g. OUTPUT_DIR/model_final.pth)."
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


def check_weights(cfg, eval_only=False, resume=False, quiet=False):
    """``MODEL.WEIGHTS`` at start-up, before any data is loaded: a missing local file or a URL that
    cannot be fetched (it is fetched now, into Detectron2's cache) is a ``ConfigError``; empty
    weights with a FrozenBN backbone log that such a backbone cannot train from scratch.
    Skipped with ``resume`` when ``OUTPUT_DIR`` has a checkpoint to resume from. ``quiet``: no
    warning."""
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
    if "://" not in weights:
        if not os.path.isfile(weights):
            raise ConfigError(
                f"MODEL.WEIGHTS file not found: '{weights}'. Fix the path. "
                + _missing_weights_advice(cfg, eval_only)
            )
        return
    try:
        PathManager.get_local_path(weights)
    except Exception as e:  # URLError, HTTPError, socket errors, ...
        reason = getattr(e, "reason", None) or e
        raise ConfigError(
            f"Cannot fetch MODEL.WEIGHTS '{weights}' ({type(e).__name__}: {reason}). No network? "
            f"Then {WEIGHTS_ROUTES}."
        ) from None


def _expected_class_counts(cfg, dataset_name):
    """[(config key, value in config, value from metadata)] for the class counts the model uses."""
    meta = MetadataCatalog.get(dataset_name)
    checks = []
    if cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "PanopticFPN", "RSPPanopticFPN") or cfg.MODEL.SEM_SEG_ON:
        if hasattr(meta, "stuff_classes"):
            checks.append(("MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, len(meta.stuff_classes)))
    if cfg.MODEL.META_ARCHITECTURE in ("PanopticFPN", "RSPPanopticFPN", "GeneralizedRCNN"):
        if hasattr(meta, "thing_classes"):
            checks.append(("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, len(meta.thing_classes)))
    return checks


def check_output_dir_writable(output_dir):
    """Raise ``ConfigError`` unless ``output_dir`` is (or can be created as) a writable directory.
    Creates nothing: an existing directory gets a temporary file, else its nearest existing
    ancestor must be a writable directory."""
    if not output_dir or "://" in output_dir:
        return
    path = os.path.abspath(output_dir)
    problem = None
    if os.path.isdir(path):
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            problem = e.strerror or str(e)
    else:
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            problem = f"'{parent}' is not a directory"
        elif not os.access(parent, os.W_OK | os.X_OK):
            problem = f"cannot create directories in '{parent}'"
    if problem:
        raise ConfigError(
            f"OUTPUT_DIR '{output_dir}' is not writable ({problem}). Pass OUTPUT_DIR <a writable directory>."
        )


def validate_cfg(cfg, eval_only=False, resume=False, quiet=False):
    """Start-up checks that turn late, deep failures into one clear error.

    Raises ``ConfigError`` for unusable ``MODEL.WEIGHTS`` (:func:`check_weights`), an unwritable
    ``OUTPUT_DIR`` or a class count that disagrees with the dataset metadata, and
    ``DatasetNotFoundError`` (from ``nrd_rsp.data.datasets``) for a missing or incomplete
    dataset directory. ``quiet``: no warnings (for a check before the processes that log them).
    """
    check_output_dir_writable(cfg.OUTPUT_DIR)
    check_weights(cfg, eval_only=eval_only, resume=resume, quiet=quiet)
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    for name in names:
        if name not in DatasetCatalog.list():
            raise ConfigError(
                f"Dataset '{name}' is not registered. Registered datasets include: "
                f"{', '.join(sorted(n for n in DatasetCatalog.list() if 'toy' in n or 'cityscapes_fine' in n))} ..."
            )
        for key, configured, expected in _expected_class_counts(cfg, name):
            if configured != expected:
                raise ConfigError(
                    f"{key} is {configured} but dataset '{name}' has {expected} classes. "
                    f"Set {key} {expected} (or use a config made for this dataset)."
                )
    for name in names:
        check_dataset_available(name)


class _GuardedStepMixin:
    """Checks every training step before the optimizer step (``SimpleTrainer.run_step`` calls
    ``_write_metrics`` after ``backward`` and before ``optimizer.step``): a non-finite loss term
    or a fatal data-loader condition (too many skipped samples) raises on *every* rank (the
    findings are all-gathered when the world size is > 1), so no rank is left waiting in a
    collective. Also keeps the skipped-sample counts summed over ranks (``skip_totals``) and the
    loss terms averaged over ranks (``last_losses``)."""

    check_finite = True
    skip_totals = (0, 0)  # (skipped, seen) over all ranks, this process's run
    last_losses: dict = {}  # {"iteration", "total_loss", <loss terms>} averaged over ranks

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            if isinstance(e, NonFiniteLossError):
                raise
            # Detectron2's own divergence checks (e.g. "Predicted boxes or scores contain
            # Inf/NaN") fire inside the forward pass, on the rank that diverged.
            raise NonFiniteLossError(
                f"Training diverged at iteration {self.iter}: {e} Lower SOLVER.BASE_LR, increase "
                "SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS (with a FrozenBN backbone, "
                "start from ImageNet weights), then --resume."
            ) from e

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        self._guard_step(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix, iter)

    def _guard_step(self, loss_dict, iteration):
        values = {k: v.detach().float().mean().item() for k, v in loss_dict.items()}
        bad = [f"{k}={v}" for k, v in values.items() if not np.isfinite(v)] if self.check_finite else []
        loader = self.data_loader
        report = (bad, getattr(loader, "fatal_error", None), getattr(loader, "num_skipped", 0),
                  getattr(loader, "num_seen", 0), values)
        reports = comm.all_gather(report) if comm.get_world_size() > 1 else [report]
        self.skip_totals = (sum(r[2] for r in reports), sum(r[3] for r in reports))
        mean = {k: float(np.mean([r[4][k] for r in reports])) for k in values}
        self.last_losses = {"iteration": int(iteration), "total_loss": float(sum(mean.values())), **mean}
        data_errors = [(rank, r[1]) for rank, r in enumerate(reports) if r[1]]
        if data_errors:
            rank, msg = data_errors[0]
            e = TooManyBadSamplesError(f"Iteration {iteration}{f' (rank {rank})' if len(reports) > 1 else ''}: {msg}")
            e.all_ranks = True  # raised identically on every rank
            raise e
        bad_by_rank = [(rank, r[0]) for rank, r in enumerate(reports) if r[0]]
        if bad_by_rank:
            where = "; ".join(
                (f"rank {rank}: " if len(reports) > 1 else "") + ", ".join(terms) for rank, terms in bad_by_rank
            )
            e = NonFiniteLossError(
                f"Non-finite loss at iteration {iteration}: {where}. Training stopped before the optimizer "
                "step, so the weights (and the last checkpoint) are not affected. Lower SOLVER.BASE_LR, "
                "increase SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then --resume."
            )
            e.all_ranks = True
            raise e


class GuardedSimpleTrainer(_GuardedStepMixin, SimpleTrainer):
    """``SimpleTrainer`` with the step guard of ``_GuardedStepMixin``."""


class GuardedAMPTrainer(_GuardedStepMixin, AMPTrainer):
    """``AMPTrainer`` with the step guard of ``_GuardedStepMixin``."""


class StepSeedHook(HookBase):
    """Seed ``random``, ``numpy`` and ``torch`` from ``(seed, iteration, rank)`` before every step,
    so that model-side randomness (RPN/ROI sampling, dropout) is the same in a resumed run as in
    an uninterrupted one. ``seed`` is saved in checkpoints (``state_dict``) and restored at resume."""

    def __init__(self, seed):
        self.seed = int(seed)

    def before_step(self):
        s = mix_seed(self.seed, self.trainer.iter, comm.get_rank())
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state_dict):
        self.seed = int(state_dict["seed"])


class LossLogHook(HookBase):
    """Append the raw per-iteration losses (every term and their sum, averaged over ranks) to
    ``OUTPUT_DIR/losses.jsonl``: one ``{"iteration": i, "total_loss": ..., "loss_*": ...}`` per line
    (Detectron2's ``metrics.json`` has 20-iteration medians whose window restarts at resume).
    A fresh run truncates the file; a resumed run appends. Main process only."""

    def __init__(self, path):
        self.path = path
        self._file = None

    def before_train(self):
        self._file = open(self.path, "a" if self.trainer.start_iter > 0 else "w")

    def after_step(self):
        losses = getattr(self.trainer._trainer, "last_losses", {})
        if losses.get("iteration") == self.trainer.iter and self._file is not None:
            self._file.write(json.dumps(losses) + "\n")
            self._file.flush()

    def after_train(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class SkippedSamplesHook(HookBase):
    """Report skipped (bad) training samples: ``data/skipped_samples`` in the event storage when
    it changes and a summary at the end of training, totals over ranks and resumes."""

    def __init__(self):
        self._offset = (0, 0)  # from the runs before the last resume
        self._last = 0

    def _totals(self):
        skipped, seen = self.trainer._trainer.skip_totals
        return skipped + self._offset[0], seen + self._offset[1]

    def after_step(self):
        skipped, _ = self._totals()
        if skipped != self._last:
            self.trainer.storage.put_scalar("data/skipped_samples", skipped, smoothing_hint=False)
            self._last = skipped

    def after_train(self):
        skipped, seen = self._totals()
        if comm.is_main_process():
            logger.info(
                f"Training data: {skipped} bad sample(s) skipped out of {seen} loaded"
                + (f" ({100.0 * skipped / seen:.2f}%)." if seen else ".")
            )

    def state_dict(self):
        skipped, seen = self._totals()
        return {"skipped": skipped, "seen": seen}

    def load_state_dict(self, state_dict):
        self._offset = (int(state_dict["skipped"]), int(state_dict["seen"]))


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with evaluators chosen from the dataset's ``evaluator_type``, the
    project's training mappers, poly LR and semantic test-time augmentation, and the reliability
    machinery of this module (see its docstring)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that DistributedDataParallel gets no device_ids for CPU
        # models, so that `--num-gpus N` runs N Gloo processes on a machine without GPUs, and the
        # checkpointer, inner trainer and data loader are the fault-tolerant ones.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        _install_nan_injection(model, weakref.proxy(self))
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (GuardedAMPTrainer if cfg.SOLVER.AMP.ENABLED else GuardedSimpleTrainer)(
            model, data_loader, optimizer
        )
        self._trainer.check_finite = cfg.SOLVER.CHECK_FINITE_LOSS
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._seed_hook = StepSeedHook(self.seed)
        self.register_hooks(self.build_hooks())
        self._configure_loader()

    def build_hooks(self):
        # Before Detectron2's hooks: seeding precedes every other before_step, and the losses of
        # an iteration are logged before its checkpoint is written.
        ret = [self._seed_hook, SkippedSamplesHook()]
        if comm.is_main_process():
            ret.append(LossLogHook(os.path.join(self.cfg.OUTPUT_DIR, "losses.jsonl")))
        return ret + super().build_hooks()

    def _configure_loader(self):
        loader = self._trainer.data_loader
        if hasattr(loader, "configure"):
            loader.configure(start_iter=self.start_iter, seed=self._seed_hook.seed)

    def resume_or_load(self, resume=True):
        """Resume from the newest readable checkpoint in ``OUTPUT_DIR`` (``SafeCheckpointer``:
        corrupt ones are reported and skipped, every model tensor must fit) if ``resume``, else
        load ``MODEL.WEIGHTS`` (error if no tensor fits). Then restart the training sample
        stream at the resumed iteration with the checkpoint's seed."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from:
            # The checkpoint stores the iteration that just finished.
            self.start_iter = self.iter + 1
            # WarmupPolyLR saves its max_iters: resuming with a larger SOLVER.MAX_ITER would take
            # a power of a negative number past the old end. Follow the config.
            if getattr(self.scheduler, "max_iters", self.max_iter) != self.max_iter:
                logger.warning(
                    f"Resuming with SOLVER.MAX_ITER {self.max_iter} instead of the checkpoint's "
                    f"{self.scheduler.max_iters}: the LR schedule now ends at {self.max_iter}."
                )
                self.scheduler.max_iters = self.max_iter
        self._configure_loader()

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``; a value the model's constructors reject (``ValueError``,
        ``KeyError``, ``AssertionError``) is a ``ConfigError`` naming the config."""
        try:
            return super().build_model(cfg)
        except (ValueError, KeyError, AssertionError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ConfigError(
                f"The model cannot be built from this config ({cfg.MODEL.META_ARCHITECTURE}, "
                f"{cfg.MODEL.SEM_SEG_HEAD.NAME}): {msg}"
            ) from e

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        evaluators = []
        if evaluator_type in ("sem_seg", "ade20k_sem_seg", "pascal_context_sem_seg"):
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        elif evaluator_type == "cityscapes_sem_seg":
            evaluators.append(CityscapesScriptsEvaluator(dataset_name))
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        elif evaluator_type == "coco_panoptic_seg":
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        else:
            raise ConfigError(
                f"No evaluator for dataset '{dataset_name}' with evaluator_type '{evaluator_type}'."
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        """A ``ResumableTrainLoader`` (``nrd_rsp.data.robust``): deterministic, resumable,
        skipping bad samples, with the project's training mapper."""
        mapper = build_train_mapper(cfg) or CheckedDatasetMapper(cfg, True)
        return build_resumable_train_loader(cfg, mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with checked reading (a corrupt image is named)."""
        return build_detection_test_loader(cfg, dataset_name, mapper=build_test_mapper(cfg))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """``nrd_rsp.solver``: Detectron2's WarmupPolyLR with ``SOLVER.POLY_LR_MIN_LR``."""
        return build_poly_lr_scheduler(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` with test-time augmentation (``TEST.AUG.*``; semantic branch
        multi-scale + flip, see ``nrd_rsp.modeling.test_time_augmentation``). Result keys get
        the suffix ``_TTA``."""
        logger.info("Running inference with test-time augmentation ...")
        model = build_tta_model(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def save_eval_results(cfg, res):
    """Write ``res`` to ``OUTPUT_DIR/eval_results.json`` (main process only)."""
    if res and comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(res, f, indent=2)


def evaluate(cfg, model, plain_results=None):
    """Evaluate on ``cfg.DATASETS.TEST`` (unless ``plain_results`` are given), save, then run TTA
    when ``TEST.AUG.ENABLED`` and save again with its ``*_TTA`` results; returns all results.
    The plain results are on disk before TTA starts."""
    res = OrderedDict(plain_results) if plain_results is not None else Trainer.test(cfg, model)
    save_eval_results(cfg, res)
    if cfg.TEST.AUG.ENABLED:
        res.update(Trainer.test_with_TTA(cfg, model))
        save_eval_results(cfg, res)
    if comm.is_main_process():
        verify_results(cfg, res)
    return res


@torch.no_grad()
def visualize_predictions(cfg, model, dataset_name=None, num_images=None, output_dir=None):
    """Draw the predictions of ``model`` on the first ``num_images`` images of ``dataset_name``
    with Detectron2's ``Visualizer`` and write them as PNG. Returns the written paths."""
    num_images = cfg.TEST.NUM_VIS_IMAGES if num_images is None else num_images
    if not dataset_name and not cfg.DATASETS.TEST:
        return []
    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "vis")
    if num_images <= 0:
        return []
    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    was_training = model.training
    model.eval()
    paths = []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        rgb = utils.read_image(d["file_name"], format="RGB")
        image = utils.convert_image_to_rgb(rgb, "RGB")
        model_in = rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb
        tensor = torch.as_tensor(np.ascontiguousarray(model_in.transpose(2, 0, 1)))
        out = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]
        scale = max(1.0, 480.0 / max(image.shape[:2]))  # small images are drawn larger, for legible labels
        vis = Visualizer(image, meta, scale=scale, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in out:
            seg, segments = out["panoptic_seg"]
            drawn = vis.draw_panoptic_seg(seg.cpu(), segments)
        elif "instances" in out:
            drawn = vis.draw_instance_predictions(out["instances"].to("cpu"))
        else:
            drawn = vis.draw_sem_seg(out["sem_seg"].argmax(dim=0).cpu())
        drawn = drawn.get_image()
        panel = np.concatenate([cv2.resize(image, drawn.shape[1::-1], interpolation=cv2.INTER_NEAREST), drawn], axis=1)
        path = os.path.join(output_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + "_pred.png")
        cv2.imwrite(path, panel[:, :, ::-1])
        paths.append(path)
    model.train(was_training)
    logger.info(f"Wrote {len(paths)} prediction visualisations to {output_dir}")
    return paths


def load_model_for_eval(cfg, resume=False):
    """Build the model of ``cfg`` and load ``MODEL.WEIGHTS`` (or, with ``resume``, the newest
    readable checkpoint of ``OUTPUT_DIR``). Every model tensor must be in the checkpoint with
    its shape, else ``CheckpointMismatchError`` (a ``USER_ERRORS`` member) with a table."""
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume, strict=True)
    return model


NAN_INJECTION_ENV = "NRD_RSP_INJECT_NAN_LOSS"


def _install_nan_injection(model, trainer):
    """Fault injection for tests: ``NRD_RSP_INJECT_NAN_LOSS=ITER`` (or ``ITER@RANK``) makes the
    first loss term NaN at training iteration ITER (on rank RANK only), through a forward hook,
    so the NaN flows into ``backward`` exactly like a real divergence."""
    spec = os.environ.get(NAN_INJECTION_ENV, "")
    if not spec:
        return
    it, _, rank = spec.partition("@")
    it, rank = int(it), (int(rank) if rank else None)
    logger.warning(f"{NAN_INJECTION_ENV}={spec}: a NaN loss will be injected at iteration {it}")

    def hook(module, inputs, output):
        if module.training and isinstance(output, dict) and output and trainer.iter == it and (
            rank is None or rank == comm.get_rank()
        ):
            key = sorted(output)[0]
            output = dict(output)
            output[key] = output[key] * float("nan")
        return output

    model.register_forward_hook(hook)
