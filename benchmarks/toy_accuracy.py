#!/usr/bin/env python
"""Train the decoders side by side on the toy data over several seeds and compare their accuracy
with paired confidence intervals.

Two data settings, both made by the toy generator through its parameters:

* ``default``: the toy data of the toy configs (128x160, poles 1-3 px); every model;
* ``highres``: 256x512 images, every thin structure 1 px wide, and road painted like wall so that
  only the surroundings tell the two apart (``DATASETS.TOY.{MAX_POLE_WIDTH,CONTEXT_STUFF}``);
  the semantic models, trained on 128x256 crops and tested on whole images.

Semantic models report mIoU, the IoU of the thin class (pole) and the boundary F-score (2-px
band, ``nrd_rsp.evaluation``); panoptic models PQ, PQ things, PQ stuff, mIoU and the two others.
Each (setting, model, seed) trains from scratch with ``SEED`` = the seed on the same data; each
comparison is the paired difference over the seeds with its 95% t-interval
(``nrd_rsp.analysis.paired_stats``).

    python benchmarks/toy_accuracy.py                     # CPU: 5 seeds, 2 jobs, ~1.5 h on 2 cores
    python benchmarks/toy_accuracy.py --mode full --device cuda --jobs 1
    python benchmarks/toy_accuracy.py --settings default --rows semantic_fpn nrd --seeds 0 1

Each run's metrics are kept in ``--work-dir`` and reused by a rerun with the same arguments.
Writes ``toy_accuracy.json`` (every run, every summary) and ``toy_accuracy.md`` (rendered from
the JSON alone by :func:`render_markdown`) into ``--output-dir`` (default ``benchmarks/results``).
"""

import argparse
import concurrent.futures as futures
import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when loaded by path
from common import environment  # noqa: E402
from toy_accuracy_report import (  # noqa: E402, F401  (summary_lines: read by the tests)
    _provenance_lines,
    render_markdown,
    summary_lines,
)
from toy_accuracy_rows import COMPARISONS, METRICS, MODES, ROW_OPTS, ROWS, SETTINGS  # noqa: E402


def run_one(config_file, opts, output_dir, kind):
    """Train ``config_file`` from scratch and evaluate it on its test set, in this process;
    returns {"iterations", "train_seconds", metric: value}."""
    import torch
    from detectron2.evaluation import DatasetEvaluators
    from detectron2.utils.env import seed_all_rng

    import nrd_rsp  # noqa: F401
    from nrd_rsp.engine import Trainer, setup_cfg
    from nrd_rsp.evaluation import BoundaryFScoreEvaluator

    torch.set_num_threads(1)
    cfg = setup_cfg(os.path.join(ROOT, config_file), [*opts, "OUTPUT_DIR", output_dir], quiet=True)
    os.makedirs(output_dir, exist_ok=True)
    start = time.perf_counter()
    seed_all_rng(cfg.SEED)  # Python, NumPy and torch: the seed decides the initial weights
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    out = {"iterations": cfg.SOLVER.MAX_ITER, "train_seconds": time.perf_counter() - start}
    name = cfg.DATASETS.TEST[0]
    evaluators = DatasetEvaluators(
        [Trainer.build_evaluator(cfg, name), BoundaryFScoreEvaluator(name)]
    )
    res = Trainer.test(cfg, trainer.model, [evaluators])
    out.update(mIoU=res["sem_seg"]["mIoU"], BF=res["boundary"]["BF"])
    out["IoU-pole"] = res["sem_seg"]["IoU-pole"]
    if kind == "panoptic":
        out.update({k: res["panoptic_seg"][k] for k in ("PQ", "PQ_th", "PQ_st")})
        out.update(AP_box=res["bbox"]["AP"], AP_mask=res["segm"]["AP"])  # not tabled
    return out


# The metrics of a finished run, next to its Detectron2 output (whose metrics.json is Detectron2's
# training log, not ours).
CACHE_NAME = "toy_accuracy_run.json"


CODE_PATHS = (
    "projects/nrd_rsp",
    "configs",
    "benchmarks/toy_accuracy.py",
    "benchmarks/toy_accuracy_rows.py",
    "train_net.py",
)


def code_hash():
    """SHA-256 of the files that decide a run (the project package, the configs, this script),
    as they are on disk: committed or not."""
    h = hashlib.sha256()
    for top in CODE_PATHS:
        path = os.path.join(ROOT, top)
        files = [path] if os.path.isfile(path) else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
            if f.endswith((".py", ".yaml", ".c")) and "__pycache__" not in d
        ]  # fmt: skip
        for f in sorted(files):
            h.update(os.path.relpath(f, ROOT).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read() + b"\0")
    return h.hexdigest()


def run_key(config, opts, code):
    """The cache key of a run: its config file, its options and the code."""
    return hashlib.sha256(json.dumps([config, list(opts), code]).encode()).hexdigest()[:16]


def _job(job):
    """One (setting, row, seed) in a worker process: Detectron2's log (with its ETA) goes to
    ``<work dir>/log.txt``; the metrics are cached in :data:`CACHE_NAME` next to it, reused only
    while the run's key (config, options, code) is the same."""
    setting, row, seed, opts, work_dir, command = job
    _, config, kind = ROWS[row]
    opts = [*opts, *ROW_OPTS.get(row, []), "SEED", str(seed)]
    code = code_hash()
    key = run_key(config, opts, code)
    cache = os.path.join(work_dir, CACHE_NAME)
    if os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return job, cached
    os.makedirs(work_dir, exist_ok=True)
    for name in ("detectron2", "nrd_rsp", "fvcore"):
        log = logging.getLogger(name)
        log.handlers[:] = [logging.FileHandler(os.path.join(work_dir, "log.txt"))]
        log.setLevel(logging.INFO)
        log.propagate = False
    metrics = run_one(config, opts, work_dir, kind)
    metrics.update(key=key, threads=_threads(), command=command, code=code[:12])
    metrics["date"] = datetime.date.today().isoformat()
    with open(cache + ".tmp", "w") as f:
        json.dump(metrics, f)
    os.replace(cache + ".tmp", cache)
    return job, metrics


def _threads():
    import torch

    return torch.get_num_threads()


def _command(args, setting, row, seed):
    """The command that runs this one (setting, row, seed) again."""
    return shlex.join(
        ["python", "benchmarks/toy_accuracy.py", "--mode", args.mode, "--device", args.device]
        + ["--settings", setting, "--rows", row, "--seeds", str(seed), "--jobs", "1", *args.opts]
    )


def run_all(args, opts_common):
    """Run every (setting, row, seed) with ``args.jobs`` processes; returns
    {setting: {row: {seed: metrics}}}."""
    from tqdm import tqdm

    jobs = [
        (setting, row, seed, [*opts_common, *SETTINGS[setting][2]],
         os.path.join(args.work_dir, args.mode, setting, row, f"seed{seed}"),
         _command(args, setting, row, seed))
        for setting in args.settings
        for seed in args.seeds  # seed-major: an interrupted run leaves whole seeds
        for row in args.rows
        if row in SETTINGS[setting][1]
    ]  # fmt: skip
    runs = {}
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        pending = [pool.submit(_job, job) for job in jobs]
        try:
            for done in tqdm(futures.as_completed(pending), total=len(jobs), unit="run"):
                (setting, row, seed, *_), metrics = done.result()
                runs.setdefault(setting, {}).setdefault(row, {})[str(seed)] = metrics
        except BaseException:
            pool.shutdown(cancel_futures=True)  # stop now, not after every queued run
            raise
    return runs


def summarize_runs(runs, seeds):
    """Per-model summaries and per-comparison paired differences, from the runs alone."""
    from nrd_rsp.analysis.paired_stats import holm_adjust, paired_difference, summarize

    keys = [str(s) for s in seeds]
    models, comparisons = {}, {}
    for setting in [s for s in SETTINGS if s in runs]:
        rows = {row: runs[setting][row] for row in ROWS if row in runs[setting]}
        models[setting] = {
            row: {m: summarize([rows[row][s].get(m) for s in keys]) for m in METRICS[ROWS[row][2]]}
            for row in rows
        }
        for a, b in COMPARISONS:
            if a in rows and b in rows:
                comparisons.setdefault(setting, {})[f"{a} - {b}"] = {
                    m: paired_difference(
                        [rows[a][s].get(m) for s in keys], [rows[b][s].get(m) for s in keys]
                    )
                    for m in METRICS[ROWS[a][2]]
                    if m in METRICS[ROWS[b][2]]
                }
        family = [d for per in comparisons.get(setting, {}).values() for d in per.values()]
        adjusted = holm_adjust({i: d["p_value"] for i, d in enumerate(family)})
        for i, d in enumerate(family):  # Holm over every comparison and metric of the setting
            d["p_holm"], d["significant_holm"] = adjusted[i]
    return models, comparisons


def _meta(args, argv):
    import torch

    env = environment("cpu", "date", "torch")
    device = "cpu: " + env["cpu"]
    if args.device == "cuda" and torch.cuda.is_available():
        device = "cuda: " + torch.cuda.get_device_name(0)
    return {
        "command": "python benchmarks/toy_accuracy.py " + shlex.join(argv),
        "date": env["date"][:10],
        "mode": args.mode,
        "device": device,
        "torch": env["torch"],
        "threads_per_job": 1,
        "jobs": args.jobs,
        "seeds": args.seeds,
    }


def _merge(args, runs):
    """``runs`` completed by the (setting, row)s of ``<output dir>/toy_accuracy.json`` that were
    not run now, with that report's settings (without its own ``merged_from``); each kept run
    without a recorded ``code`` gets the ``source`` (command, date) of the report it came from."""
    from nrd_rsp.errors import ConfigError

    with open(os.path.join(args.output_dir, "toy_accuracy.json")) as f:
        old = json.load(f)
    if old["settings"]["seeds"] != args.seeds:
        raise ConfigError(f"--merge: the existing report has seeds {old['settings']['seeds']}")
    prev = old["settings"].pop("merged_from", None) or old["settings"]
    source = {k: prev[k] for k in ("command", "date")}
    merged = {setting: dict(rows) for setting, rows in old["runs"].items()}
    for run in (r for rows in merged.values() for seeds in rows.values() for r in seeds.values()):
        if "code" not in run:  # kept runs from before the code was recorded: say where from
            run.setdefault("source", source)
    for setting, rows in runs.items():
        merged.setdefault(setting, {}).update(rows)
    return merged, old["settings"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=sorted(MODES), default="short")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--work-dir", default=os.path.join(ROOT, "output", "toy_accuracy"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows not run now from the existing toy_accuracy.json (same seeds)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return p.parse_args(argv)


def main(argv=None):
    from nrd_rsp.engine import check_device
    from nrd_rsp.errors import ConfigError, exit_on_error

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    @exit_on_error
    def _run():
        check_device(args.device)
        if len(set(args.seeds)) != len(args.seeds):
            raise ConfigError(f"--seeds: {args.seeds} repeats a seed; give distinct seeds")
        opts = [*MODES[args.mode], "MODEL.DEVICE", args.device, "TEST.NUM_VIS_IMAGES", "0"]
        opts += args.opts
        runs = run_all(args, opts)
        meta = _meta(args, argv)
        if args.merge:
            runs, meta["merged_from"] = _merge(args, runs)
        models, comparisons = summarize_runs(runs, args.seeds)
        report = {"settings": meta, "runs": runs, "models": models}
        report["comparisons"] = comparisons
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "toy_accuracy.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.output_dir, "toy_accuracy.md"), "w") as f:
            f.write(render_markdown(report) + "\n")
        print(render_markdown(report))
        return 0

    return _run()


if __name__ == "__main__":
    sys.exit(main())
