"""Training and evaluation glue: config set-up with start-up checks, the ``Trainer``, prediction
visualisation. ``train_net.py`` and the tools are thin wrappers around this module."""
import functools
import logging
import os
import sys
import weakref
from collections import OrderedDict

import cv2
import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import (
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.projects.deeplab import build_lr_scheduler as build_poly_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.visualizer import ColorMode, Visualizer

from .config import add_nrd_rsp_config
from .data import build_train_mapper
from .data.datasets import DatasetNotFoundError, check_dataset_available, configure_toy_datasets_from_cfg
from .modeling.test_time_augmentation import SemanticSegmentorWithTTA

__all__ = [
    "ConfigError",
    "USER_ERRORS",
    "exit_on_user_error",
    "setup_cfg",
    "validate_cfg",
    "Trainer",
    "evaluate",
    "visualize_predictions",
    "load_model_for_eval",
]

logger = logging.getLogger("nrd_rsp")


class ConfigError(ValueError):
    """A config, a path in it, or a command-line override is wrong. The message says how to fix it."""


# Errors caused by what the user passed: CLIs print them as one line and exit with status 2.
USER_ERRORS = (ConfigError, DatasetNotFoundError)


def exit_on_user_error(fn):
    """Decorator for CLI entry points: a ``USER_ERRORS`` exception becomes ``ERROR: <message>`` on
    stderr and exit status 2 instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            print(f"ERROR: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def setup_cfg(config_file, opts=(), freeze=True):
    """Load ``config_file`` on top of Detectron2's and the project's defaults, apply ``opts``
    (KEY VALUE pairs), fall back to CPU when CUDA is missing, and register the toy datasets with
    the config's ``DATASETS.TOY`` parameters."""
    if not config_file or not os.path.isfile(config_file):
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
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"CUDA is not available: MODEL.DEVICE falls back from '{cfg.MODEL.DEVICE}' to 'cpu'.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on CPU.")
        cfg.SOLVER.AMP.ENABLED = False
    configure_toy_datasets_from_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg


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


def validate_cfg(cfg, eval_only=False):
    """Start-up checks that turn late, deep failures into one clear error.

    Raises ``ConfigError`` for a missing ``MODEL.WEIGHTS`` file or a class count that disagrees
    with the dataset metadata, and ``DatasetNotFoundError`` (from ``nrd_rsp.data.datasets``) for
    a missing or incomplete dataset directory.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.WEIGHTS file not found: '{weights}'. Fix the path, or pass MODEL.WEIGHTS \"\" to "
            "start from random initialisation."
        )
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


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with evaluators chosen from the dataset's ``evaluator_type``, the
    project's training mappers, poly LR and semantic test-time augmentation."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that DistributedDataParallel gets no device_ids for CPU
        # models, so that `--num-gpus N` runs N Gloo processes on a machine without GPUs.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
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
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_poly_lr_scheduler(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` wrapped in ``SemanticSegmentorWithTTA`` (``TEST.AUG.*``)."""
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def evaluate(cfg, model):
    """Evaluate on ``cfg.DATASETS.TEST`` (plus TTA when ``TEST.AUG.ENABLED``); returns the results."""
    res = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        res.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        verify_results(cfg, res)
    return res


@torch.no_grad()
def visualize_predictions(cfg, model, dataset_name=None, num_images=None, output_dir=None):
    """Draw the predictions of ``model`` on the first ``num_images`` images of ``dataset_name``
    with Detectron2's ``Visualizer`` and write them as PNG. Returns the written paths."""
    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    num_images = cfg.TEST.NUM_VIS_IMAGES if num_images is None else num_images
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


def load_model_for_eval(cfg):
    """Build the model of ``cfg`` and load ``MODEL.WEIGHTS``."""
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    return model
