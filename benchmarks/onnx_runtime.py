#!/usr/bin/env python
"""ONNX Runtime (CPU) against eager PyTorch (CPU) for exported semantic and panoptic models.

    python benchmarks/onnx_runtime.py                       # all rows, 15 interleaved rounds
    python benchmarks/onnx_runtime.py --rows toy_rsp_panoptic --rounds 5 --output-dir /tmp/b

Each row exports a model with ``tools/export_model.py`` (random weights, BN instead of SyncBN) to
ONNX, then times one image through the eager model and through the exported one
(``nrd_rsp.export.ExportedModel``: onnxruntime's CPU provider + the same post-processing, which
for panoptic models includes the panoptic combination). Semantic rows time the logits at the
export size; panoptic rows the full output dict (``sem_seg``, ``instances``, ``panoptic_seg``).
Timing is interleaved: every round runs eager then ONNX, or ONNX then eager (alternating), so a
shared machine's load changes both sides of the ratio alike; the table gives the median
latencies and the median and interquartile range of the per-round ratio ONNX / eager. Both use
``--threads`` intra-op threads (default 1: on a shared machine more threads than free cores
slow PyTorch's OpenMP pool far more than the model's cost). Writes ``onnx_runtime.md`` and
``onnx_runtime.json`` to ``--output-dir`` (default ``benchmarks/results``).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when loaded by path
from common import environment, package_versions, run_interleaved  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["DATASETS.TOY.NUM_TRAIN", "16", "DATASETS.TOY.NUM_VAL", "6"]
BN = ["MODEL.RESNETS.NORM", "BN"]
NRD_BN = ["MODEL.NRD.NORM", "BN", "MODEL.NRD.INPUT_NORM", "BN", "MODEL.NRD.POOLING_NORM", "BN"]
# key -> (label, config, opts, input H x W)
ROWS = OrderedDict(
    [
        (
            "rsp_r50_semantic",
            (
                "RSP R-50 (semantic)",
                "configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
                BN,
                (256, 512),
            ),
        ),
        (
            "nrd_r50_semantic",
            (
                "NRD R-50 (semantic)",
                "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml",
                BN + NRD_BN,
                (256, 512),
            ),
        ),
        (
            "toy_rsp_panoptic",
            (
                "RSP Panoptic FPN R-18 toy",
                "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml",
                TOY,
                (128, 160),
            ),
        ),
        (
            "toy_nrd_rsp_panoptic",
            (
                "NRD + RSP Panoptic FPN R-18 toy",
                "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
                TOY,
                (128, 160),
            ),
        ),
        (
            "coco_rsp_panoptic_r50",
            (
                "RSP Panoptic FPN R-50 (COCO config)",
                "configs/COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_1x.yaml",
                BN,
                (320, 480),
            ),
        ),
    ]
)


def _export_tool():
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(ROOT, "tools", "export_model.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure_row(key, rounds, warmup, workdir, threads):
    """Export row ``key`` to ONNX and time eager against ONNX Runtime; returns its results."""
    from nrd_rsp.analysis.speed import ratio_stats, timed
    from nrd_rsp.engine import setup_cfg
    from nrd_rsp.export import ExportedModel

    tool = _export_tool()
    label, config, opts, (h, w) = ROWS[key]
    out = os.path.join(workdir, key)
    base = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out]
    cfg = setup_cfg(os.path.join(ROOT, config), [*base, *opts])
    torch.manual_seed(0)
    info = tool.export(cfg, "onnx", out, input_size=(h, w))
    torch.manual_seed(0)  # the same random weights as the export
    model, kind = tool.load_export_model(cfg)
    exported = ExportedModel(info["path"], num_threads=threads)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    inputs = [{"image": image}]

    def eager():
        with torch.no_grad():
            return model(inputs)

    cpu = torch.device("cpu")
    # Interleaved rounds, the first side alternating: eager then ONNX in even rounds.
    steps = {"eager": timed(eager, cpu), "onnx": timed(lambda: exported(inputs), cpu)}
    times = run_interleaved(steps, rounds, warmup)
    ratio = ratio_stats(times["onnx"], times["eager"])
    detections = len(eager()[0]["instances"]) if kind == "panoptic" else None
    return {
        "key": key,
        "label": label,
        "config": config,
        "kind": kind,
        "input_size": [h, w],
        "detections": detections,
        "max_abs_diff_vs_eager": info["max_abs_diff_vs_eager"],
        "eager_ms_median": float(np.median(times["eager"]) * 1e3),
        "onnx_ms_median": float(np.median(times["onnx"]) * 1e3),
        "ratio_median": ratio["ratio_median"],
        "ratio_q25": ratio["ratio_q25"],
        "ratio_q75": ratio["ratio_q75"],
        "times_s": times,
    }


def render(results, meta):
    lines = [
        "# ONNX Runtime against eager PyTorch (CPU)",
        "",
        f"`python benchmarks/onnx_runtime.py {meta['args']}` on {meta['machine']}, "
        f"{meta['threads']} thread(s), {meta['rounds']} interleaved rounds, {meta['date']}. "
        "Random weights (panoptic rows: the detections of a random model, up to 100). "
        "Ratio = ONNX / eager latency per round (< 1: ONNX Runtime faster); "
        "median [q25, q75] over rounds." + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "| Model | Path | Input | Detections | Eager (ms) | ONNX Runtime (ms) | Ratio | Max diff |",
        "|:---|:---|:---|---:|---:|---:|:---|---:|",
    ]
    for r in results:
        dets = "" if r["detections"] is None else str(r["detections"])
        lines.append(
            f"| {r['label']} | {r['kind']} | {r['input_size'][0]}x{r['input_size'][1]} | {dets} | "
            f"{r['eager_ms_median']:.1f} | {r['onnx_ms_median']:.1f} | "
            f"{r['ratio_median']:.2f} [{r['ratio_q25']:.2f}, {r['ratio_q75']:.2f}] | "
            f"{r['max_abs_diff_vs_eager']:.1e} |"
        )
    lines += [
        "",
        "Semantic: logits at the export size (eager: the model's `sem_seg`; ONNX: the graph plus "
        "a no-op resize). Panoptic: the full output dict; both run the same post-processing "
        "(`detector_postprocess`, `sem_seg_postprocess`, the panoptic combination) in PyTorch.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated keys of ROWS")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both sides")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--note", default="", help="a sentence on the machine, added to the table")
    p.add_argument(
        "--render", action="store_true", help="only rewrite onnx_runtime.md from the .json"
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        with open(os.path.join(args.output_dir, "onnx_runtime.json")) as f:
            saved = json.load(f)
        if args.note:
            saved["meta"]["note"] = args.note
        with open(os.path.join(args.output_dir, "onnx_runtime.json"), "w") as f:
            json.dump(saved, f, indent=2)
        with open(os.path.join(args.output_dir, "onnx_runtime.md"), "w") as f:
            f.write(render(saved["results"], saved["meta"]))
        return 0
    keys = [k for k in args.rows.split(",") if k]
    unknown = [k for k in keys if k not in ROWS]
    if unknown or args.rounds < 1:
        print(f"ERROR: unknown rows {unknown} or --rounds < 1", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    import nrd_rsp  # noqa: F401  (registers configs and models)

    results = []
    with tempfile.TemporaryDirectory() as work:
        for key in keys:
            results.append(measure_row(key, args.rounds, args.warmup, work, args.threads))
            r = results[-1]
            print(f"{key}: eager {r['eager_ms_median']:.1f} ms, onnx {r['onnx_ms_median']:.1f} ms")
    env = environment("cpu", "cpu_count", "date", "torch")
    meta = {
        "args": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{env['cpu']}, {env['cpu_count']} CPU(s)",
        "threads": args.threads,
        "rounds": args.rounds,
        "date": env["date"][:10],
        "torch": env["torch"],
        **package_versions("onnxruntime"),
        "note": args.note,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "onnx_runtime.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    with open(os.path.join(args.output_dir, "onnx_runtime.md"), "w") as f:
        f.write(render(results, meta))
    print(os.path.join(args.output_dir, "onnx_runtime.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
