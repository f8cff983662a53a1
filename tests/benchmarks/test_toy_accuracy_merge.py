"""benchmarks/toy_accuracy.py's bookkeeping, without training (``run_one`` is replaced): a row's
own options (``ROW_OPTS``: NRD with a BN head) reach its runs, each run records the code it ran
with, ``--merge`` keeps the rows not rerun from the existing report, and the report says which
code ran each row."""

import argparse
import importlib.util
import json
import os

import pytest
from conftest import ROOT

from nrd_rsp.errors import ConfigError

_SPEC = importlib.util.spec_from_file_location(
    "toy_accuracy_merge", os.path.join(ROOT, "benchmarks", "toy_accuracy.py")
)
toy_accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(toy_accuracy)


def _fake_runs(rows, seeds, value, code=None):
    run = {"mIoU": value, "IoU-pole": value, "BF": value}
    if code:
        run["code"] = code
    return {row: {str(s): dict(run) for s in seeds} for row in rows}


def test_row_options_reach_the_run_and_the_code_is_recorded(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(toy_accuracy, "run_one", lambda c, opts, o, k: seen.append(opts) or {})
    monkeypatch.setattr(toy_accuracy, "code_hash", lambda: "0123456789abcdef" * 4)
    for row in ("nrd_bn", "nrd"):
        job = ("default", row, 1, ["MODEL.DEVICE", "cpu"], str(tmp_path / row), "cmd")
        _, metrics = toy_accuracy._job(job)
        assert metrics["code"] == "0123456789ab" and len(metrics["date"]) == 10
    bn, gn = seen
    assert toy_accuracy.ROWS["nrd_bn"][1] == toy_accuracy.ROWS["nrd"][1]  # same config file
    assert bn == ["MODEL.DEVICE", "cpu", "MODEL.NRD.NORM", "BN", "SEED", "1"]
    assert gn == ["MODEL.DEVICE", "cpu", "SEED", "1"]


def test_merge_keeps_the_rows_not_rerun_and_tells_their_code(tmp_path):
    seeds = [0, 1]
    old = {
        "settings": {"command": "python old.py", "date": "2026-01-02", "seeds": seeds},
        "runs": {"default": _fake_runs(["nrd", "rsp"], seeds, 50.0)},
    }
    with open(tmp_path / "toy_accuracy.json", "w") as f:
        json.dump(old, f)
    args = argparse.Namespace(output_dir=str(tmp_path), seeds=seeds)
    new = {"default": _fake_runs(["nrd"], seeds, 60.0, code="abc")}
    runs, prev = toy_accuracy._merge(args, new)
    assert prev["command"] == "python old.py"
    assert runs["default"]["nrd"]["0"]["mIoU"] == 60.0  # rerun: replaced
    assert runs["default"]["rsp"]["0"]["mIoU"] == 50.0  # not rerun: kept
    meta = {"command": "python new.py", "date": "2026-01-03", "merged_from": prev}
    lines = toy_accuracy._provenance_lines({"settings": meta, "runs": runs})
    assert "- `default` NRD: `abc`" in lines
    kept = [line for line in lines if line.startswith("- `default` RSP:")]
    assert kept == [
        "- `default` RSP: not recorded (runs of `python old.py`, 2026-01-02, kept by `--merge`)"
    ]
    # a second merge (NRD rerun again) still names the first report as RSP's source
    with open(tmp_path / "toy_accuracy.json", "w") as f:
        json.dump({"settings": {**meta, "seeds": seeds}, "runs": runs}, f)
    runs2, prev2 = toy_accuracy._merge(args, {"default": _fake_runs(["nrd"], seeds, 70.0, "d")})
    meta2 = {"command": "python third.py", "date": "2026-01-04", "merged_from": prev2}
    lines = toy_accuracy._provenance_lines({"settings": meta2, "runs": runs2})
    assert "- `default` NRD: `d`" in lines and kept[0] in lines
    with pytest.raises(ConfigError, match="seeds"):
        toy_accuracy._merge(argparse.Namespace(output_dir=str(tmp_path), seeds=[0, 1, 2]), new)


def test_summary_flags_a_comparison_of_rows_run_by_different_code():
    def row(values, code=None):
        runs = {str(s): {"mIoU": v, "IoU-pole": v, "BF": v} for s, v in enumerate(values)}
        for r in runs.values():
            r.update({"code": code} if code else {})
        return runs

    meta = {"command": "python new.py", "date": "2026-01-03", "seeds": [0, 1, 2]}
    for other_code, flagged in (("abc", False), (None, True)):
        runs = {"default": {"nrd": row([50, 52, 53], "abc"), "semantic_fpn": row([49, 50, 50])}}
        runs["default"]["semantic_fpn"] = row([49, 50, 50], other_code)
        _, comparisons = toy_accuracy.summarize_runs(runs, [0, 1, 2])
        report = {"settings": meta, "runs": runs, "comparisons": comparisons}
        (line,) = toy_accuracy.summary_lines(report)
        assert line.startswith("- `default`: NRD − Semantic FPN (D2), mIoU +2.0")
        assert ("ran different code" in line) == flagged, line
