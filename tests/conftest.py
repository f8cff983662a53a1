"""Shared test set-up: a session-wide dataset root (the toy data is generated there on first use),
CPU-only (the ``cuda``-marked tests excepted: ``pytest -m cuda`` runs them on a GPU), and helpers
to run ``train_net.py`` as a user would."""

import functools
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_OPTS = ["DATASETS.TOY.NUM_TRAIN", "16", "DATASETS.TOY.NUM_VAL", "6"]


@functools.cache
def load_script(path):
    """The repository script at ``path`` (relative to the root, e.g. ``"tools/export_model.py"``)
    imported as a module, once per process. It is entered in ``sys.modules`` under its file name,
    so that multiprocessing can pickle its functions."""
    name = os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    # Hermetic: never touch ./datasets of the checkout, and never look for a GPU in tests.
    base = os.environ.get("NRD_RSP_TEST_DATASETS") or os.path.join(
        config.rootpath if hasattr(config, "rootpath") else ROOT, ".pytest_cache", "datasets"
    )
    os.makedirs(base, exist_ok=True)
    os.environ["DETECTRON2_DATASETS"] = base
    config.addinivalue_line(
        "markers",
        "slow: over about 10 s on 2 cores (training runs, several processes, full-size models); "
        "`make test-fast` leaves them out, `make test` runs them",
    )
    config.addinivalue_line(
        "markers",
        "cuda: needs a CUDA GPU; runs with `pytest -m cuda` (CUDA stays visible then), skipped "
        "otherwise",
    )
    # The CPU tests (and the train_net.py runs they start) never see a GPU; a run that selects
    # the cuda-marked tests (`-m cuda`) keeps it visible.
    if not _selects_cuda_tests(config):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # One thread per process: `make test` runs two pytest workers (pytest-xdist) on 2 cores, and the
    # train_net.py subprocesses inherit this.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def _selects_cuda_tests(config):
    expr = config.getoption("markexpr", "") or ""
    return "cuda" in expr and "not cuda" not in expr


# Run first: the learning check trains three toy models two at a time (both cores) for about
# 5 minutes; started last, it would leave the other pytest worker idle meanwhile.
_FIRST = ("tests/e2e/test_toy_learning.py",)


def _run_order(item):
    """Sort key: the files of ``_FIRST``, then the slow tests, then the rest (collection order
    within each). With ``--dist loadfile --no-loadscope-reorder`` (``make test``) pytest-xdist
    hands out the files in this order, so the long runs overlap each other rather than finish
    alone."""
    path = item.nodeid.split("::")[0]
    return (path not in _FIRST, "slow" not in item.keywords)


def pytest_collection_modifyitems(config, items):
    """Order the tests (:func:`_run_order`); skip the cuda-marked tests, saying why, unless
    ``-m cuda`` selected them on a GPU."""
    items.sort(key=_run_order)
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    if _selects_cuda_tests(config):
        import torch

        if torch.cuda.is_available():
            return
        reason = "needs CUDA: no GPU on this machine"
    else:
        reason = "GPU test: CUDA is hidden from the CPU tests; run `pytest -m cuda` on a GPU"
    for item in cuda_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _drop_log_handlers_added_by_test():
    """Tools called in-process (analyze_model, benchmark, ...) attach detectron2 console handlers to
    the stream pytest had captured for that test; once the capture is closed, a later test's log
    record would print '--- Logging error ---' into its stderr. Remove such handlers after each
    test."""
    import logging

    def handlers():
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        return {(lg, h) for lg in loggers for h in lg.handlers}

    before = handlers()
    yield
    for lg, h in handlers() - before:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            lg.removeHandler(h)


def run_train_net(args, cwd=ROOT, timeout=600, env=None):
    """Run ``python train_net.py ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def train_net():
    return run_train_net


def panoptic_batch(n=2, h=128, w=160):
    """A Panoptic FPN training batch: two box/mask instances per image (classes 0 and 2) and a
    semantic map whose thing pixels are 0 ("things") and stuff pixels 1..5."""
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = []
    for i in range(n):
        inst = Instances((h, w))
        boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0 + i, 30.0, 130.0, 110.0]])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = True
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        inst.gt_masks = BitMasks(masks)
        sem = torch.randint(1, 6, (h, w))
        sem[masks.any(0)] = 0  # "things"
        image = torch.randint(0, 255, (3, h, w)).float()
        batch.append({"image": image, "instances": inst, "sem_seg": sem})
    return batch


@pytest.fixture(scope="module")
def standin_setup(tmp_path_factory):
    """For tests/real_runs: (root of the prepared real-dataset stand-ins, the converted random
    "ImageNet" weights by ResNet depth), made once per module."""
    from standin_runs import ConvertedWeights, write_standins

    return write_standins(tmp_path_factory), ConvertedWeights(tmp_path_factory.mktemp("weights"))
