"""Determinism and GPU throughput settings (issue 19), checked on CPU: the per-sample RNG block
restores the CUDA generators too, the opt-in DETERMINISTIC_ALGORITHMS mode, cuDNN autotuning for
the fixed-size crops, page-locked training batches on CUDA, and one host transfer per step in
the step guard. The same on a GPU: tests/engine/test_cuda.py (marked ``cuda``)."""

import glob
import logging
import os

import pytest
import torch
from conftest import ROOT

import nrd_rsp.data.resumable_loader as loader_module
from nrd_rsp.data.resumable_sampling import seeded_rng
from nrd_rsp.engine import setup_cfg
from nrd_rsp.engine.determinism import STILL_NONDETERMINISTIC, setup_determinism
from nrd_rsp.engine.step_guard import GuardedSimpleTrainer
from nrd_rsp.training_health import TrainingHealth


def test_seeded_rng_restores_the_cuda_generators(monkeypatch):
    """With CUDA initialised, the block's seeding (torch.manual_seed reseeds every CUDA
    generator) is undone on exit; simulated here with recording stand-ins."""
    calls = []
    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: calls.append(s))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: None)
    cpu_before = torch.get_rng_state()
    with seeded_rng(123):
        assert not calls
    assert calls == [saved]
    assert torch.equal(torch.get_rng_state(), cpu_before)


def test_seeded_rng_leaves_uninitialised_cuda_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("no CUDA state"))
    with seeded_rng(5):
        pass


@pytest.fixture
def restore_determinism_flags():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:4]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def test_deterministic_mode_sets_the_flags_and_names_what_stays_nondeterministic(
    restore_determinism_flags, monkeypatch
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True  # as default_setup sets it from CUDNN_BENCHMARK
    off = setup_cfg("configs/Toy/nrd_R_18_toy.yaml", quiet=True)
    assert off.DETERMINISTIC_ALGORITHMS is False
    assert setup_determinism(off, log=pytest.fail) is False
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    on = setup_cfg(
        "configs/Toy/nrd_R_18_toy.yaml", ["DETERMINISTIC_ALGORITHMS", "True"], quiet=True
    )
    lines = []
    assert setup_determinism(on, log=lines.append) is True
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert len(lines) == 1 and all(op in lines[0] for op in STILL_NONDETERMINISTIC)
    assert "F.interpolate" in lines[0]


def _real_configs():
    files = glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
    return sorted(
        os.path.relpath(f, ROOT)
        for f in files
        if "/Toy/" not in f and not os.path.basename(f).startswith("Base-")
    )


@pytest.mark.parametrize("config", _real_configs())
def test_cudnn_autotuning_follows_the_crop(config):
    """On for fixed-size training crops (absolute crops every image covers, or padded to a
    multiple the crop equals), off for COCO's multi-scale inputs of many sizes."""
    cfg = setup_cfg(config, quiet=True)
    crop = cfg.INPUT.CROP
    fixed = crop.ENABLED and crop.TYPE == "absolute"
    if fixed:
        h, w = crop.SIZE
        base = cfg.INPUT.RESIZE_BASE_SIZE
        smallest = [s * cfg.INPUT.RESIZE_SCALE_RANGE[0] for s in base]
        div = cfg.INPUT.SIZE_DIVISIBILITY
        covers = smallest[0] >= h and smallest[1] >= w  # every rescaled image covers the crop
        fixed = covers or (div > 0 and h % div == 0 and w % div == 0 and div >= max(h, w))
    assert cfg.CUDNN_BENCHMARK == fixed, (config, tuple(crop.SIZE))
    assert "COCO" not in config or not cfg.CUDNN_BENCHMARK


class _Captured(Exception):
    pass


@pytest.mark.parametrize("device,pinned", [("cuda", True), ("cpu", False)])
def test_training_batches_are_page_locked_on_cuda(monkeypatch, device, pinned):
    seen = {}

    def fake_build(*args, **kwargs):
        seen.update(kwargs)
        raise _Captured()

    monkeypatch.setattr(loader_module, "build_batch_data_loader", fake_build)
    cfg = setup_cfg(
        "configs/Toy/semantic_fpn_R_18_toy.yaml",
        ["DATASETS.TOY.NUM_TRAIN", "16", "DATASETS.TOY.NUM_VAL", "6"],
        freeze=False,
        quiet=True,
    )
    cfg.MODEL.DEVICE = device  # as on a machine with CUDA
    from nrd_rsp.data.mappers import CheckedDatasetMapper

    loader = loader_module.build_resumable_train_loader(
        cfg, CheckedDatasetMapper(cfg, True), seed=1
    )
    with pytest.raises(_Captured):
        iter(loader).__next__()
    assert seen["pin_memory"] is pinned


def test_step_guard_reads_all_loss_terms_in_one_transfer(monkeypatch):
    """No ``.item()`` per loss term (one host-device synchronisation each on a GPU): one
    ``tolist`` of the stacked terms per step."""
    model = torch.nn.Linear(2, 2)
    trainer = GuardedSimpleTrainer(
        model, [None], torch.optim.SGD(model.parameters(), lr=0.1), health=TrainingHealth()
    )
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail(".item() per term"))
    calls = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or tolist(self))
    losses = {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor([2.0, 4.0])}
    trainer._guard_step(losses, 0)
    assert len(calls) == 1
    assert trainer.health.last_losses == {
        "iteration": 0,
        "total_loss": 4.5,
        "loss_a": 1.5,
        "loss_b": 3.0,
    }


def test_cuda_marker_is_registered(pytestconfig):
    markers = pytestconfig.getini("markers")
    assert any(m.startswith("cuda:") for m in markers)
    logging.getLogger(__name__).info(markers)
