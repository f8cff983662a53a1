"""tools/benchmark.py (inference and training speed, memory) and a smoke run of
benchmarks/decoders.py (tables, CSV, plot, ratio columns)."""

import csv
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

FIELDS = ("latency_ms_median", "latency_ms_p90", "iters_per_s", "images_per_s", "peak_memory_mib")


def _main(argv, capsys):
    try:
        rc = benchmark.main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


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
