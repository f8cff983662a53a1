#!/usr/bin/env python
"""Side-by-side cost of the semantic decoders, as the RSP and NRD papers compare them.

    python benchmarks/decoders.py                      # CPU: FLOPs at 1024x2048, timing at 256x512
    python benchmarks/decoders.py --device cuda        # GPU: FLOPs and timing at 1024x2048
    python benchmarks/decoders.py --rows nrd_r50,dlv3p_r50_os16 --quick --output-dir /tmp/b

Every row is the semantic path of a model (``backbone -> [RSP] -> sem_seg_head``, see
``nrd_rsp.analysis.SemanticPath``) with 19 classes on one normalised image, built from a
project config (or ``benchmarks/configs/`` for DeepLab) in a fresh subprocess, so that its peak
memory is its own. Per row: GFLOPs (total, neck+head, head) at ``--flop-size``, inference
parameters, median/p90 latency, images/s and peak memory at ``--time-size``, and every ratio
against DeepLabV3+ OS16 of the same depth and against DeepLabV3 R-101 OS8.

Writes ``decoders.md``, ``decoders.csv`` and ``decoders.png`` (GFLOPs against latency) to
``--output-dir`` (default ``benchmarks/results``). See ``benchmarks/README.md``.
"""

import argparse
import csv
import datetime
import gc
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict, namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS = "configs/Cityscapes-SemanticSegmentation"
COCO = "configs/COCO-PanopticSegmentation"
BENCH = "benchmarks/configs"
NUM_CLASSES = 19

Row = namedtuple("Row", "key label config opts note")
ROWS = OrderedDict(
    (r.key, r)
    for r in [
        Row(
            "semfpn_r50",
            "Semantic FPN R-50",
            f"{CS}/semantic_fpn_R_50_90k_bs16.yaml",
            [],
            "Detectron2 SemSegFPNHead (128 ch) on a 128-ch FPN.",
        ),
        Row(
            "semfpn_r101",
            "Semantic FPN R-101",
            f"{CS}/semantic_fpn_R_50_90k_bs16.yaml",
            ["MODEL.RESNETS.DEPTH", "101"],
            "As Semantic FPN R-50 with MODEL.RESNETS.DEPTH 101.",
        ),
        Row(
            "dlv3_r101_os8",
            "DeepLabV3 R-101 OS8",
            f"{BENCH}/deeplab_v3_R_101_OS8.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 12/24/36.",
        ),
        Row(
            "dlv3_r101_os16",
            "DeepLabV3 R-101 OS16",
            f"{BENCH}/deeplab_v3_R_101_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18.",
        ),
        Row(
            "dlv3p_r50_os16",
            "DeepLabV3+ R-50 OS16",
            f"{BENCH}/deeplab_v3_plus_R_50_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18, res2 decoder.",
        ),
        Row(
            "dlv3p_r101_os16",
            "DeepLabV3+ R-101 OS16",
            f"{BENCH}/deeplab_v3_plus_R_101_OS16.yaml",
            [],
            "Deep stem, multi-grid 1-2-4, ASPP 6/12/18, res2 decoder.",
        ),
        Row(
            "panfpn_sem_r50",
            "Panoptic FPN R-50 (semantic branch)",
            f"{COCO}/panoptic_fpn_R_50_1x.yaml",
            [],
            "Semantic branch of Detectron2's Panoptic FPN: SemSegFPNHead (CONVS_DIM 128, the "
            "config's default) on the 256-ch FPN; 19 classes instead of COCO's 54.",
        ),
        Row(
            "rsp_r50",
            "RSP R-50",
            f"{CS}/rsp_R_50_FPN_90k_bs16.yaml",
            [],
            "RSPSemSegHead on a 128-ch FPN.",
        ),
        Row(
            "rsp_r101",
            "RSP R-101",
            f"{CS}/rsp_R_101_FPN_90k_bs16.yaml",
            [],
            "RSPSemSegHead on a 128-ch FPN.",
        ),
        # The NRD configs' weights are a local file (pretrained/resnet*_v1c.pkl, converted by
        # tools/convert-mmcls-v1c-to-d2.py): random init here, as for the URL weights of the others.
        Row(
            "nrd_r50",
            "NRD R-50",
            f"{CS}/nrd_R_50_84k_bs16.yaml",
            ["MODEL.WEIGHTS", ""],
            "ResNetV1c (stem 32/32/64), output stride 32, NRDHead; "
            "the auxiliary FCN head (training "
            "only) is not part of the inference path.",
        ),
        Row(
            "nrd_r101",
            "NRD R-101",
            f"{CS}/nrd_R_101_84k_bs16.yaml",
            ["MODEL.WEIGHTS", ""],
            "As NRD R-50, ResNetV1c-101.",
        ),
        Row(
            "nrd_rsp_r50",
            "NRD+RSP R-50",
            f"{COCO}/nrd_rsp_panoptic_fpn_R_50_1x.yaml",
            [],
            "Semantic path of nrd_rsp_panoptic_fpn_R_50_1x (RSPPanopticFPN): ResNet-50 -> 256-ch "
            "FPN -> RSP -> NRDHead (controller P5', guidance P2'); "
            "instance branch not run; 19 classes.",
        ),
    ]
)
# Baselines of the ratio columns.
DLV3P_BY_DEPTH = {50: "dlv3p_r50_os16", 101: "dlv3p_r101_os16"}
DLV3_OS8 = "dlv3_r101_os8"

# (csv column, md header, format) of the measured values; ratios are computed for all of them.
METRICS = [
    ("gflops_total", "GFLOPs total", "{:.1f}"),
    ("gflops_neck_head", "GFLOPs neck+head", "{:.1f}"),
    ("gflops_head", "GFLOPs head", "{:.1f}"),
    ("params_total_m", "Params total (M)", "{:.2f}"),
    ("params_neck_head_m", "Params neck+head (M)", "{:.2f}"),
    ("params_head_m", "Params head (M)", "{:.2f}"),
    ("latency_ms_median", "Latency median (ms)", "{:.1f}"),
    ("latency_ms_p90", "Latency p90 (ms)", "{:.1f}"),
    ("images_per_s", "Images/s", "{:.3f}"),
    ("peak_memory_mib", "Peak memory (MiB)", "{:.0f}"),
    ("memory_increase_mib", "Memory increase (MiB)", "{:.0f}"),
]
RATIO_SUFFIXES = (
    ("vs_dlv3p", "DeepLabV3+ OS16 (same depth)"),
    ("vs_dlv3_os8", "DeepLabV3 R-101 OS8"),
)

logger = logging.getLogger("nrd_rsp.benchmarks.decoders")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rows", default="all", help=f"comma-separated keys or 'all': {', '.join(ROWS)}"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--flop-size", nargs=2, type=int, default=[1024, 2048], metavar=("H", "W"))
    p.add_argument(
        "--time-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="timing input size (default: 1024x2048 on CUDA, 256x512 on CPU)",
    )
    p.add_argument(
        "--iters", type=int, default=None, help="timed iterations (default: 20 CUDA, 5 CPU)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up iterations (default: 5 CUDA, 1 CPU)"
    )
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per row (default: torch's default)"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure the rows in this process instead of one subprocess per row (faster start; "
        "the peak RSS is still reset before each row on Linux)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: FLOPs and timing at 64x128, 1 timed iteration, no warm-up",
    )
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--note", default="", help="free text added to the settings of decoders.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one row
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.flop_size = [64, 128]
        args.time_size = args.time_size or [64, 128]
        args.iters = args.iters or 1
        args.warmup = 0 if args.warmup is None else args.warmup
    args.time_size = args.time_size or ([1024, 2048] if cuda else [256, 512])
    args.iters = args.iters or (20 if cuda else 5)
    args.warmup = (5 if cuda else 1) if args.warmup is None else args.warmup
    return args


# --------------------------------------------------------------------------------------------
# One row, in its own process
# --------------------------------------------------------------------------------------------
def _normalised_input(model, height, width, device, seed=0):
    import torch

    from nrd_rsp import analysis as A

    d = model.backbone.size_divisibility or 1
    h, w = -(-height // d) * d, -(-width // d) * d
    img = A.synthetic_image(h, w, torch.Generator().manual_seed(seed)).to(device)
    return ((img - model.pixel_mean) / model.pixel_std)[None]


def measure_row(row, args):
    """Timing (first, so that the peak memory is the inference's), then FLOPs and parameters."""
    import torch

    from nrd_rsp import analysis as A

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = A.setup(
        os.path.join(ROOT, row.config),
        row.opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES)],
        device=args.device,
    )
    device = torch.device(cfg.MODEL.DEVICE)
    model = A.build_model(cfg)
    path = A.semantic_path(model).eval()
    if args.channels_last:
        path = path.to(memory_format=torch.channels_last)

    x = _normalised_input(model, *args.time_size, device)

    def step():
        with torch.no_grad(), A.autocast(device, args.amp):
            path(x)

    baseline = A.reset_peak_memory(device)  # peak over warm-up + timed iterations
    t0 = time.perf_counter()
    times = A.time_steps(step, iters=args.iters, warmup=args.warmup, device=device)
    peak, peak_kind = A.peak_memory(device)
    logger.info(
        f"{row.label}: timed {args.iters} iterations at {args.time_size} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    del x

    t0 = time.perf_counter()
    x = _normalised_input(model, *args.flop_size, device)
    with torch.no_grad():
        analysis = A.flop_count_analysis(path, x)
        total = analysis.total()
    flops = A.component_breakdown(A.module_counts(analysis))
    params, unused = A.inference_parameter_count(path, analysis)
    pparts = A.component_breakdown(params)
    uncounted = {m: dict(ops) for m, ops in A.unsupported_ops_by_module(analysis).items()}
    logger.info(
        f"{row.label}: {total / 1e9:.1f} GFLOPs at {args.flop_size} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return {
        "key": row.key,
        "label": row.label,
        "config": row.config,
        "opts": " ".join(shlex.quote(o) for o in row.opts),
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "gflops_total": total / 1e9,
        "gflops_backbone": flops["backbone"] / 1e9,
        "gflops_neck": flops["neck"] / 1e9,
        "gflops_neck_head": (flops["neck"] + flops["head"] + flops["other"]) / 1e9,
        "gflops_head": flops["head"] / 1e9,
        "params_total_m": params[""] / 1e6,
        "params_neck_head_m": (pparts["neck"] + pparts["head"] + pparts["other"]) / 1e6,
        "params_head_m": pparts["head"] / 1e6,
        "params_train_only_m": unused / 1e6,
        **A.latency_stats(times, 1),
        "peak_memory_mib": peak,
        "memory_increase_mib": peak - baseline,
        "peak_memory_kind": peak_kind,
        "uncounted_ops": uncounted,
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def run_row_subprocess(row, args, argv):
    """Measure ``row`` in a fresh Python process; returns its result, or None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            *argv,
            "--worker",
            row.key,
            "--worker-out",
            out,
        ]
        r = subprocess.run(cmd, cwd=ROOT)
        if r.returncode != 0 or not os.path.isfile(out):
            logger.error(f"{row.label} failed (exit status {r.returncode}); see its log above.")
            return None
        with open(out) as f:
            return json.load(f)


def add_ratios(results):
    """Adds ``<metric>_vs_dlv3p`` / ``<metric>_vs_dlv3_os8`` (value / baseline value, None when
    the baseline row was not run) and the baseline keys to every result, in place."""
    by_key = {r["key"]: r for r in results}
    for r in results:
        bases = {
            "vs_dlv3p": DLV3P_BY_DEPTH.get(r["depth"], DLV3P_BY_DEPTH[101]),
            "vs_dlv3_os8": DLV3_OS8,
        }
        r["baseline_vs_dlv3p"] = bases["vs_dlv3p"]
        r["baseline_vs_dlv3_os8"] = bases["vs_dlv3_os8"]
        for suffix, base_key in bases.items():
            base = by_key.get(base_key)
            for metric, _, _ in METRICS:
                value = None
                if base is not None and base[metric]:
                    value = r[metric] / base[metric]
                r[f"{metric}_{suffix}"] = value
    return results


def _fmt(value, fmt="{:.2f}"):
    return "n/a" if value is None else fmt.format(value)


def environment(args):
    import detectron2
    import torch

    from nrd_rsp import analysis as A

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    return {
        "device": A.device_description(device),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "cuda_available": torch.cuda.is_available(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def write_csv(path, results):
    columns = ["key", "label", "config", "opts", "depth", "gflops_backbone", "gflops_neck"]
    columns += [m for m, _, _ in METRICS] + [
        "params_train_only_m",
        "iters_per_s",
        "peak_memory_kind",
    ]
    columns += ["baseline_vs_dlv3p", "baseline_vs_dlv3_os8"]
    columns += [f"{m}_{s}" for s, _ in RATIO_SUFFIXES for m, _, _ in METRICS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def write_plot(path, results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {
        "semfpn": "tab:blue",
        "dlv3": "tab:red",
        "dlv3p": "tab:orange",
        "panfpn": "tab:purple",
        "rsp": "tab:green",
        "nrd": "tab:brown",
        "nrd_rsp": "tab:olive",
    }
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, metric, title in (
        (axes[0], "gflops_total", "whole model"),
        (axes[1], "gflops_neck_head", "decoder = neck + head"),
    ):
        for r in results:
            family = "nrd_rsp" if r["key"].startswith("nrd_rsp") else r["key"].split("_")[0]
            ax.scatter(
                r[metric],
                r["latency_ms_median"],
                s=55,
                color=families.get(family, "tab:gray"),
                marker="D" if "os8" in r["key"] else {50: "o", 101: "s"}.get(r["depth"], "^"),
                label=r["label"],
                edgecolors="black",
                linewidths=0.5,
            )
        ax.set_xlabel(f"GFLOPs at {args.flop_size[0]}x{args.flop_size[1]} ({title})")
        ax.set_ylabel(f"median latency (ms) at {args.time_size[0]}x{args.time_size[1]}, batch 1")
        ax.grid(alpha=0.3)
    if results:
        axes[1].legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8,
            title="o R-50, \u25a1 R-101, \u25c7 R-101 OS8",
        )
    fig.suptitle(
        f"Semantic decoders, {NUM_CLASSES} classes: FLOPs vs latency on {results[0]['device']}"
        if results and "device" in results[0]
        else "Semantic decoders: FLOPs vs latency",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(path, results, skipped, env, args, argv):
    cuda = args.device.startswith("cuda")
    lines = [
        "# Semantic decoders side by side",
        "",
        f"Generated by `python benchmarks/decoders.py {' '.join(argv)}`".rstrip()
        + f" on {env['date']}.",
        "",
    ]
    if args.quick:
        lines += ["**Quick smoke run (--quick): tiny sizes, not results.**", ""]
    lines += [
        f"* Device: {env['device']}; torch {env['torch']}, detectron2 {env['detectron2']}.",
    ]
    if not cuda:
        lines.append(
            "* **No GPU was used for this run** ("
            + (
                "there is no GPU in this environment"
                if not env["cuda_available"]
                else "CPU run requested"
            )
            + "): latency, throughput and memory are CPU numbers. For GPU numbers run "
            "`python benchmarks/decoders.py --device cuda` (FLOPs and timing at 1024x2048)."
        )
        lines.append(
            f"* CPU load average (1 min) when the run started: {env['load_average']:.1f} on "
            f"{env['cpu_count']} cores; other processes share the machine, "
            "so CPU latencies are indicative."
        )
    if args.note:
        lines.append(f"* Note: {args.note}")
    lines += [
        f"* FLOPs and parameters: {args.flop_size[0]}x{args.flop_size[1]} input, "
        f"{NUM_CLASSES} classes, "
        "batch 1, inference mode.",
        f"* Timing: {args.time_size[0]}x{args.time_size[1]} input"
        + (
            ""
            if args.time_size == args.flop_size
            else " (reduced size: FLOPs above are at the full size)"
        )
        + f", batch 1, {args.warmup} warm-up + {args.iters} timed iterations, "
        "device synchronised around "
        f"each; AMP {args.amp}, channels-last {args.channels_last}"
        + (f", {args.threads} CPU thread(s)" if args.threads and not cuda else "")
        + ".",
        "* Images/s = 1 / median latency (batch 1).",
        "* Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` over warm-up and timed iterations "
            "(weights included); "
            if cuda
            else "peak RSS of the process over the row's warm-up and timed iterations "
            "(`resource.ru_maxrss`, reset before them via `/proc/self/clear_refs`; "
            "includes Python, libraries "
            "and weights; "
            + ("rows measured in one process" if args.in_process else "one process per row")
            + "); "
        )
        + "memory increase = peak minus the memory in use before the first iteration (activations "
        "and workspace).",
        "",
        "## What is measured",
        "",
        "Each row runs the *semantic path* of a model: normalised image -> backbone -> [RSP] -> "
        "semantic head -> logits at input resolution (`nrd_rsp.analysis.SemanticPath`; no "
        "pre/post-processing, no instance branch).",
        "",
        "* **backbone**: the ResNet (`backbone.bottom_up` of an FPN model, else `backbone`).",
        "* **neck**: FPN (`backbone.fpn_*`, `backbone.top_block` "
        "and the top-down pathway run by the FPN "
        "module) and RSP (`rsp`, `sem_seg_head.rsp`).",
        "* **head**: `sem_seg_head` without its RSP "
        "(ASPP, decoders, NRD's controller, guidance and "
        "dynamic MLPs, the final upsampling).",
        "* **neck+head** (the decoder) = everything after the backbone = total - backbone.",
        "* **GFLOPs** follow fvcore/Detectron2: one fused multiply-add = one flop; "
        "element-wise ops are "
        "not counted (Detectron2's `FlopCountAnalysis` handles).",
        "* **Params**: parameters of the modules that run at inference; training-only modules "
        "(NRD's auxiliary FCN head) are excluded and listed below.",
        "* **Ratios** are value / baseline value: DeepLabV3+ OS16 of the same depth (R-50 rows vs "
        "DeepLabV3+ R-50, R-101 rows vs DeepLabV3+ R-101) and DeepLabV3 R-101 OS8.",
        "",
        "## Results",
        "",
    ]
    headers = ["Model"] + [h for _, h, _ in METRICS]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * len(METRICS)) + "|")
    for r in results:
        lines.append(
            "| " + " | ".join([r["label"]] + [_fmt(r[m], f) for m, _, f in METRICS]) + " |"
        )
    for suffix, title in RATIO_SUFFIXES:
        lines += ["", f"### Ratios vs {title}", ""]
        lines.append("| Model | Baseline | " + " | ".join(h for _, h, _ in METRICS) + " |")
        lines.append("|" + "|".join([":---", ":---"] + ["---:"] * len(METRICS)) + "|")
        for r in results:
            base = ROWS[r[f"baseline_{suffix}"]].label
            lines.append(
                "| "
                + " | ".join([r["label"], base] + [_fmt(r[f"{m}_{suffix}"]) for m, _, _ in METRICS])
                + " |"
            )
    lines += ["", "## Rows", ""]
    lines.append(
        "| Model | Config | Backbone GFLOPs | Neck GFLOPs | Train-only params (M) | Notes |"
    )
    lines.append("|:---|:---|---:|---:|---:|:---|")
    for r in results:
        config = f"`{r['config']}`" + (f" `{r['opts']}`" if r["opts"] else "")
        lines.append(
            f"| {r['label']} | {config} | {r['gflops_backbone']:.1f} | {r['gflops_neck']:.1f} | "
            f"{r['params_train_only_m']:.2f} | {ROWS[r['key']].note} |"
        )
    uncounted = {r["label"]: r["uncounted_ops"] for r in results if r["uncounted_ops"]}
    lines += [
        "",
        "Operators fvcore could not count: "
        + (
            "none."
            if not uncounted
            else "; ".join(
                f"{k}: {', '.join(sorted({op for ops in v.values() for op in ops}))}"
                for k, v in uncounted.items()
            )
        ),
    ]
    if skipped:
        lines += ["", "## Rows not measured", ""]
        lines += [f"* {ROWS[k].label} (`{ROWS[k].config}`): {why}" for k, why in skipped]
    lines += ["", "![GFLOPs against latency](decoders.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    keys = (
        list(ROWS) if args.rows == "all" else [k.strip() for k in args.rows.split(",") if k.strip()]
    )
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        print(f"ERROR: unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    logging.getLogger("nrd_rsp.analysis").setLevel(logging.INFO)
    import nrd_rsp  # noqa: F401  (registers our heads and meta-architectures)

    if args.worker:
        res = measure_row(ROWS[args.worker], args)
        with open(args.worker_out, "w") as f:
            json.dump(res, f)
        return 0

    from nrd_rsp.analysis import autocast, resolve_device
    from nrd_rsp.errors import ConfigError

    try:  # fail before measuring anything
        autocast(resolve_device(args.device), args.amp)
    except ConfigError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    env = environment(args)
    results, skipped = [], []
    for i, key in enumerate(keys, 1):
        row = ROWS[key]
        if not os.path.isfile(os.path.join(ROOT, row.config)):
            logger.warning(
                f"[{i}/{len(keys)}] {row.label}: config {row.config} does not exist, skipped"
            )
            skipped.append((key, "config file missing"))
            continue
        logger.info(f"[{i}/{len(keys)}] {row.label} ({row.config})")
        if args.in_process:
            res = measure_row(row, args)
            gc.collect()
        else:
            res = run_row_subprocess(row, args, argv)
        if res is None:
            skipped.append((key, "measurement failed (see the log of the run)"))
            continue
        res["device"] = env["device"]
        results.append(res)
    add_ratios(results)
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(os.path.join(args.output_dir, "decoders.csv"), results)
    write_plot(os.path.join(args.output_dir, "decoders.png"), results, args)
    write_markdown(os.path.join(args.output_dir, "decoders.md"), results, skipped, env, args, argv)
    logger.info(f"Wrote decoders.md, decoders.csv and decoders.png to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
