"""tools/benchmark.py (inference and training speed, memory), interleaved rounds and per-round
ratios (nrd_rsp.analysis.speed, decoders.py's scheduling), a smoke run of benchmarks/decoders.py
(tables, CSV, plot, ratio columns) and the dry run of benchmarks/gpu_check.sh."""

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import benchmark  # noqa: E402

from nrd_rsp import analysis as A  # noqa: E402
from nrd_rsp.analysis import speed  # noqa: E402


def _decoders_module():
    spec = importlib.util.spec_from_file_location(
        "decoders_bench", os.path.join(ROOT, "benchmarks", "decoders.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIELDS = ("latency_ms_median", "latency_ms_p90", "iters_per_s", "images_per_s", "peak_memory_mib")


def _main(argv, capsys):
    try:
        rc = benchmark.main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,task",
    [
        ("configs/Toy/rsp_R_18_toy.yaml", "inference"),
        ("configs/Toy/rsp_R_18_toy.yaml", "train"),
        ("configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml", "train"),  # boxes + masks + sem_seg
    ],
)
def test_benchmark_tiny_runs(config, task, capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    rc, out, err = _main(
        [
            "--config-file",
            config,
            "--task",
            task,
            "--iters",
            "2",
            "--warmup",
            "1",
            "--input-size",
            "64",
            "128",
            "--threads",
            "1",
            "--json",
            str(out_json),
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    res = json.loads(out_json.read_text())
    for field in FIELDS:
        assert res[field] > 0, field
        assert f"{field}: " in out
    assert res["latency_ms_p90"] >= res["latency_ms_median"]
    batch = 1 if task == "inference" else 2
    assert res["batch_size"] == batch and res["input_size"] == [64, 128]
    assert res["images_per_s"] == pytest.approx(batch * 1000.0 / res["latency_ms_median"])
    assert res["iters_per_s"] == pytest.approx(1000.0 / res["latency_ms_median"])
    assert res["device"] == "cpu" and "peak RSS" in res["peak_memory_kind"]


def test_train_batches_carry_the_labels_the_model_needs():
    cfg = A.setup("configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml")
    model = A.build_model(cfg, eval_mode=False)
    batches = A.synthetic_train_batches(model, cfg, 64, 96, batch_size=2, num_batches=2)
    assert len(batches) == 2 and len(batches[0]) == 2
    d = batches[0][0]
    assert d["image"].shape == (3, 64, 96) and d["sem_seg"].shape == (64, 96)
    assert (
        0 <= int(d["sem_seg"].min())
        and int(d["sem_seg"].max()) < cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    inst = d["instances"]
    assert len(inst) > 0 and inst.gt_masks.tensor.shape[1:] == (64, 96)
    assert int(inst.gt_classes.max()) < cfg.MODEL.ROI_HEADS.NUM_CLASSES
    boxes = inst.gt_boxes.tensor
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert inst.gt_masks.tensor.flatten(1).any(1).all()  # no empty mask
    semantic = A.build_model(A.setup("configs/Toy/rsp_R_18_toy.yaml"), eval_mode=False)
    d = A.synthetic_train_batches(semantic, cfg, 32, 32, batch_size=1, num_batches=1)[0][0]
    assert "instances" not in d and "sem_seg" in d


def test_time_steps_and_stats():
    calls = []
    times = A.time_steps(lambda: calls.append(1), iters=4, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 6 and len(times) == 4 and all(t >= 0 for t in times)
    stats = A.latency_stats([0.1, 0.2, 0.3, 0.4], batch_size=2)
    assert stats["latency_ms_median"] == pytest.approx(250.0)
    assert stats["latency_ms_p90"] == pytest.approx(370.0)
    assert stats["images_per_s"] == pytest.approx(8.0)


class _FakeClock:
    """Steps that take ``cost * load[round]`` seconds on a fake clock and record their order."""

    def __init__(self, costs, load):
        self.costs, self.load, self.order, self.calls = costs, load, [], 0

    def step(self, key):
        def run():
            r = self.calls // len(self.costs)  # the round this call belongs to
            self.calls += 1
            self.order.append(key)
            return self.costs[key] * self.load[r]

        return run


def test_interleaved_rounds_run_every_step_once_per_round_in_rotating_order():
    clock = _FakeClock({"a": 1.0, "b": 1.5, "c": 2.0}, load=[1, 1, 3, 1, 5, 1])
    seen = []
    times = speed.interleaved_rounds(
        {k: clock.step(k) for k in "abc"},
        rounds=4,
        warmup=2,
        on_round=lambda r, t: seen.append((r, list(t))),
    )
    # 2 warm-up rounds then 4 timed ones, each running a, b, c once; round r (warm-up rounds
    # being -2 and -1) starts at key r mod 3.
    assert clock.order == list("bcacababcbcacababc")
    assert seen == [(0, list("abc")), (1, list("bca")), (2, list("cab")), (3, list("abc"))]
    assert times == {"a": [3.0, 1.0, 5.0, 1.0], "b": [4.5, 1.5, 7.5, 1.5], "c": [6, 2, 10, 2]}
    # Per-round ratios cancel the load of each round: exactly 1.5 with no spread, although the
    # latencies themselves vary five-fold.
    stats = speed.ratio_stats(times["b"], times["a"])
    assert stats["ratio_median"] == pytest.approx(1.5) and stats["ratio_iqr"] == pytest.approx(0)
    assert stats["rounds"] == 4
    assert speed.round_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        speed.round_ratios([1.0], [1.0, 2.0])
    assert speed.quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    no_rotation = _FakeClock({"a": 1.0, "b": 1.0}, load=[1, 1])
    speed.interleaved_rounds({k: no_rotation.step(k) for k in "ab"}, rounds=2, rotate=False)
    assert no_rotation.order == list("abab")


def test_ratio_stats_take_median_and_iqr_of_per_round_ratios():
    base = [1.0, 1.0, 1.0, 1.0, 1.0]
    other = [1.1, 1.2, 1.3, 1.4, 10.0]  # one disturbed round does not move the median
    stats = speed.ratio_stats(other, base)
    assert stats["ratio_median"] == pytest.approx(1.3)
    assert (stats["ratio_q25"], stats["ratio_q75"]) == (pytest.approx(1.2), pytest.approx(1.4))
    assert stats["ratio_iqr"] == pytest.approx(0.2)
    lat = A.latency_stats([0.1, 0.2, 0.3, 0.4, 0.5], batch_size=1)
    assert lat["latency_ms_q25"] == pytest.approx(200) and lat["latency_ms_q75"] == pytest.approx(
        400
    )
    assert lat["latency_ms_iqr"] == pytest.approx(200)


def test_decoders_rows_are_timed_round_robin_with_per_round_ratios():
    dec = _decoders_module()
    clock = _FakeClock({"semfpn_r50": 1.0, "rsp_r50": 1.2, "nrd_r50": 1.5}, load=[1, 4, 1, 2, 1, 1])

    class FakeRunner:
        def __init__(self, key):
            self.step = clock.step(key)

    keys = ["semfpn_r50", "rsp_r50", "nrd_r50"]
    args = argparse.Namespace(iters=5, warmup=1)
    times = dec.run_rounds({k: FakeRunner(k) for k in keys}, args)
    assert len(clock.order) == 6 * 3
    for r in range(6):  # every round runs every row exactly once
        assert sorted(clock.order[3 * r : 3 * r + 3]) == sorted(keys)
    assert clock.order[3:6] == keys  # first timed round starts at the first row
    results = [{"key": k, "depth": 50} for k in keys]
    dec.add_round_ratios(results, times)
    by_key = {r["key"]: r for r in results}
    assert by_key["rsp_r50"]["latency_ratio_vs_semfpn_median"] == pytest.approx(1.2)
    assert by_key["nrd_r50"]["latency_ratio_vs_semfpn_q25"] == pytest.approx(1.5)
    assert by_key["nrd_r50"]["latency_ratio_vs_semfpn_q75"] == pytest.approx(1.5)
    assert by_key["semfpn_r50"]["latency_ratio_vs_semfpn_median"] == pytest.approx(1.0)
    assert by_key["nrd_r50"]["latency_ratio_vs_dlv3p_median"] is None  # baseline not run


def test_benchmark_interleaves_several_configs(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    configs = ["configs/Toy/semantic_fpn_R_18_toy.yaml", "configs/Toy/rsp_R_18_toy.yaml"]
    rc, out, err = _main(
        [
            *(a for c in configs for a in ("--config-file", c)),
            "--iters",
            "3",
            "--warmup",
            "0",
            "--input-size",
            "32",
            "64",
            "--threads",
            "1",
            "--json",
            str(out_json),
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    results = json.loads(out_json.read_text())["results"]
    assert [r["config_file"] for r in results] == configs
    base, rsp = results
    for r in results:
        assert len(r["latency_ms_rounds"]) == 3 and r["rounds"] == 3
        assert r["latency_ms_median"] == pytest.approx(sorted(r["latency_ms_rounds"])[1])
        assert r["latency_ms_q25"] <= r["latency_ms_median"] <= r["latency_ms_q75"]
        assert r["own_memory_mib"] > 0 and r["baseline_config_file"] == configs[0]
    ratios = [a / b for a, b in zip(rsp["latency_ms_rounds"], base["latency_ms_rounds"])]
    assert rsp["latency_ratio_median_vs_baseline"] == pytest.approx(sorted(ratios)[1])
    assert base["latency_ratio_median_vs_baseline"] == pytest.approx(1.0)
    assert out.count("latency_ms_median: ") == 2 and "latency_ratio_vs_baseline: " in out


def _gpu_check(tmp_path, *args, configs=""):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))  # the device tool's folder
    if configs:
        env["GPU_CHECK_CONFIGS"] = configs
    return subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_step_and_its_summary(tmp_path):
    configs = [
        "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml",
        "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    ]
    r = _gpu_check(tmp_path, "--dry-run", configs=" ".join(configs))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    names = [s[0] for s in steps]
    assert names == [
        "preflight",
        "parity",
        "amp_diffs",
        "toy_train",
        "toy_resume",
        "toy_eval_tta",
        "step_Cityscapes-SemanticSegmentation_semantic_fpn_R_50_90k_bs16",
        "step_COCO-PanopticSegmentation_panoptic_fpn_R_50_1x",
    ]
    assert all(s[1] == "0" for s in steps), steps
    by_name = {s[0]: s[3] for s in steps}
    assert "SOLVER.AMP.ENABLED True" in by_name["toy_train"]
    assert (
        "--resume" in by_name["toy_resume"] and "TEST.AUG.ENABLED True" in by_name["toy_eval_tta"]
    )
    coco = by_name["step_COCO-PanopticSegmentation_panoptic_fpn_R_50_1x"]
    assert "MODEL.RESNETS.NORM BN SOLVER.BASE_LR 0.0" in coco
    assert (
        "SOLVER.BASE_LR"
        not in by_name["step_Cityscapes-SemanticSegmentation_semantic_fpn_R_50_90k_bs16"]
    )
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert set(parity) >= {"RSE", "RSP", "NRD head"} and parity["tf32"] is False
    amp = json.loads((tmp_path / "amp_diffs.json").read_text())["configs"]
    assert all(0 <= row["bf16"]["grad"] < 1 for row in amp.values())
    assert (tmp_path / "toy_amp" / "eval_results.json").exists()
    for config in configs:  # one process and one file per config, fp32 and AMP rows
        name = "step_" + "_".join(config.split("/")[1:])[: -len(".yaml")]
        rows = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
        assert set(rows) == {"off", "bf16"} and all(r["step_ms"] > 0 for r in rows.values())
    md = (tmp_path / "summary.md").read_text()
    assert "dry run" in md and f"torch {torch.__version__}" in md and "Device: CPU" in md
    assert "## CPU vs cpu float32 (TF32 off)" in md and "## AMP vs float32" in md
    assert f"| `{configs[1]}` | 64x128 |" in md


@pytest.mark.slow
def test_gpu_check_stops_after_the_preflight_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    r = _gpu_check(tmp_path)
    assert r.returncode == 1
    assert (
        "CUDA is not available: stopping the GPU check here."
        in (tmp_path / "logs" / "preflight.log").read_text()
    )
    steps = (tmp_path / "steps.tsv").read_text().splitlines()
    assert [s.split("\t")[:2] for s in steps] == [["preflight", "3"]]
    assert json.loads((tmp_path / "preflight.json").read_text())["cuda_available"] is False
    assert (tmp_path / "summary.md").exists()


def test_fp16_on_cpu_is_a_clear_error(capsys):
    rc, _, err = _main(
        ["--config-file", "configs/Toy/rsp_R_18_toy.yaml", "--amp", "fp16", "--device", "cpu"],
        capsys,
    )
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("ERROR: --amp fp16 needs CUDA")


def test_cuda_without_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    rc, _, err = _main(
        ["--config-file", "configs/Toy/rsp_R_18_toy.yaml", "--device", "cuda"], capsys
    )
    assert rc == 2 and "CUDA is not available" in err


def test_bf16_autocast_runs_on_cpu(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    rc, _, err = _main(
        [
            "--config-file",
            "configs/Toy/nrd_R_18_toy.yaml",
            "--amp",
            "bf16",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--input-size",
            "64",
            "64",
            "--threads",
            "1",
            "--json",
            str(out_json),
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    assert json.loads(out_json.read_text())["amp"] == "bf16"


@pytest.mark.slow
def test_decoders_benchmark_smoke(tmp_path):
    rows = ["dlv3_r101_os8", "dlv3p_r50_os16", "nrd_r50"]
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "decoders.py"),
            "--quick",
            "--in-process",
            "--threads",
            "1",
            "--iters",
            "2",
            "--rows",
            ",".join(rows),
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    md = (tmp_path / "decoders.md").read_text()
    png = (tmp_path / "decoders.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with open(tmp_path / "decoders.csv") as f:
        table = {row["key"]: row for row in csv.DictReader(f)}
    assert list(table) == rows
    for label in ("DeepLabV3 R-101 OS8", "DeepLabV3+ R-50 OS16", "NRD R-50"):
        assert f"| {label} |" in md
    assert "No GPU was used" in md and "64x128" in md

    metrics = [
        "gflops_total",
        "gflops_neck_head",
        "gflops_head",
        "params_total_m",
        "params_neck_head_m",
        "latency_ms_median",
        "images_per_s",
        "peak_memory_mib",
    ]
    for row in table.values():
        for m in metrics:
            assert float(row[m]) > 0, (row["key"], m)
        assert (
            float(row["gflops_head"])
            <= float(row["gflops_neck_head"])
            <= float(row["gflops_total"])
        )
    # NRD R-50 is compared with DeepLabV3+ R-50 and DeepLabV3 R-101 OS8: ratio = value / baseline.
    nrd = table["nrd_r50"]
    assert (
        nrd["baseline_vs_dlv3p"] == "dlv3p_r50_os16"
        and nrd["baseline_vs_dlv3_os8"] == "dlv3_r101_os8"
    )
    for m in metrics:
        for suffix, base in (("vs_dlv3p", "dlv3p_r50_os16"), ("vs_dlv3_os8", "dlv3_r101_os8")):
            assert float(nrd[f"{m}_{suffix}"]) == pytest.approx(
                float(nrd[m]) / float(table[base][m]), rel=1e-6
            )
        assert float(table["dlv3p_r50_os16"][f"{m}_vs_dlv3p"]) == pytest.approx(1.0)
        assert float(table["dlv3_r101_os8"][f"{m}_vs_dlv3_os8"]) == pytest.approx(1.0)
        # DeepLabV3+ R-101, the R-101 baseline, was not run: no ratio.
        assert table["dlv3_r101_os8"][f"{m}_vs_dlv3p"] == ""
    # NRD's auxiliary FCN head is training-only: excluded from the inference parameters.
    assert float(nrd["params_train_only_m"]) > 0
    assert float(table["dlv3p_r50_os16"]["params_train_only_m"]) == 0
    # The ratio tables in the markdown show the same numbers.
    assert f"| NRD R-50 | DeepLabV3+ R-50 OS16 | {float(nrd['gflops_total_vs_dlv3p']):.2f} |" in md
    # Per-round latency ratios: median and quartiles of row[r] / baseline[r] over the rounds.
    raw = json.loads((tmp_path / "decoders.json").read_text())
    per_round = raw["latency_s_rounds"]
    assert all(len(v) == 2 for v in per_round.values())
    ratios = [a / b for a, b in zip(per_round["nrd_r50"], per_round["dlv3p_r50_os16"])]
    assert float(nrd["latency_ratio_vs_dlv3p_median"]) == pytest.approx(sum(ratios) / 2)
    assert float(nrd["latency_ratio_vs_dlv3p_q25"]) == pytest.approx(
        min(ratios) + 0.25 * abs(ratios[1] - ratios[0])
    )
    assert "interleaved" in md and "### Latency ratios per round" in md
    # --render writes the same tables again from decoders.json, measuring nothing.
    (tmp_path / "decoders.md").unlink()
    assert _decoders_module().main(["--render", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "decoders.md").read_text() == md


def test_decoders_benchmark_rejects_unknown_rows(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "decoders.py"),
            "--rows",
            "nope",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "unknown rows" in r.stderr


@pytest.mark.slow
def test_onnx_runtime_benchmark_smoke(tmp_path):
    """benchmarks/onnx_runtime.py on the toy panoptic row: the export matches eager, both sides
    are timed, and the ratio's median lies within its interquartile range; the table names it."""
    script = os.path.join(ROOT, "benchmarks", "onnx_runtime.py")
    args = ["--rows", "toy_rsp_panoptic", "--rounds", "3", "--warmup", "0"]
    cmd = [sys.executable, script, *args, "--output-dir", str(tmp_path)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "onnx_runtime.json") as f:
        (row,) = json.load(f)["results"]
    assert row["kind"] == "panoptic" and row["max_abs_diff_vs_eager"] <= 1e-3
    assert row["eager_ms_median"] > 0 and row["onnx_ms_median"] > 0
    assert row["ratio_q25"] <= row["ratio_median"] <= row["ratio_q75"]
    assert row["label"] in (tmp_path / "onnx_runtime.md").read_text()


@pytest.mark.slow
def test_nrd_memory_benchmark_smoke(tmp_path):
    """benchmarks/nrd_memory.py on a small input: one fresh process per patch size, logits of
    stride 32 / r, per-pixel weights = P x output pixels (P = 899 for 19 classes, docs/NRD.md)."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "nrd_memory.py")]
    cmd += ["--size", "256", "512", "--patch-sizes", "8", "16", "--runs", "1"]
    r = subprocess.run(
        [*cmd, "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "nrd_memory.json").read_text())["rows"]
    assert [row["logits_shape"] for row in rows] == [[1, 19, 64, 128], [1, 19, 128, 256]]
    for row in rows:
        pixels = row["logits_shape"][2] * row["logits_shape"][3]
        assert row["per_pixel_weights_mib"] == pytest.approx(899 * pixels * 4 / 2**20)
        assert row["peak_increase_mib"] > 0
    assert "| 16 | 2 | 1x19x128x256 |" in (tmp_path / "nrd_memory.md").read_text()
