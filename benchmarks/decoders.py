#!/usr/bin/env python
"""Side-by-side cost of the semantic decoders, as the RSP and NRD papers compare them.

    python benchmarks/decoders.py                      # CPU: FLOPs at 1024x2048, timing at 256x512
    python benchmarks/decoders.py --device cuda        # GPU: FLOPs and timing at 1024x2048
    python benchmarks/decoders.py --threads 1 --time-size 512 1024 --iters 10 --warmup 1
    python benchmarks/decoders.py --rows nrd_r50,dlv3p_r50_os16 --quick --output-dir /tmp/b

Every row is the semantic path of a model (``backbone -> [RSP] -> sem_seg_head``, see
``nrd_rsp.analysis.SemanticPath``) with 19 classes on one normalised image, built from a
project config (or ``benchmarks/configs/`` for DeepLab) in its own persistent worker process,
so that its peak memory is its own (``--in-process``: all rows in this process).

Timing runs in interleaved rounds: all rows' models stay alive and every round runs one step of
every row (round robin, the starting row rotating from round to round), so that the load of a
shared machine changes both sides of a ratio alike. Per row: the median, p90 and interquartile
range of its latency over the rounds, and the per-round latency ratio to each baseline (median
and interquartile range of ``row[r] / baseline[r]``). Then, row by row, GFLOPs (total,
neck+head, head) at ``--flop-size`` and inference parameters. Every metric is also compared as
value / baseline value against Semantic FPN and DeepLabV3+ OS16 of the same depth and against
DeepLabV3 R-101 OS8.

Writes ``decoders.md``, ``decoders.csv``, ``decoders.png`` (GFLOPs against latency) and
``decoders.json`` (raw per-round latencies and results; ``--render`` rewrites the others from
it) to ``--output-dir`` (default ``benchmarks/results``). See ``benchmarks/README.md``.
"""

import argparse
import csv
import datetime
import json
import logging
import multiprocessing
import os
import shlex
import sys
import time
import traceback
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
        "--iters",
        "--rounds",
        dest="iters",
        type=int,
        default=None,
        help="timed rounds, each running every row once (default: 20 CUDA, 5 CPU)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed warm-up rounds (default: 5 CUDA, 1 CPU)",
    )
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per row (default: torch's default)"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="keep all rows' models in this process instead of one worker process per row "
        "(faster start, less memory; on CPU the peak RSS then includes the other rows' models)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: FLOPs and timing at 64x128, 1 timed iteration, no warm-up",
    )
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument(
        "--skip-flops",
        action="store_true",
        help="time only: no FLOPs or parameter counting (n/a in the tables, no plot)",
    )
    p.add_argument("--note", default="", help="free text added to the settings of decoders.md")
    p.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: write decoders.{md,csv,png} again from the raw results "
        "(decoders.json) of the last run in --output-dir (with --note: replaces the run's note)",
    )
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
# One row: its model, a timed step, then FLOPs and parameters
# --------------------------------------------------------------------------------------------
def _normalised_input(model, height, width, device, seed=0):
    import torch

    from nrd_rsp import analysis as A

    d = model.backbone.size_divisibility or 1
    h, w = -(-height // d) * d, -(-width // d) * d
    img = A.synthetic_image(h, w, torch.Generator().manual_seed(seed)).to(device)
    return ((img - model.pixel_mean) / model.pixel_std)[None]


class RowRunner:
    """The semantic path of one row, alive for the whole run: :meth:`step` runs and times one
    inference (for the interleaved rounds), :meth:`finish` counts FLOPs and parameters."""

    def __init__(self, row, args):
        import torch

        from nrd_rsp import analysis as A
        from nrd_rsp.analysis.speed import timed

        if args.threads:
            torch.set_num_threads(args.threads)
        self.row, self.args = row, args
        self.cfg = A.setup(
            os.path.join(ROOT, row.config),
            row.opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES)],
            device=args.device,
        )
        self.device = device = torch.device(self.cfg.MODEL.DEVICE)
        self.model = A.build_model(self.cfg)
        path = self.path = A.semantic_path(self.model).eval()
        if args.channels_last:
            path = self.path = path.to(memory_format=torch.channels_last)
        x = self.x = _normalised_input(self.model, *args.time_size, device)

        def step():
            with torch.no_grad(), A.autocast(device, args.amp):
                path(x)

        self._timed = timed(step, device)
        self.peak, self.increase, self.peak_kind, self.steps = 0.0, 0.0, "", 0

    def step(self):
        """One timed inference (seconds). Peak memory: from a reset just before the step (CUDA
        allocator; CPU peak RSS of the process), the maximum over the row's steps."""
        from nrd_rsp import analysis as A

        baseline = A.reset_peak_memory(self.device)
        seconds = self._timed()
        peak, self.peak_kind = A.peak_memory(self.device)
        self.peak = max(self.peak, peak)
        self.increase = max(self.increase, peak - baseline)
        self.steps += 1
        return seconds

    def finish(self):
        """FLOPs and parameters at ``--flop-size`` and the row's memory; frees the model."""
        import torch

        from nrd_rsp import analysis as A

        row, args, cfg, path = self.row, self.args, self.cfg, self.path
        self.x = None
        result = {
            "key": row.key,
            "label": row.label,
            "config": row.config,
            "opts": " ".join(shlex.quote(o) for o in row.opts),
            "depth": cfg.MODEL.RESNETS.DEPTH,
            "peak_memory_mib": self.peak,
            "memory_increase_mib": self.increase,
            "peak_memory_kind": self.peak_kind,
            "uncounted_ops": {},
        }
        if args.skip_flops:
            self.model = self.path = None
            for key in (
                "gflops_total gflops_backbone gflops_neck gflops_neck_head gflops_head "
                "params_total_m params_neck_head_m params_head_m params_train_only_m"
            ).split():
                result[key] = None
            return result
        t0 = time.perf_counter()
        x = _normalised_input(self.model, *args.flop_size, self.device)
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
        self.model = self.path = None
        return {
            **result,
            "gflops_total": total / 1e9,
            "gflops_backbone": flops["backbone"] / 1e9,
            "gflops_neck": flops["neck"] / 1e9,
            "gflops_neck_head": (flops["neck"] + flops["head"] + flops["other"]) / 1e9,
            "gflops_head": flops["head"] / 1e9,
            "params_total_m": params[""] / 1e6,
            "params_neck_head_m": (pparts["neck"] + pparts["head"] + pparts["other"]) / 1e6,
            "params_head_m": pparts["head"] / 1e6,
            "params_train_only_m": unused / 1e6,
            "uncounted_ops": uncounted,
        }


# --------------------------------------------------------------------------------------------
# One persistent worker process per row
# --------------------------------------------------------------------------------------------
def _setup_logging():
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    logging.getLogger("nrd_rsp.analysis").setLevel(logging.INFO)


def _worker_main(conn, key, argv):
    """Worker process: builds the row, then answers "step" (latency) and "finish" (results)."""
    _setup_logging()
    try:
        import nrd_rsp  # noqa: F401

        runner = RowRunner(ROWS[key], parse_args(argv))
        conn.send(("ok", None))
        while True:
            command = conn.recv()
            if command == "step":
                conn.send(("ok", runner.step()))
            elif command == "finish":
                conn.send(("ok", runner.finish()))
                return
            else:
                return
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class WorkerRow:
    """A row measured in its own process, with the interface of :class:`RowRunner`."""

    def __init__(self, row, argv):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        self.row = row
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, row.key, argv), daemon=True)
        self.process.start()
        child.close()

    def _call(self, command=None):
        if command is not None:
            self.conn.send(command)
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "error", f"worker exited with status {self.process.exitcode}"
        if status != "ok":
            raise RuntimeError(f"{self.row.label}: {value}")
        return value

    def ready(self):
        return self._call()

    def step(self):
        return self._call("step")

    def finish(self):
        try:
            return self._call("finish")
        finally:
            self.close()

    def close(self):
        self.conn.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def run_rounds(runners, args):
    """Interleaved timing of ``{key: runner}`` (runner.step() -> seconds): ``--warmup`` untimed
    rounds, then ``--iters`` timed rounds; returns ``{key: [seconds per round]}``."""
    from nrd_rsp.analysis.speed import interleaved_rounds

    t0 = time.perf_counter()

    def progress(r, this_round):
        logger.info(
            f"round {r + 1}/{args.iters} ({time.perf_counter() - t0:.0f}s): "
            + ", ".join(f"{k} {1e3 * t:.0f}" for k, t in this_round.items())
            + " ms"
        )

    return interleaved_rounds(
        {k: r.step for k, r in runners.items()},
        rounds=args.iters,
        warmup=args.warmup,
        on_round=progress,
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


def _latency_stats(times):
    from nrd_rsp.analysis import latency_stats

    return latency_stats(times, 1)


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
    lines += [
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
    lines += [
        "",
        "### Latency ratios per round",
        "",
        "Median (q25-q75) over the rounds of row latency / baseline latency in the same round.",
        "",
        "| Model | Latency median (ms) | Latency IQR (ms) | "
        + " | ".join(f"vs {title}" for _, title in RATIO_SUFFIXES)
        + " |",
        "|:---|---:|---:|" + "---:|" * len(RATIO_SUFFIXES),
    ]
    for r in results:
        cells = [
            r["label"],
            _fmt(r["latency_ms_median"], "{:.1f}"),
            _fmt(r["latency_ms_iqr"], "{:.1f}"),
        ]
        for suffix, _ in RATIO_SUFFIXES:
            median = r.get(f"latency_ratio_{suffix}_median")
            cells.append(
                "n/a"
                if median is None
                else f"{median:.2f} ({r[f'latency_ratio_{suffix}_q25']:.2f}-"
                f"{r[f'latency_ratio_{suffix}_q75']:.2f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
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
            f"| {r['label']} | {config} | {_fmt(r['gflops_backbone'], '{:.1f}')} | "
            f"{_fmt(r['gflops_neck'], '{:.1f}')} | "
            f"{_fmt(r['params_train_only_m'])} | {ROWS[r['key']].note} |"
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
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:  # tables and plot again from the raw results of an earlier run
        with open(os.path.join(args.output_dir, "decoders.json")) as f:
            raw = json.load(f)
        _setup_logging()
        argv = raw["argv"]
        run_args = parse_args(argv)
        run_args.note = args.note or run_args.note  # a note may be added when rendering
        write_outputs(
            raw["results"],
            raw["latency_s_rounds"],
            [tuple(s) for s in raw["skipped"]],
            raw["env"],
            run_args,
            argv,
        )
        return 0
    keys = (
        list(ROWS) if args.rows == "all" else [k.strip() for k in args.rows.split(",") if k.strip()]
    )
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        print(f"ERROR: unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    _setup_logging()
    import nrd_rsp  # noqa: F401  (registers our heads and meta-architectures)
    from nrd_rsp.analysis import autocast, resolve_device
    from nrd_rsp.errors import ConfigError

    try:  # fail before measuring anything
        autocast(resolve_device(args.device), args.amp)
        if args.iters < 1 or args.warmup < 0:
            raise ConfigError(
                f"Need --iters >= 1 and --warmup >= 0, got {args.iters}, {args.warmup}."
            )
    except ConfigError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    env = environment(args)
    skipped, runners = [], OrderedDict()
    for key in keys:
        row = ROWS[key]
        if not os.path.isfile(os.path.join(ROOT, row.config)):
            logger.warning(f"{row.label}: config {row.config} does not exist, skipped")
            skipped.append((key, "config file missing"))
            continue
        runners[key] = RowRunner(row, args) if args.in_process else WorkerRow(row, argv)
    if not args.in_process:  # the workers build their models in parallel
        for key in list(runners):
            try:
                runners[key].ready()
            except RuntimeError as e:
                logger.error(f"{e}")
                runners.pop(key).close()
                skipped.append((key, "building the model failed (see the log of the run)"))
    logger.info(
        f"{len(runners)} rows alive; {args.warmup} warm-up + {args.iters} timed rounds at "
        f"{args.time_size[0]}x{args.time_size[1]}"
    )
    try:
        times = run_rounds(runners, args)
        results = []
        for key, runner in runners.items():  # FLOPs and parameters, one row at a time
            res = runner.finish()
            res.update(_latency_stats(times[key]))
            res["rounds"] = len(times[key])
            res["device"] = env["device"]
            results.append(res)
    finally:
        for runner in runners.values():
            if isinstance(runner, WorkerRow):
                runner.close()
    if hasattr(os, "getloadavg"):
        env["load_average_end"] = os.getloadavg()[0]
    add_round_ratios(results, times)
    add_ratios(results)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "decoders.json"), "w") as f:
        json.dump(
            {
                "argv": argv,
                "env": env,
                "skipped": skipped,
                "latency_s_rounds": times,
                "results": results,
            },
            f,
            indent=1,
        )
    write_outputs(results, times, skipped, env, args, argv)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
