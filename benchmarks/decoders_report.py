"""Reporting of benchmarks/decoders.py: the ratio columns (per-round latency ratios and value /
baseline value), ``decoders.csv``, ``decoders.png`` (GFLOPs against latency) and
``decoders.md``, from the rows' results (as saved in ``decoders.json``)."""

import csv
import logging
import os

from common import fmt as _fmt
from common import markdown_table
from decoders_runner import NUM_CLASSES, ROWS

logger = logging.getLogger("nrd_rsp.benchmarks.decoders")

# Baselines of the ratio columns.
SEMFPN_BY_DEPTH = {50: "semfpn_r50", 101: "semfpn_r101"}
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
    ("vs_semfpn", "Semantic FPN (same depth)"),
    ("vs_dlv3p", "DeepLabV3+ OS16 (same depth)"),
    ("vs_dlv3_os8", "DeepLabV3 R-101 OS8"),
)


def _baselines(result):
    return {
        "vs_semfpn": SEMFPN_BY_DEPTH.get(result["depth"], SEMFPN_BY_DEPTH[101]),
        "vs_dlv3p": DLV3P_BY_DEPTH.get(result["depth"], DLV3P_BY_DEPTH[101]),
        "vs_dlv3_os8": DLV3_OS8,
    }


def add_round_ratios(results, times):
    """Adds ``latency_ratio_<suffix>_{median,q25,q75}``: the median and quartiles over the
    rounds of ``latency[r] / baseline latency[r]`` (None when the baseline was not run)."""
    from nrd_rsp.analysis.speed import ratio_stats

    for r in results:
        for suffix, base_key in _baselines(r).items():
            stats = ratio_stats(times[r["key"]], times[base_key]) if base_key in times else {}
            for q in ("median", "q25", "q75"):
                r[f"latency_ratio_{suffix}_{q}"] = stats.get(f"ratio_{q}")
    return results


def add_ratios(results):
    """Adds ``<metric>_<suffix>`` for every suffix of ``RATIO_SUFFIXES`` (value / baseline
    value, None when the baseline row was not run) and the baseline keys to every result, in
    place."""
    by_key = {r["key"]: r for r in results}
    for r in results:
        bases = _baselines(r)
        for suffix, base_key in bases.items():
            r[f"baseline_{suffix}"] = base_key
        for suffix, base_key in bases.items():
            base = by_key.get(base_key)
            for metric, _, _ in METRICS:
                value = None
                if base is not None and base[metric] and r[metric] is not None:
                    value = r[metric] / base[metric]
                r[f"{metric}_{suffix}"] = value
    return results


def write_csv(path, results):
    columns = ["key", "label", "config", "opts", "depth", "gflops_backbone", "gflops_neck"]
    columns += [m for m, _, _ in METRICS] + [
        "params_train_only_m",
        "latency_ms_q25",
        "latency_ms_q75",
        "latency_ms_iqr",
        "rounds",
        "iters_per_s",
        "peak_memory_kind",
    ]
    columns += [f"baseline_{s}" for s, _ in RATIO_SUFFIXES]
    columns += [
        f"latency_ratio_{s}_{q}" for s, _ in RATIO_SUFFIXES for q in ("median", "q25", "q75")
    ]
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


def _settings(env, args, argv):
    """Title, command, device and the CPU's load."""
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
            f"* CPU load average (1 min) when the run started: {env['load_average']:.1f}"
            + (
                f", when the measurements ended: {env['load_average_end']:.1f}"
                if "load_average_end" in env
                else ""
            )
            + f", on {env['cpu_count']} cores; other processes share the machine, so absolute "
            "CPU latencies are indicative; the per-round ratios are the numbers to compare."
        )
    if args.note:
        lines.append(f"* Note: {args.note}")
    return lines


def _method(args):
    """How FLOPs, latency and memory were measured."""
    cuda = args.device.startswith("cuda")
    return [
        (
            "* FLOPs and parameters: not counted (`--skip-flops`)."
            if args.skip_flops
            else f"* FLOPs and parameters: {args.flop_size[0]}x{args.flop_size[1]} input, "
            f"{NUM_CLASSES} classes, batch 1, inference mode."
        ),
        f"* Timing: {args.time_size[0]}x{args.time_size[1]} input"
        + (
            ""
            if args.time_size == args.flop_size
            else " (reduced size: FLOPs above are at the full size)"
        )
        + f", batch 1, AMP {args.amp}, channels-last {args.channels_last}"
        + (f", {args.threads} CPU thread(s)" if args.threads and not cuda else "")
        + f"; {args.warmup} warm-up + {args.iters} timed rounds, **interleaved**: all rows' models "
        "stay alive ("
        + ("in one process" if args.in_process else "one persistent worker process per row")
        + ") and each round runs one inference of every row, round robin, the starting row "
        "rotating from round to round; the device is synchronised around each inference.",
        "* Latency median, p90 and IQR (interquartile range q25-q75) are over the rounds. "
        "**Per-round ratios** (below) divide a row's latency by its baseline's latency of the "
        "same round, then take the median and IQR over the rounds: a change of load between "
        "rounds hits both sides of each ratio. Images/s = 1 / median latency (batch 1).",
        "* Peak memory: the maximum over the row's warm-up and timed inferences, each measured "
        "from a reset just before it: "
        + (
            "`torch.cuda.max_memory_allocated` (weights included); "
            if cuda
            else "peak RSS of the process (`resource.ru_maxrss`, reset via "
            "`/proc/self/clear_refs`; includes Python, libraries and weights); "
        )
        + (
            "all rows share one process (`--in-process`), so the peak includes the other rows' "
            "models; "
            if args.in_process
            else "one worker process per row, so the peak is the row's own; "
        )
        + "memory increase = the largest rise over the memory in use before an inference "
        "(activations and workspace).",
        "",
    ]


WHAT_IS_MEASURED = [
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
    "* **Ratios** are value / baseline value: Semantic FPN and DeepLabV3+ OS16 of the same "
    "depth (R-50 rows vs R-50, R-101 rows vs R-101) and DeepLabV3 R-101 OS8. The latency "
    "ratios to trust on a shared machine are the per-round ones; the ratio tables divide "
    "medians.",
    "",
]


def _round_ratio_cell(r, suffix):
    median = r.get(f"latency_ratio_{suffix}_median")
    if median is None:
        return "n/a"
    return (
        f"{median:.2f} ({r[f'latency_ratio_{suffix}_q25']:.2f}-"
        f"{r[f'latency_ratio_{suffix}_q75']:.2f})"
    )


def _results_tables(results):
    """The metrics, the per-round latency ratios and the ratio tables, one per baseline."""
    lines = ["## Results", ""]
    lines += markdown_table(
        ["Model"] + [h for _, h, _ in METRICS],
        [[r["label"]] + [_fmt(r[m], f) for m, _, f in METRICS] for r in results],
        "l" + "r" * len(METRICS),
    )
    lines += [
        "",
        "### Latency ratios per round",
        "",
        "Median (q25-q75) over the rounds of row latency / baseline latency in the same round.",
        "",
    ]
    lines += markdown_table(
        ["Model", "Latency median (ms)", "Latency IQR (ms)"]
        + [f"vs {title}" for _, title in RATIO_SUFFIXES],
        [
            [
                r["label"],
                _fmt(r["latency_ms_median"], "{:.1f}"),
                _fmt(r["latency_ms_iqr"], "{:.1f}"),
            ]
            + [_round_ratio_cell(r, suffix) for suffix, _ in RATIO_SUFFIXES]
            for r in results
        ],
        "lrr" + "r" * len(RATIO_SUFFIXES),
    )
    for suffix, title in RATIO_SUFFIXES:
        lines += ["", f"### Ratios vs {title}", ""]
        lines += markdown_table(
            ["Model", "Baseline"] + [h for _, h, _ in METRICS],
            [
                [r["label"], ROWS[r[f"baseline_{suffix}"]].label]
                + [_fmt(r[f"{m}_{suffix}"]) for m, _, _ in METRICS]
                for r in results
            ],
            "ll" + "r" * len(METRICS),
        )
    return lines


def _rows_section(results, skipped, args):
    """Config and notes of every row, the operators fvcore could not count, the rows not
    measured and the plot."""
    lines = ["", "## Rows", ""]
    rows = []
    for r in results:
        config = f"`{r['config']}`" + (f" `{r['opts']}`" if r["opts"] else "")
        rows.append(
            [
                r["label"],
                config,
                _fmt(r["gflops_backbone"], "{:.1f}"),
                _fmt(r["gflops_neck"], "{:.1f}"),
                _fmt(r["params_train_only_m"]),
                ROWS[r["key"]].note,
            ]
        )
    lines += markdown_table(
        ["Model", "Config", "Backbone GFLOPs", "Neck GFLOPs", "Train-only params (M)", "Notes"],
        rows,
        "llrrrl",
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
    if not args.skip_flops:
        lines += ["", "![GFLOPs against latency](decoders.png)", ""]
    return lines


def write_markdown(path, results, skipped, env, args, argv):
    lines = _settings(env, args, argv) + _method(args) + WHAT_IS_MEASURED
    lines += _results_tables(results) + _rows_section(results, skipped, args)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_outputs(results, times, skipped, env, args, argv):
    add_round_ratios(results, times)
    add_ratios(results)
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(os.path.join(args.output_dir, "decoders.csv"), results)
    if not args.skip_flops:
        write_plot(os.path.join(args.output_dir, "decoders.png"), results, args)
    write_markdown(os.path.join(args.output_dir, "decoders.md"), results, skipped, env, args, argv)
    written = "decoders.md, decoders.csv" + ("" if args.skip_flops else ", decoders.png")
    logger.info(f"Wrote {written} and decoders.json (raw results) to {args.output_dir}")
