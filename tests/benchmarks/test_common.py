"""benchmarks/common.py: the environment stamp, markdown tables and interleaved timed steps that
the benchmark scripts share, and the package's MeasuredStep under them."""

import os
import re
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import common  # noqa: E402

from nrd_rsp.analysis.speed import MeasuredStep  # noqa: E402


def test_environment_gives_the_named_fields_in_order():
    torch.set_num_threads(1)
    env = common.environment("date", "device", "torch", "cpu_count", "cuda_available")
    assert list(env) == ["date", "device", "torch", "cpu_count", "cuda_available"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", env["date"])
    assert env["device"].startswith("CPU ") and "(1 threads" in env["device"]
    assert env["torch"] == torch.__version__ and env["cpu_count"] == os.cpu_count()
    assert env["cuda_available"] == torch.cuda.is_available()
    assert list(common.environment()) == list(common.STAMP_FIELDS)
    with pytest.raises(KeyError, match="Unknown stamp fields"):
        common.environment("torch", "gpu")


def test_package_versions_module_then_distribution():
    import numpy as np

    versions = common.package_versions("numpy", "panopticapi-lite", "no_such_package_x")
    assert versions["numpy"] == np.__version__
    assert versions["panopticapi-lite"] not in ("", "n/a")  # a distribution, not a module
    assert versions["no_such_package_x"] == "n/a"
    assert common.package_versions(numpy="numpy", opencv="cv2")["opencv"] not in ("", "n/a")


def test_markdown_table_and_fmt():
    lines = common.markdown_table(["Model", "ms", "x"], [["a", 1.5, "n/a"]], ["l", "r", ""])
    assert lines == ["| Model | ms | x |", "|:---|---:|---|", "| a | 1.5 | n/a |"]
    assert common.markdown_table(["a", "b"], [])[1] == "|---|---|"
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [], "lrr")
    assert common.fmt(None) == "n/a" and common.fmt(1.234) == "1.23"
    assert common.fmt(2.0, "{:.0f}") == "2"


def test_run_interleaved_logs_every_timed_round():
    order, logged = [], []

    def step(key, seconds):
        def run():
            order.append(key)
            return seconds

        return run

    times = common.run_interleaved(
        {"a": step("a", 0.001), "b": step("b", 0.002)}, rounds=2, warmup=1, log=logged.append
    )
    assert times == {"a": [0.001, 0.001], "b": [0.002, 0.002]}
    assert order == ["b", "a", "a", "b", "b", "a"]  # the first key rotates from round to round
    assert len(logged) == 2 and logged[0].startswith("round 1/2 (") and "a 1, b 2 ms" in logged[0]


def test_measured_step_records_time_and_peak_memory_per_call():
    calls = []
    step = MeasuredStep(lambda: calls.append(torch.ones(256, 1024)), torch.device("cpu"))
    assert step.peak == 0.0 and step.increase == 0.0
    seconds = [step() for _ in range(3)]
    assert len(calls) == 3 and all(s >= 0 for s in seconds)
    assert len(step.peaks) == len(step.rises) == 3
    assert step.peak == max(step.peaks) > 0 and step.increase == max(step.rises)
    assert "RSS" in step.peak_kind
