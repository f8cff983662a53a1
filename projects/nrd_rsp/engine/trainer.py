"""The ``Trainer``, evaluation and loading a model for evaluation.

Reliability (docs/RELIABILITY.md): the ``Trainer`` saves checkpoints atomically and resumes with
a fallback over corrupt ones (``nrd_rsp.checkpoint``), streams training samples as a pure
function of (seed, position) and skips bad ones (the resumable loader of ``nrd_rsp.data``),
reseeds the model's RNGs from (seed, iteration, rank) before every step, logs the raw losses to
``OUTPUT_DIR/losses.jsonl`` and stops every rank before the optimizer step on a non-finite loss
(``step_guard``). The loader, the step guard and the hooks share one ``TrainingHealth``.
"""

import json
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.utils import comm

from ..checkpoint import SafeCheckpointer, load_weights
from ..data.mappers import CheckedDatasetMapper, build_test_mapper, build_train_mapper
from ..data.resumable_loader import build_resumable_train_loader
from ..errors import ConfigError
from ..evaluation import CityscapesScriptsEvaluator
from ..modeling.test_time_augmentation import build_tta_model
from ..panoptic_evaluation import build_panoptic_evaluator
from ..solver import build_lr_scheduler as build_poly_lr_scheduler
from ..training_health import TrainingHealth
from .config_checks import check_weights_file
from .hooks import JobLayoutHook, LossLogHook, SkippedSamplesHook, StepSeedHook
from .nan_injection import install_loader_fault, install_nan_injection
from .preemption import Preempted, PreemptionHook, parse_signals
from .step_guard import build_guarded_trainer

__all__ = ["Trainer", "evaluate", "save_eval_results", "load_model_for_eval"]

logger = logging.getLogger("nrd_rsp")

_SEM_SEG_EVALUATOR_TYPES = ("sem_seg", "ade20k_sem_seg", "pascal_context_sem_seg")


class _QuietPreemption(logging.Filter):
    """Drop Detectron2's "Exception during training" traceback for a :class:`Preempted` stop."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], Preempted))


logging.getLogger("detectron2.engine.train_loop").addFilter(_QuietPreemption())


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with evaluators chosen from the dataset's ``evaluator_type``, the
    project's training mappers, poly LR and semantic test-time augmentation, and the reliability
    machinery of this package (see the module docstring).

    ``seed`` (``SEED``, or one drawn and shared by all ranks) is computed here once and passed to
    the seed hook; ``health`` is the run's :class:`TrainingHealth`. The training loader is built
    once the run's start is known (:meth:`resume_or_load`, else :meth:`train`): it gets its seed,
    start iteration and ``health`` when it is built.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that DistributedDataParallel gets no device_ids for CPU
        # models, so that `--num-gpus N` runs N Gloo processes on a machine without GPUs, the
        # checkpointer and inner trainer are the fault-tolerant ones, and the data loader comes
        # later (see the class docstring).
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self.health = TrainingHealth()
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        install_nan_injection(model, weakref.proxy(self))
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = build_guarded_trainer(cfg, model, None, optimizer, self.health)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self._seed_hook = StepSeedHook(self.seed)
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        # Before Detectron2's hooks: seeding precedes every other before_step, and the losses of
        # an iteration are logged before its checkpoint is written. Preemption comes last: an
        # iteration's LR step, periodic checkpoint and evaluation precede its preemption save.
        cfg = self.cfg
        ret = [self._seed_hook, SkippedSamplesHook(self.health)]
        if comm.is_main_process():
            path = os.path.join(cfg.OUTPUT_DIR, "losses.jsonl")
            ret.append(LossLogHook(path, self.health))
        layout = JobLayoutHook(
            world_size=comm.get_world_size(),
            ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
            grouped=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        )
        return ret + super().build_hooks() + [layout, PreemptionHook(cfg.PREEMPTION.SIGNALS)]

    def _build_run_loader(self):
        """The training loader of this run, from ``start_iter`` with ``seed``, counting into
        ``health`` (with the test-only loader fault of ``NRD_RSP_INJECT_ERROR=...:loader``)."""
        loader = self.build_train_loader(
            self.cfg, seed=self.seed, start_iter=self.start_iter, health=self.health
        )
        install_loader_fault(loader, self.cfg.SOLVER.IMS_PER_BATCH)
        return loader

    def train(self):
        """Detectron2's training loop (from iteration 0 with a loader of its own if
        :meth:`resume_or_load` was not called); then the data loader's workers are shut down
        (they ignore the preemption signals, so they must be told to stop, not terminated)."""
        if self._trainer.data_loader is None:
            self._trainer.data_loader = self._build_run_loader()
        try:
            return super().train()
        finally:
            loader_iter = getattr(self._trainer, "_data_loader_iter_obj", None)
            self._trainer._data_loader_iter_obj = None
            if hasattr(loader_iter, "close"):
                loader_iter.close()  # frees the DataLoader iterator: its workers get the sentinel

    def resume_or_load(self, resume=True):
        """Resume from the newest readable checkpoint in ``OUTPUT_DIR`` (``SafeCheckpointer``:
        corrupt ones are reported and skipped, every model tensor must fit) if ``resume``, else
        load ``MODEL.WEIGHTS`` (error if no tensor fits). Then build the training loader, from
        the resumed iteration with the checkpoint's seed."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from:
            # The checkpoint stores the iteration that just finished, and the seed (seed hook).
            self.start_iter = self.iter + 1
            self.seed = self._seed_hook.seed
            self._follow_max_iter()
        self._trainer.data_loader = self._build_run_loader()

    def _follow_max_iter(self):
        """WarmupPolyLR saves its max_iters: resuming with a larger SOLVER.MAX_ITER would take a
        power of a negative number past the old end. Follow the config."""
        if getattr(self.scheduler, "max_iters", self.max_iter) != self.max_iter:
            logger.warning(
                f"Resuming with SOLVER.MAX_ITER {self.max_iter} instead of the checkpoint's "
                f"{self.scheduler.max_iters}: the LR schedule now ends at {self.max_iter}."
            )
            self.scheduler.max_iters = self.max_iter

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
        """The evaluators of the dataset's ``evaluator_type`` (several: ``DatasetEvaluators``)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type

        def sem_seg():
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

        if evaluator_type in _SEM_SEG_EVALUATOR_TYPES:
            evaluators = [sem_seg()]
        elif evaluator_type == "cityscapes_sem_seg":
            evaluators = [CityscapesScriptsEvaluator(dataset_name), sem_seg()]
        elif evaluator_type == "coco_panoptic_seg":
            evaluators = [
                build_panoptic_evaluator(cfg, dataset_name, output_folder),
                COCOEvaluator(dataset_name, output_dir=output_folder),
                sem_seg(),
            ]
        else:
            raise ConfigError(
                f"No evaluator for dataset '{dataset_name}' with evaluator_type '{evaluator_type}'."
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def build_train_loader(cls, cfg, seed=None, start_iter=0, health=None):
        """The resumable training loader of ``nrd_rsp.data`` (deterministic, resumable,
        skipping bad samples) with the project's training mapper, seeded with ``seed``, starting
        at iteration ``start_iter`` and counting into ``health``."""
        mapper = build_train_mapper(cfg) or CheckedDatasetMapper(cfg, True)
        signals = list(parse_signals(cfg.PREEMPTION.SIGNALS).values())
        return build_resumable_train_loader(
            cfg, mapper, seed=seed, worker_ignores=signals, start_iter=start_iter, health=health
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's ``test``, on rank 0's buffers in a multi-process run: DDP keeps one set
        of BatchNorm statistics per rank (``broadcast_buffers=False``), and the checkpoint holds
        rank 0's, so every rank evaluates the model that the checkpoint holds."""
        if comm.get_world_size() > 1:
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        return super().test(cfg, model, evaluators)

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
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
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


def load_model_for_eval(cfg, resume=False):
    """Build the model of ``cfg`` and load ``MODEL.WEIGHTS`` (or, with ``resume``, the newest
    readable checkpoint of ``OUTPUT_DIR``) strictly (:func:`nrd_rsp.checkpoint.load_weights`):
    every model tensor must be in the checkpoint with its shape, else
    ``CheckpointMismatchError`` with a table. A missing weights file is a ``ConfigError``."""
    if not resume:
        check_weights_file(cfg, eval_only=True)
    model = Trainer.build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, strict=True, resume_dir=cfg.OUTPUT_DIR if resume else "")
    return model
