"""benchmarks/data_throughput.py: the committed report is rendered from its JSON and covers every
real config at the datasets' image sizes; a tiny run of the script works end to end. No timing is
asserted here (the numbers are the benchmark's)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _script():
    spec = importlib.util.spec_from_file_location(
        "data_throughput", os.path.join(ROOT, "benchmarks", "data_throughput.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    with open(path) as f:
        return f.read()


def test_committed_report_is_rendered_from_its_json():
    report = json.loads(_read(os.path.join(RESULTS, "data_throughput.json")))
    md = _read(os.path.join(RESULTS, "data_throughput.md"))
    assert md == _script().render_markdown(report)


def test_committed_report_covers_every_real_config_at_real_sizes():
    dt = _script()
    report = json.loads(_read(os.path.join(RESULTS, "data_throughput.json")))
    assert not report["meta"]["tiny"]
    rows = report["rows"]
    assert sorted(c for r in rows for c in r["configs"]) == sorted(dt.real_configs())
    for key, sizes in dt.SIZES.items():
        assert report["datasets"][key]["image_hw"] == [list(hw) for hw in sizes], key
    assert report["datasets"]["cityscapes"]["image_format"] == "PNG"
    assert {report["datasets"][k]["image_format"] for k in ("coco", "ade20k")} == {"JPG"}
    assert {r["dataset"] for r in rows} == set(dt.SIZES)
    for row in rows:
        expected = {"stock", "project"} | (
            {"resize_then_crop"} if row["mapper_name"] == "sem_seg" else set()
        )
        assert set(row["mappers"]) == expected
        n = report["meta"]["rounds"]
        for key, m in row["mappers"].items():
            assert len(m["round_seconds"]) == n
            assert key == "stock" or m["speedup"]["rounds"] == n
    assert report["meta"]["load_before"] and report["meta"]["load_after"]


def test_tiny_run_writes_a_report_rendered_from_its_json(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "data_throughput.py")
    args = ["--tiny", "--rounds", "2", "--warmup", "0", "--output-dir", str(tmp_path)]
    args += ["--configs", "Cityscapes-SemanticSegmentation/nrd_R_50_84k", "panoptic_fpn_R_50_1x"]
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(_read(tmp_path / "data_throughput.json"))
    md = _read(tmp_path / "data_throughput.md")
    assert md == _script().render_markdown(report)
    assert "Tiny run" in md and report["meta"]["tiny"]
    assert [r["dataset"] for r in report["rows"]] == ["cityscapes", "coco"]
    assert [r["mapper"] for r in report["rows"]] == [
        "SemanticSegDatasetMapper",
        "PanopticFPNDatasetMapper",
    ]
    for row in report["rows"]:
        for m in row["mappers"].values():
            assert len(m["round_seconds"]) == 2 and m["images_per_s"] > 0
    # --render rewrites the same report from the JSON
    os.remove(tmp_path / "data_throughput.md")
    res = subprocess.run(
        [sys.executable, script, "--render", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _read(tmp_path / "data_throughput.md") == md
