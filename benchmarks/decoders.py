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

This script runs the benchmark; the rows and how one row is measured are in
``decoders_runner.py``, the ratio columns, tables and plot in ``decoders_report.py``.
"""

import argparse
import json
import logging
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common, decoders_* (by path)
from common import ROOT, environment  # noqa: E402
from decoders_report import add_ratios, add_round_ratios, write_outputs  # noqa: E402, F401
from decoders_runner import ROWS, RowRunner, WorkerRow, run_rounds  # noqa: E402, F401

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


def _setup_logging():
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    logging.getLogger("nrd_rsp.analysis").setLevel(logging.INFO)


def render(args):
    """Tables and plot again from the raw results (``decoders.json``) in ``--output-dir``, with
    the settings of the run that measured them (and ``--note``, if given)."""
    with open(os.path.join(args.output_dir, "decoders.json")) as f:
        raw = json.load(f)
    argv = raw["argv"]
    run_args = parse_args(argv)
    run_args.note = args.note or run_args.note  # a note may be added when rendering
    run_args.output_dir = args.output_dir  # next to the JSON they come from
    skipped = [tuple(s) for s in raw["skipped"]]
    write_outputs(raw["results"], raw["latency_s_rounds"], skipped, raw["env"], run_args, argv)
    return 0


def _check(args):
    """Fail before measuring anything: ConfigError for an unusable device, AMP or rounds."""
    from nrd_rsp.analysis import autocast, resolve_device
    from nrd_rsp.errors import ConfigError

    autocast(resolve_device(args.device), args.amp)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError(f"Need --iters >= 1 and --warmup >= 0, got {args.iters}, {args.warmup}.")


def start_rows(keys, args, skipped):
    """``{key: RowRunner or WorkerRow}`` of the rows whose config exists and whose model could
    be built; appends ``(key, why)`` to ``skipped`` for the others."""
    runners = OrderedDict()
    for key in keys:
        row = ROWS[key]
        if not os.path.isfile(os.path.join(ROOT, row.config)):
            logger.warning(f"{row.label}: config {row.config} does not exist, skipped")
            skipped.append((key, "config file missing"))
            continue
        runners[key] = RowRunner(row, args) if args.in_process else WorkerRow(row, args)
    if not args.in_process:  # the workers build their models in parallel
        for key in list(runners):
            try:
                runners[key].ready()
            except RuntimeError as e:
                logger.error(f"{e}")
                runners.pop(key).close()
                skipped.append((key, "building the model failed (see the log of the run)"))
    return runners


def measure(runners, args, env):
    """Interleaved timing of all rows, then FLOPs and parameters one row at a time; returns
    (results, ``{key: [seconds per round]}``). Closes the workers."""
    from nrd_rsp.analysis import latency_stats

    logger.info(
        f"{len(runners)} rows alive; {args.warmup} warm-up + {args.iters} timed rounds at "
        f"{args.time_size[0]}x{args.time_size[1]}"
    )
    try:
        times = run_rounds(runners, args)
        results = []
        for key, runner in runners.items():  # FLOPs and parameters, one row at a time
            res = runner.finish()
            res.update(latency_stats(times[key], 1))
            res["rounds"] = len(times[key])
            res["device"] = env["device"]
            results.append(res)
    finally:
        for runner in runners.values():
            if isinstance(runner, WorkerRow):
                runner.close()
    return results, times


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:  # tables and plot again from the raw results of an earlier run
        _setup_logging()
        return render(args)
    keys = (
        list(ROWS) if args.rows == "all" else [k.strip() for k in args.rows.split(",") if k.strip()]
    )
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        print(f"ERROR: unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    _setup_logging()
    import nrd_rsp  # noqa: F401  (registers our heads and meta-architectures)
    from nrd_rsp.errors import ConfigError

    try:
        _check(args)
    except ConfigError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # before the stamp, whose device names the threads
    env = environment(
        "device", "torch", "detectron2", "cuda_available", "load_average", "cpu_count", "date",
        device=args.device,
    )  # fmt: skip
    skipped = []
    results, times = measure(start_rows(keys, args, skipped), args, env)
    if hasattr(os, "getloadavg"):
        env["load_average_end"] = os.getloadavg()[0]
    add_round_ratios(results, times)
    add_ratios(results)
    os.makedirs(args.output_dir, exist_ok=True)
    raw = {"argv": argv, "env": env, "skipped": skipped, "latency_s_rounds": times}
    with open(os.path.join(args.output_dir, "decoders.json"), "w") as f:
        json.dump({**raw, "results": results}, f, indent=1)
    write_outputs(results, times, skipped, env, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
