"""The decoders against Detectron2's baselines on the toy data, same backbone and schedule
(benchmarks/toy_accuracy.py, short mode): NRD's mIoU is no lower than Semantic FPN's, and the
quickstart's RSP Panoptic FPN reaches a PQ no lower than plain Panoptic FPN."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def _run_rows(tmp_path, rows, opts=()):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "toy_accuracy.py"), "--rows", *rows,
         "--output-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"), *opts],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    with open(tmp_path / "toy_accuracy.json") as f:
        results = json.load(f)["results"]
    print(open(tmp_path / "toy_accuracy.md").read())  # shown with pytest -s / on failure
    return results


def test_nrd_miou_not_below_semantic_fpn(tmp_path):
    res = _run_rows(tmp_path, ["semantic_fpn", "nrd"])
    assert res["semantic_fpn"]["mIoU"] > 20.0  # both models learn
    assert res["nrd"]["mIoU"] >= res["semantic_fpn"]["mIoU"]


def test_rsp_panoptic_fpn_pq_not_below_panoptic_fpn(tmp_path):
    res = _run_rows(tmp_path, ["panoptic_fpn", "rsp_panoptic_fpn"])
    assert res["panoptic_fpn"]["PQ"] > 10.0
    assert res["rsp_panoptic_fpn"]["PQ"] >= res["panoptic_fpn"]["PQ"]
