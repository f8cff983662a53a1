"""Shared test set-up: a session-wide dataset root (the toy data is generated there on first use),
CPU-only, and helpers to run ``train_net.py`` as a user would."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_OPTS = ["DATASETS.TOY.NUM_TRAIN", "16", "DATASETS.TOY.NUM_VAL", "6"]


def pytest_configure(config):
    # Hermetic: never touch ./datasets of the checkout, and never look for a GPU in tests.
    base = os.environ.get("NRD_RSP_TEST_DATASETS") or os.path.join(
        config.rootpath if hasattr(config, "rootpath") else ROOT, ".pytest_cache", "datasets"
    )
    os.makedirs(base, exist_ok=True)
    os.environ["DETECTRON2_DATASETS"] = base
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # One thread per process: `make test` runs two pytest workers (pytest-xdist) on 2 cores, and the
    # train_net.py subprocesses inherit this.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def run_train_net(args, cwd=ROOT, timeout=600, env=None):
    """Run ``python train_net.py ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def train_net():
    return run_train_net
