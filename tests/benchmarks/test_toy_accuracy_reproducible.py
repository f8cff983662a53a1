"""benchmarks/toy_accuracy.py reproduces: the same (row, seed) run twice gives identical metrics
(the seed is applied before the model is built), and the run cache is keyed by the config, the
options and the code, with the key, the command and the thread count recorded per run."""

import importlib.util
import json
import os

import pytest
from conftest import ROOT, TOY_OPTS

pytestmark = pytest.mark.slow

_SPEC = importlib.util.spec_from_file_location(
    "toy_accuracy", os.path.join(ROOT, "benchmarks", "toy_accuracy.py")
)
toy_accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(toy_accuracy)

TINY = [*TOY_OPTS, "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu", "TEST.NUM_VIS_IMAGES", "0"]


def test_same_row_and_seed_give_identical_metrics(tmp_path):
    _, config, kind = toy_accuracy.ROWS["semantic_fpn"]
    opts = [*TINY, "SEED", "3"]
    first = toy_accuracy.run_one(config, opts, str(tmp_path / "a"), kind)
    second = toy_accuracy.run_one(config, opts, str(tmp_path / "b"), kind)
    keys = [k for k in first if k != "train_seconds"]
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    other = toy_accuracy.run_one(config, [*TINY, "SEED", "4"], str(tmp_path / "c"), kind)
    assert other["mIoU"] != first["mIoU"]  # the seed does decide something


def test_cache_is_keyed_by_config_options_and_code(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(config, opts, output_dir, kind):
        calls.append(opts)
        return {"mIoU": 1.0}

    monkeypatch.setattr(toy_accuracy, "run_one", fake_run_one)
    work = str(tmp_path / "run")
    job = ("default", "semantic_fpn", 0, list(TINY), work, "python benchmarks/toy_accuracy.py")
    _, metrics = toy_accuracy._job(job)
    assert metrics["command"] == job[-1] and metrics["threads"] >= 1
    assert metrics["key"] == toy_accuracy.run_key(
        toy_accuracy.ROWS["semantic_fpn"][1], [*TINY, "SEED", "0"], toy_accuracy.code_hash()
    )
    with open(os.path.join(work, toy_accuracy.CACHE_NAME)) as f:
        assert json.load(f)["key"] == metrics["key"]
    toy_accuracy._job(job)
    assert len(calls) == 1  # same key: cached
    toy_accuracy._job((*job[:3], [*TINY, "SOLVER.BASE_LR", "0.1"], *job[4:]))
    assert len(calls) == 2  # other options: run again
    monkeypatch.setattr(toy_accuracy, "code_hash", lambda: "changed")
    toy_accuracy._job(job)
    assert len(calls) == 3  # other code: run again
