"""Shared helpers of the reliability tests: small, fast toy settings and train_net runners."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, TOY_OPTS

SEMANTIC_CFG = "configs/Toy/semantic_fpn_R_18_toy.yaml"
PANOPTIC_CFG = "configs/Toy/panoptic_fpn_R_18_toy.yaml"

# 64x80 toy images (the generator's minimum is 48), 64x64 crops: ~4x cheaper than the defaults.
SMALL_SEMANTIC_OPTS = TOY_OPTS + [
    "DATASETS.TOY.IMAGE_SIZE", "(64, 80)", "INPUT.RESIZE_BASE_SIZE", "(64, 80)",
    "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "TEST.NUM_VIS_IMAGES", "0",
]  # fmt: skip

# One thread per process: identical float reductions in every run (and no OpenMP spinning on a
# shared 2-core machine).
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_net_cmd(*args):
    return [sys.executable, os.path.join(ROOT, "train_net.py"), *args]


def run(args, timeout=600, env=None):
    """Run ``train_net.py ARGS`` (one thread per process); returns the CompletedProcess."""
    full_env = dict(os.environ, **ENV, **(env or {}))
    return subprocess.run(
        train_net_cmd(*args),
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen(args, log_path, env=None):
    full_env = dict(os.environ, **ENV, **(env or {}))
    log = open(log_path, "w")
    return subprocess.Popen(
        train_net_cmd(*args), cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )


def check_ok(r):
    assert r.returncode == 0, (
        f"train_net.py failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    )


def read_losses(out_dir):
    """{iteration: [entries]} from OUTPUT_DIR/losses.jsonl (an iteration may be logged twice
    around a kill)."""
    losses = {}
    with open(os.path.join(out_dir, "losses.jsonl")) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                losses.setdefault(d.pop("iteration"), []).append(d)
    return losses


def assert_same_losses(ref_dir, got_dir, max_iter):
    """The per-iteration losses of ``got_dir`` (every entry: an iteration run twice around an
    interruption must agree too) equal those of ``ref_dir`` within 1e-5, for iterations
    ``0 .. max_iter - 1``."""
    ref, got = read_losses(ref_dir), read_losses(got_dir)
    assert sorted(ref) == sorted(got) == list(range(max_iter))
    for it in range(max_iter):
        for entry in got[it]:
            assert entry.keys() == ref[it][0].keys()
            for k, v in entry.items():
                assert math.isfinite(v) and v == pytest.approx(ref[it][0][k], abs=1e-5), (it, k)


def error_lines(stderr):
    """The lines of ``stderr`` that are not warnings: Python's (``warnings.warn``), PyTorch's
    C++ ones (``W1201 12:00:00.000 ...``) and download progress bars (``... B/s]``)."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip()
        and "Warning" not in line
        and not line.startswith("  warnings.warn")
        and not re.match(r"W\d{4} \d\d:\d\d", line)
        and not line.rstrip().endswith("B/s]")
    ]
