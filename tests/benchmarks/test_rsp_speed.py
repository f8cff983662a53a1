"""benchmarks/panoptic_speed.sh (with speed_summary.py) and benchmarks/rsp_profile.py: the RSP
speed comparisons against their baselines (issue #23)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, load_script


@pytest.mark.slow
def test_panoptic_speed_script_smoke(tmp_path):
    """benchmarks/panoptic_speed.sh on tiny inputs: both pairs and tasks, each JSON's models in
    order and its per-round ratios, the summary table of panoptic_speed.md (training step beside
    inference, the FLOPs ratios of results/config_costs.json) and the printed tables."""
    env = dict(os.environ, ITERS="1", SIZES="128x192", SEM_SIZES="64x128", PYTHON=sys.executable)
    r = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "panoptic_speed.sh"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = load_script("benchmarks/speed_summary.py")
    md = (tmp_path / "panoptic_speed.md").read_text()
    for pair, size, base_cfg in (
        ("panoptic", "128x192", "panoptic_fpn_R_50_1x.yaml"),
        ("semantic", "64x128", "semantic_fpn_R_50_90k_bs16.yaml"),
    ):
        for task in ("inference", "train"):
            path = tmp_path / f"{pair}_speed_{task}_{size}.json"
            ratios, base, rsp = summary.round_ratios(str(path))
            assert base["config_file"].endswith(base_cfg) and "rsp" in rsp["config_file"]
            assert len(ratios) == 1 and ratios[0] > 0
            assert rsp["flops_per_step"] > 0 and base["flops_per_step"] > 0
            if pair == "semantic":  # the same model plus the RSP head (the panoptic ROI heads'
                # arithmetic depends on the random proposals)
                assert rsp["flops_per_step"] > base["flops_per_step"]
            assert rsp["input_size"] == [int(v) for v in size.split("x")]
            assert f"## {pair}, {task}, {size}" in md
        costs = json.loads(open(os.path.join(ROOT, "benchmarks/results/config_costs.json")).read())
        row = next(
            line for line in md.splitlines() if line.startswith(f"| {summary.PAIRS[pair][0]}")
        )
        assert f"| {summary.flops_ratio(costs, pair):.3f} |" in row and "not run" not in row
    assert md.count("latency_ratio_vs_baseline") == 8


def test_speed_summary_ratios_are_per_round(tmp_path):
    """speed_summary.py: per-round ratios (not the ratio of medians), quartiles, extremes."""
    summary = load_script("benchmarks/speed_summary.py")
    base = {"config_file": "b.yaml", "latency_ms_rounds": [100.0, 200.0, 100.0, 100.0]}
    rsp = {"config_file": "r.yaml", "latency_ms_rounds": [110.0, 200.0, 130.0, 120.0]}
    for task in ("train", "inference"):
        path = tmp_path / f"semantic_speed_{task}_64x128.json"
        if task == "train":  # counted FLOPs of the step: its ratio beside the time ratio
            base["flops_per_step"], rsp["flops_per_step"] = 400, 504
        path.write_text(json.dumps({"results": [base, rsp]}))
    ratios, _, _ = summary.round_ratios(str(tmp_path / "semantic_speed_train_64x128.json"))
    assert ratios == pytest.approx([1.1, 1.0, 1.3, 1.2])
    assert summary.main([str(tmp_path)]) == 0
    md = (tmp_path / "panoptic_speed.md").read_text()
    assert "| 1.150 (1.075-1.225; 1.000-1.300) | 4 | 1.260 |" in md
    assert md == summary.render(str(tmp_path))
    assert "Every run" not in md  # one run of each part


def test_speed_summary_lists_every_run_against_its_flops_ratio(tmp_path):
    """Several runs of a part (``RUNS``): each run's median ratio beside its step's FLOPs ratio,
    and how many are at or below it; the main table keeps the first run."""
    summary = load_script("benchmarks/speed_summary.py")
    base = {"config_file": "b.yaml", "latency_ms_rounds": [100.0] * 3, "flops_per_step": 1000}
    for run, rsp_ms in ((1, [110.0, 112.0, 115.0]), (2, [116.0, 120.0, 118.0]), (3, [114.0] * 3)):
        rsp = {"config_file": "r.yaml", "latency_ms_rounds": rsp_ms, "flops_per_step": 1140}
        name = "semantic_speed_inference_64x128" + (f"_run{run}" if run > 1 else "")
        (tmp_path / f"{name}.json").write_text(json.dumps({"results": [base, rsp]}))
        (tmp_path / f"{name}.txt").write_text(f"table of run {run}")
    md = summary.render(str(tmp_path))
    assert "2 of 3 at or below the FLOPs ratio of their step" in md  # 1.12 and 1.14, not 1.18
    assert "| semantic | 64x128 | inference | 2 | 1.180 (1.170-1.190; 1.160-1.200) | 1.140 |" in md
    assert "| 1.120 (1.110-1.135; 1.100-1.150) | 3 | 1.140 |" in md  # the table: run 1
    assert md.index("## semantic, inference, 64x128, run 3") > md.index("table of run 2")


@pytest.mark.slow
def test_rsp_profile_smoke(tmp_path):
    """benchmarks/rsp_profile.py --tiny: both pairs with the plain and the fused ops; every RSP
    group has forward and backward time, the groups of the baseline none, and the report renders
    again from its JSON alone."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "rsp_profile.py"), "--tiny"]
    r = subprocess.run(
        [*cmd, "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "rsp_profile.json").read_text())
    assert [(p["name"], p["ops"]) for p in data["pairs"]] == [
        ("panoptic", "plain"), ("panoptic", "fused"), ("semantic", "plain"), ("semantic", "fused")
    ]  # fmt: skip
    for pair in data["pairs"]:
        base, rsp = pair["models"]
        for group in ("rsp.rse", "rsp.proj", "rsp.fuse"):
            assert rsp["train"]["forward_ms"][group] > 0 and rsp["train"]["backward_ms"][group] > 0
            assert rsp["inference"]["forward_ms"][group] > 0
            assert group not in base["train"]["forward_ms"]
        assert base["train"]["backward_ms"]["backbone.bottom_up"] > 0
    md = (tmp_path / "rsp_profile.md").read_text()
    (tmp_path / "rsp_profile.md").unlink()
    load_script("benchmarks/rsp_profile.py").main(["--render", "--output-dir", str(tmp_path)])
    assert (tmp_path / "rsp_profile.md").read_text() == md
