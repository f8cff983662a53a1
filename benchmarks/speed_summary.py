#!/usr/bin/env python
"""The summary of ``benchmarks/panoptic_speed.sh``: RSP against its baseline, training step
beside inference, per input size, with the FLOPs ratio (``results/config_costs.json``).

    python benchmarks/speed_summary.py [DIR]     # DIR: the results folder (default results/)

Reads the ``tools/benchmark.py --json`` outputs ``{panoptic,semantic}_speed_{task}_{H}x{W}.json``
in DIR (runs 2, 3, ... of ``RUNS``: ``..._run2.json``, ...) and writes ``panoptic_speed.md``
there (:func:`render`, from those files alone): the summary table of the first runs, every run's
median ratio beside its step's FLOPs ratio where there are several, then each run's printed
table (``*.txt``). Ratios are taken per round (RSP step / baseline step of the same interleaved
round): median, interquartile range, and the lowest and highest round.
"""

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, markdown_table  # noqa: E402

from nrd_rsp.analysis import speed  # noqa: E402

PAIRS = {  # name: (title, baseline config, RSP config) as in config_costs.json
    "panoptic": (
        "RSP Panoptic FPN R-50 / Panoptic FPN R-50",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
        "COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_1x.yaml",
    ),
    "semantic": (
        "RSP R-50 / Semantic FPN R-50",
        "Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml",
        "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
    ),
}
NAME = re.compile(r"(panoptic|semantic)_speed_(train|inference)_(\d+)x(\d+)(?:_run(\d+))?\.json$")


def round_ratios(path):
    """(per-round RSP / baseline latency ratios, the RSP result) of one benchmark JSON."""
    with open(path) as f:
        base, rsp = json.load(f)["results"]
    ratios = speed.round_ratios(rsp["latency_ms_rounds"], base["latency_ms_rounds"])
    return ratios, base, rsp


def flops_ratio(costs, pair):
    """RSP / baseline GFLOPs at the size of ``config_costs.json`` (None if not there)."""
    configs = costs.get("configs", {})
    _, base, rsp = PAIRS[pair]
    if base in configs and rsp in configs:
        return configs[rsp]["gflops_total"] / configs[base]["gflops_total"]
    return None


def step_flops_ratio(base, rsp):
    """RSP / baseline FLOPs of the measured step (``tools/benchmark.py --count-flops``: torch's
    FlopCounterMode, backward included for training), or None when not counted."""
    if base.get("flops_per_step") and rsp.get("flops_per_step"):
        return rsp["flops_per_step"] / base["flops_per_step"]
    return None


def _step_flops_cell(run):
    ratio = step_flops_ratio(run[1], run[2]) if run else None
    return f"{ratio:.3f}" if ratio else "n/a"


def _cell(ratios):
    q25, median, q75 = speed.quartiles(ratios)
    return f"{median:.3f} ({q25:.3f}-{q75:.3f}; {min(ratios):.3f}-{max(ratios):.3f})"


def _find_runs(out_dir):
    """(pair, (H, W), task) -> [round_ratios(...) of run 1, run 2, ...]."""
    found = {}
    for path in glob.glob(os.path.join(out_dir, "*_speed_*.json")):
        m = NAME.search(os.path.basename(path))
        if m:
            key = (m.group(1), (int(m.group(3)), int(m.group(4))), m.group(2))
            found.setdefault(key, {})[int(m.group(5) or 1)] = round_ratios(path)
    return {key: [by_run[r] for r in sorted(by_run)] for key, by_run in found.items()}


def _repeats(every):
    """Lines: each run's median ratio beside its step's FLOPs ratio, for the parts run more than
    once."""
    rows, at_or_below = [], []
    for (pair, hw, task), runs in sorted(every.items()):
        if len(runs) < 2:
            continue
        for i, run in enumerate(runs, start=1):
            flops = step_flops_ratio(run[1], run[2])
            median = speed.quartiles(run[0])[1]
            at_or_below.append(flops is not None and round(median, 3) <= round(flops, 3))
            rows.append(
                [pair, f"{hw[0]}x{hw[1]}", task, str(i), _cell(run[0]), _step_flops_cell(run)]
            )
    if not rows:
        return []
    head = ["pair", "input", "task", "run", "ratio", "its FLOPs ratio"]
    return [
        "Every run, one after another (`RUNS`): "
        f"{sum(at_or_below)} of {len(rows)} at or below the FLOPs ratio of their step.",
        "",
        *markdown_table(head, rows, "lllrrr"),
        "",
    ]


def render(out_dir):
    every = _find_runs(out_dir)
    runs = {key: found[0] for key, found in every.items()}
    costs_path = os.path.join(ROOT, "benchmarks", "results", "config_costs.json")
    costs = json.load(open(costs_path)) if os.path.exists(costs_path) else {}
    size = costs.get("meta", {}).get("input_size", ["?", "?"])
    rows = []
    for pair, hw in sorted({(p, s) for p, s, _ in runs}, key=lambda k: (k[0] != "panoptic", k[1])):
        cells = []
        for task in ("train", "inference"):
            run = runs.get((pair, hw, task))
            cells.append(_cell(run[0]) if run else "not run")
            cells.append(str(len(run[0])) if run else "")
            cells.append(_step_flops_cell(run))
        fr = flops_ratio(costs, pair)
        rows.append([PAIRS[pair][0], f"{hw[0]}x{hw[1]}", *cells, f"{fr:.3f}" if fr else "n/a"])
    lines = [
        "# RSP against its baseline: training step and inference speed",
        "",
        "Generated by `benchmarks/panoptic_speed.sh` (`tools/benchmark.py`, CPU, one thread, "
        "batch 1, random weights, interleaved rounds); summary by `benchmarks/speed_summary.py`. "
        "Per-round ratios RSP / baseline: median (interquartile range; lowest-highest round); "
        "the first run of each part (all runs, where there are several, below the table). "
        "Its FLOPs ratio: of the measured step at that input (`--count-flops`: torch's "
        "FlopCounterMode, matmuls and convolutions; training: forward, backward and optimizer; "
        "the RSE in its plain ops). "
        f"FLOPs ratio {size[0]}x{size[1]}: `results/config_costs.json` (fvcore, inference).",
        "",
        *markdown_table(
            [
                "pair",
                "input",
                "training step ratio",
                "rounds",
                "its FLOPs ratio",
                "inference ratio",
                "rounds",
                "its FLOPs ratio",
                f"FLOPs ratio {size[0]}x{size[1]}",
            ],
            rows,
            "llrrrrrrr",
        ),
        "",
        *_repeats(every),
    ]
    for pair, hw, task in sorted(runs, key=lambda k: (k[0] != "panoptic", k[1], k[2] != "train")):
        for i in range(1, len(every[(pair, hw, task)]) + 1):
            name = f"{pair}_speed_{task}_{hw[0]}x{hw[1]}" + (f"_run{i}" if i > 1 else "")
            txt = os.path.join(out_dir, f"{name}.txt")
            if os.path.exists(txt):
                title = f"## {pair}, {task}, {hw[0]}x{hw[1]}" + (f", run {i}" if i > 1 else "")
                lines += [title, "", open(txt).read().rstrip(), ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out_dir = argv[0] if argv else os.path.join(ROOT, "benchmarks", "results")
    text = render(out_dir)
    with open(os.path.join(out_dir, "panoptic_speed.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
