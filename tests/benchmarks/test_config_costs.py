"""The cost tables (GFLOPs total / decoder at 1024x2048, params) of config_costs.md and
MODEL_ZOO.md equal what benchmarks/config_costs.py wrote to benchmarks/results/config_costs.json,
and that JSON covers every shipped real-dataset config: the tables cannot drift from the script
(regenerate with `python benchmarks/config_costs.py` and copy its numbers into MODEL_ZOO.md). No
model is built."""

import json
import os
import re

import pytest
from conftest import ROOT

GROUPS = (
    "Cityscapes-SemanticSegmentation",
    "ADE20K-SemanticSegmentation",
    "PascalContext-SemanticSegmentation",
    "COCO-PanopticSegmentation",
)
ROW = re.compile(r"^\| (`[^|]+`) \| ([^|]+?) \| ([0-9.]+) / ([0-9.]+) \| ([0-9.]+) \|$")


def _json():
    with open(os.path.join(ROOT, "benchmarks", "results", "config_costs.json")) as f:
        return json.load(f)["configs"]


def _table(text, heading):
    """Rows of the first table after ``heading``: [(configs, model, total, decoder, params)]."""
    section = text.split(heading, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("| Config | Model | GFLOPs (total / decoder) | Params (M) |"):
            started = True
            continue
        if not started or line.startswith("|---"):
            continue
        if not line.startswith("|"):
            break
        m = ROW.match(line)
        assert m, f"malformed row: {line}"
        names = re.findall(r"`([^`]+)`", m.group(1))
        group = names[0].split("/")[0]  # later names of a shared row are relative to its group
        configs = [names[0]] + [f"{group}/{n}" for n in names[1:]]
        rows.append((configs, m.group(2), m.group(3), m.group(4), m.group(5)))
    assert rows, f"no config table after {heading!r}"
    return rows


def _leaf_configs():
    out = set()
    for g in GROUPS:
        out |= {
            f"{g}/{f}"
            for f in os.listdir(os.path.join(ROOT, "configs", g))
            if f.endswith(".yaml") and not f.startswith("Base-")
        }
    return out


def test_json_covers_every_shipped_config():
    assert set(_json()) == _leaf_configs(), "rerun python benchmarks/config_costs.py"


@pytest.mark.parametrize(
    "doc, heading", [("benchmarks/results/config_costs.md", "# Cost of the shipped configs")]
)
def test_config_table_equals_config_costs_json(doc, heading):
    with open(os.path.join(ROOT, doc)) as f:
        rows = _table(f.read(), heading)
    costs = _json()
    listed = [c for configs, *_ in rows for c in configs]
    assert sorted(listed) == sorted(costs), f"{doc}: one entry per config of config_costs.json"
    for configs, model, total, decoder, params in rows:
        for c in configs:
            r = costs[c]
            assert (model, total, decoder, params) == (
                r["model"],
                f"{r['gflops_total']:.1f}",
                f"{r['gflops_decoder']:.1f}",
                f"{r['params_m']:.2f}",
            ), f"{doc}: row of {c}"


def test_model_zoo_real_dataset_rows_equal_config_costs_json():
    costs = _json()
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        md = f.read()
    seen = set()
    for line in md.splitlines():
        m = re.match(r"^\| \[[^\]]+\]\(configs/([^)]+)\) \|", line)
        if not m or m.group(1).startswith("Toy/"):
            continue
        cells = [c.strip() for c in line.split("|")]  # "", config, model, backbone, schedule, ...
        r = costs[m.group(1)]
        assert (cells[7], cells[8]) == (f"{r['gflops_total']:.1f}", f"{r['params_m']:.2f}"), (
            m.group(1)
        )
        seen.add(m.group(1))
    assert seen == set(costs)
