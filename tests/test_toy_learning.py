"""Learning checks: the project's decoders, trained from scratch on the toy data with their toy
config's own schedule by ``benchmarks/toy_accuracy.py`` (short mode, the configs' seed), reach
accuracies an untrained model cannot: mIoU > 40 for the semantic models (an untrained one is
below 15) and PQ stuff > 60 for the RSP panoptic quickstart (an untrained one is near 0).

Orderings between models (NRD against Semantic FPN, RSP against Panoptic FPN) depend on the seed
on this short schedule; they belong to the benchmark report with its confidence intervals
(benchmarks/results/toy_accuracy.md), not here. The two processes run in parallel, one thread
each (``pytest -n 2 --dist loadfile`` runs this file beside the rest)."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def start_rows(out_dir, rows):
    """Start ``benchmarks/toy_accuracy.py`` on ``rows`` (one thread) in the background."""
    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, "log.txt"), "w")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "toy_accuracy.py"),
        "--rows",
        *rows,
        "--output-dir",
        str(out_dir),
        "--work-dir",
        os.path.join(out_dir, "work"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log


def finish_rows(out_dir, started):
    """Wait for :func:`start_rows`; returns the results dict (row -> metrics)."""
    proc, log = started
    try:
        returncode = proc.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    with open(os.path.join(out_dir, "log.txt")) as f:
        assert returncode == 0, f.read()[-6000:]
    with open(os.path.join(out_dir, "toy_accuracy.json")) as f:
        return json.load(f)["results"]


def test_decoders_learn_on_the_toy_schedule(tmp_path):
    started = {
        "semantic": start_rows(tmp_path / "semantic", ["nrd", "rsp"]),
        "panoptic": start_rows(tmp_path / "panoptic", ["rsp_panoptic_fpn"]),
    }
    try:
        res = {kind: finish_rows(tmp_path / kind, s) for kind, s in started.items()}
    finally:  # a failed run must not leave the other one training
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
    print(json.dumps(res, indent=1))  # shown with pytest -s and on failure
    for row in ("nrd", "rsp"):
        assert res["semantic"][row]["iterations"] == 200
        assert res["semantic"][row]["mIoU"] > 40.0, (row, res["semantic"][row])
    pan = res["panoptic"]["rsp_panoptic_fpn"]
    assert pan["iterations"] == 200
    assert pan["PQ_st"] > 60.0, pan
    assert pan["mIoU"] > 40.0, pan
