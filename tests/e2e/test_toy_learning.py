"""Learning checks: the project's decoders, trained from scratch on the toy data with their toy
config's own schedule by ``benchmarks/toy_accuracy.py`` (short mode, seed 0, like the first run
of each row of benchmarks/results/toy_accuracy.json), reach accuracies an untrained model
cannot: mIoU > 40 for the semantic models (an untrained one is below 15), and for the RSP
panoptic quickstart PQ stuff > 60 (an untrained one is near 0), box AP > 1 (near 0 untrained)
and PQ things > 0 (0 while no detection scores above the 0.5 of the panoptic combination).

Orderings between models (NRD against Semantic FPN, RSP against Panoptic FPN) depend on the seed
on this short schedule; they belong to the benchmark report with its confidence intervals
(benchmarks/results/toy_accuracy.md), not here."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_decoders_learn_on_the_toy_schedule(tmp_path):
    # The three runs in one call, two at a time (one thread each), at the benchmark's seed 0.
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "toy_accuracy.py")]
    cmd += ["--settings", "default", "--rows", "nrd", "rsp", "rsp_panoptic_fpn"]
    cmd += ["--seeds", "0", "--jobs", "2", "--output-dir", str(tmp_path)]
    cmd += ["--work-dir", str(tmp_path / "work")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(os.path.join(tmp_path, "toy_accuracy.json")) as f:
        runs = json.load(f)["runs"]["default"]
    res = {row: runs[row]["0"] for row in ("nrd", "rsp", "rsp_panoptic_fpn")}
    print(json.dumps(res, indent=1))  # shown with pytest -s and on failure
    for row in ("nrd", "rsp"):
        assert res[row]["iterations"] == 200
        assert res[row]["mIoU"] > 40.0, (row, res[row])
    pan = res["rsp_panoptic_fpn"]
    assert pan["iterations"] == 200
    assert pan["PQ_st"] > 60.0, pan
    assert pan["mIoU"] > 40.0, pan
    # the detector learns, and fires: its detections enter the panoptic output
    assert pan["AP_box"] > 1.0 and pan["PQ_th"] > 0.0, pan
