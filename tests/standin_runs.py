"""Shared set-up of the real-path tests: the dataset stand-ins (``tests/standins.py``) written and
prepared once per module, random "ImageNet" weights converted as a user would, and ``train_net.py``
runs of the shipped configs at tiny size."""

import glob
import json
import math
import os
import subprocess
import sys

import standins
import torch
import torchvision
from conftest import ROOT

CONVERT = os.path.join(ROOT, "tools", "convert-torchvision-to-d2.py")

# Per dataset folder: the overrides that shrink a shipped config to the stand-ins (sizes only).
SIZE_OPTS = {
    "Cityscapes-SemanticSegmentation": [
        "INPUT.RESIZE_BASE_SIZE", "(128, 256)", "INPUT.CROP.SIZE", "(64, 128)",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
    ],
    "ADE20K-SemanticSegmentation": [
        "INPUT.RESIZE_BASE_SIZE", "(64, 256)", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.SIZE_DIVISIBILITY", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256",
    ],
    "PascalContext-SemanticSegmentation": [
        "INPUT.RESIZE_BASE_SIZE", "(80, 80)", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.SIZE_DIVISIBILITY", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256",
    ],
    # SCORE_THRESH_TEST 0: an untrained box head scores every class ~1/81 (< the 0.05 default),
    # and the COCO evaluators need detections to compute AP. BASE_LR: with MAX_ITER 2, Detectron2
    # squeezes the warm-up into the two iterations (LR 0.01 at the second), which sends random
    # heads' features to ~1e6 and leaves no proposal to evaluate.
    "COCO-PanopticSegmentation": [
        "INPUT.MIN_SIZE_TRAIN", "(64, 80)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "SOLVER.BASE_LR", "0.0001",
    ],
}  # fmt: skip

SCHEDULE_OPTS = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.NUM_VIS_IMAGES", "1"]

# What the evaluators of each dataset folder report (eval_results.json: task -> metric -> value).
EXPECTED_METRICS = {
    "Cityscapes-SemanticSegmentation": {
        "cityscapes_sem_seg": ["IoU", "iIoU", "IoU_sup", "iIoU_sup"],
        "sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"],
    },
    "ADE20K-SemanticSegmentation": {"sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"]},
    "PascalContext-SemanticSegmentation": {"sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"]},
    "COCO-PanopticSegmentation": {
        "panoptic_seg": ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"],
        "bbox": ["AP", "AP50"],
        "segm": ["AP", "AP50"],
        "sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"],
    },
}


def shipped_configs(folder):
    """The leaf configs (not ``Base-*``) of ``configs/<folder>``, relative to the repository."""
    paths = glob.glob(os.path.join(ROOT, "configs", folder, "*.yaml"))
    return sorted(
        os.path.relpath(p, ROOT) for p in paths if not os.path.basename(p).startswith("Base-")
    )


def write_standins(tmp_path_factory):
    """Write and prepare the four stand-ins (as a user runs datasets/prepare_*.py); returns the
    root."""
    root = str(tmp_path_factory.mktemp("datasets"))
    standins.write_all(root)
    standins.prepare_all(root)
    return root


@torch.no_grad()
def random_imagenet_like_resnet(depth, seed=0):
    """A randomly initialised torchvision ResNet-``depth`` whose BN statistics are measured on
    noise at the scale of Detectron2's MSRA inputs (mean-subtracted 0..255 pixels), so that a
    FrozenBN backbone loaded from it keeps its activations normalised, as with ImageNet weights
    (with torchvision's initial statistics, mean 0 and variance 1, they grow without bound)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(2):
        model(torch.randn(8, 3, 64, 64) * 60.0)
    return model.state_dict()


def convert_random_resnet(directory, depth):
    """:func:`random_imagenet_like_resnet`, saved and converted with
    tools/convert-torchvision-to-d2.py as a user would; returns the .pkl path."""
    src = os.path.join(directory, f"resnet{depth}.pth")
    dst = os.path.join(directory, f"R-{depth}-torchvision.pkl")
    torch.save(random_imagenet_like_resnet(depth), src)
    r = subprocess.run(
        [sys.executable, CONVERT, src, dst], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    os.remove(src)
    return dst


class ConvertedWeights(dict):
    """depth -> converted .pkl path (:func:`convert_random_resnet`), made on first use."""

    def __init__(self, directory):
        super().__init__()
        self.directory = str(directory)

    def __missing__(self, depth):
        self[depth] = convert_random_resnet(self.directory, depth)
        return self[depth]


def weights_for(config, weights_by_depth):
    """The converted weights of the config's ResNet depth, or "" for a deep-stem backbone (no
    torchvision counterpart; those configs use BN/SyncBN and train from random init)."""
    from nrd_rsp.engine import setup_cfg

    cfg = setup_cfg(os.path.join(ROOT, config), ["MODEL.WEIGHTS", ""], quiet=True)
    if (
        cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone"
        and cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    ):
        return ""
    return weights_by_depth[cfg.MODEL.RESNETS.DEPTH]


def train_net(config, datasets, output_dir, *opts, flags=(), num_gpus=1, timeout=900):
    """``train_net.py --config-file CONFIG FLAGS`` on the stand-ins at ``datasets``, shrunk by
    ``SIZE_OPTS`` and ``SCHEDULE_OPTS``, then ``OPTS``; returns the CompletedProcess."""
    folder = os.path.basename(os.path.dirname(config))
    args = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(ROOT, config),
    ]
    args += [*flags, *(["--num-gpus", str(num_gpus)] if num_gpus > 1 else [])]
    args += [*SIZE_OPTS[folder], *SCHEDULE_OPTS, "OUTPUT_DIR", str(output_dir), *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=datasets, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_ok(r):
    assert r.returncode == 0, (
        f"train_net.py failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    )


def read_results(output_dir):
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


def check_metrics(results, folder, suffix=""):
    """Every metric the dataset's evaluators report is present, finite and within [0, 100]."""
    for task, metrics in EXPECTED_METRICS[folder].items():
        assert task + suffix in results, f"{task + suffix} not in {sorted(results)}"
        for m in metrics:
            v = results[task + suffix][m]
            assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 100.0, (task, m, v)


def train_and_check(config, setup, output_dir, *opts, **kwargs):
    """Train ``config`` on the stand-ins with its "ImageNet" weights (:func:`weights_for`),
    check that it ran and reported every metric of its dataset; returns (results, the
    CompletedProcess)."""
    root, weights = setup
    r = train_net(
        config, root, output_dir, "MODEL.WEIGHTS", weights_for(config, weights), *opts, **kwargs
    )
    check_ok(r)
    results = read_results(output_dir)
    check_metrics(results, os.path.basename(os.path.dirname(config)))
    return results, r
