#!/usr/bin/env python
"""Inference or training speed and peak memory of any model of the project.

    python tools/benchmark.py --config-file configs/Toy/rsp_R_18_toy.yaml --task inference
    python tools/benchmark.py \\
        --config-file configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml \\
        --task train --input-size 512 1024 --batch-size 2 --amp fp16 --device cuda MODEL.WEIGHTS ""

Several ``--config-file`` are measured side by side, the first as the baseline:

    python tools/benchmark.py --threads 1 --input-size 512 1024 \\
        --config-file configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml \\
        --config-file configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml

Inference: ``model(inputs)`` under ``torch.no_grad`` on B synthetic H x W images already on
the device (full Detectron2 forward incl. pre/post-processing). Training: forward + backward +
optimizer step (the config's optimizer) on a few cached batches of synthetic images with
labels built for the model (semantic labels; for Panoptic FPN also boxes, classes, masks).

Timing runs in interleaved rounds: ``--warmup`` untimed rounds, then ``--iters`` timed rounds;
each round runs one step of every config (round robin, the first config rotating), so that the
load of a shared machine hits all of them alike. The device is synchronised before and after
every step. Reported per config: median, p90 and interquartile range (q25-q75) of the latency,
iterations/s and images/s (from the median); with several configs also the per-round latency
ratio to the first config (median and interquartile range). Peak memory: the maximum over the
config's steps, each measured from a reset just before it (CUDA ``max_memory_allocated``; on
CPU the peak RSS of the whole process, reset where Linux allows it; with ``--compile`` it
includes the compilation); memory increase = the largest rise over the memory in use before a
step. With several configs in one process, the other configs' models count in the peak (not
in the increase); ``own_memory_mib`` = the config's weights, buffers and optimizer state plus
the largest rise during a timed step is its own memory whatever else the process holds.

Default input size: the crop size for training (``INPUT.CROP.SIZE`` with absolute crops, the
real configs' crop), else the toy image size or (MIN_SIZE_TEST, MAX_SIZE_TEST). ``--compile``
wraps backbone, RSP and semantic head in ``torch.compile`` (RPN/ROI heads have data-dependent
shapes and stay eager); compilation happens in the warm-up steps. Real-dataset configs are
adapted to one process (SyncBN -> BN, URL weights not loaded; logged).
"""

import argparse
import itertools
import json
import logging
import os
import sys

import torch
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp import analysis as A
from nrd_rsp.analysis.speed import MeasuredStep, interleaved_rounds, ratio_stats
from nrd_rsp.engine import Trainer
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error
from nrd_rsp.safe_loading import add_allow_unsafe_config_argument

logger = logging.getLogger("nrd_rsp.benchmark")


def parse_args(argv=None):
    p = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        required=True,
        action="append",
        metavar="FILE",
        help="config to measure; repeat it to measure several side by side in interleaved "
        "rounds (ratios against the first)",
    )
    add_allow_unsafe_config_argument(p)
    p.add_argument("--task", choices=["inference", "train"], default="inference")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=None, help="default: 1 (inference), 2 (train)")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--device",
        default=None,
        help="cuda, cuda:N or cpu (default: the config's, cpu without CUDA)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's default); 1 gives stable timings on a busy "
        "machine",
    )
    p.add_argument(
        "--iters", type=int, default=20, help="timed rounds (one step of every config each)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds")
    p.add_argument(
        "--count-flops",
        action="store_true",
        help="before the rounds, count the FLOPs of one step of each config (torch's "
        "FlopCounterMode: matmuls and convolutions, their gradients included in training)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides"
    )
    return p.parse_args(argv)


def _compile(model):
    for name in ("backbone", "rsp", "sem_seg_head"):
        module = getattr(model, name, None)
        if module is not None:
            setattr(model, name, torch.compile(module))


class Variant:
    """One config to measure: its model and :attr:`step`, a :class:`MeasuredStep` (inference or
    one training step, timed with its peak memory; ``step.peaks`` and ``step.rises`` per step,
    warm-up included)."""

    def __init__(self, config_file, args):
        self.config_file = config_file
        cfg = A.setup(config_file, args.opts, device=args.device)
        self.cfg = cfg
        self.device = device = torch.device(cfg.MODEL.DEVICE)
        A.autocast(device, args.amp)  # fail early on fp16 without CUDA
        self.batch_size = batch_size = args.batch_size or (1 if args.task == "inference" else 2)
        self.height, self.width = height, width = args.input_size or A.default_input_size(
            cfg, args.task
        )
        if min(height, width, batch_size) < 1:
            raise ConfigError(
                "--input-size and --batch-size must be positive, "
                f"got {height}x{width}, {batch_size}."
            )
        model = A.build_model(cfg, eval_mode=args.task == "inference")
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.compile:
            _compile(model)
        self.model = model

        if args.task == "inference":
            inputs = A.synthetic_inference_inputs(height, width, batch_size, device=device)

            def step():
                with torch.no_grad(), A.autocast(device, args.amp):
                    model(inputs)

        else:
            batches = itertools.cycle(
                A.synthetic_train_batches(
                    model, cfg, height, width, batch_size, num_batches=2, device=device
                )
            )
            optimizer = Trainer.build_optimizer(cfg, model)
            scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")

            def step():
                with A.autocast(device, args.amp):
                    losses = model(next(batches))
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

        self.optimizer = optimizer if args.task == "train" else None
        self.step = MeasuredStep(step, device)
        self.plain_step = step  # untimed (the FLOP count)
        self.flops = None

    def tensors_mib(self):
        """Memory of the model's parameters and buffers and of the optimizer's state (MiB)."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def run_all(args):
    """Measures every ``--config-file`` in interleaved rounds; returns one result per config."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError(
            f"Need --iters >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}."
        )
    configs = list(args.config_file)
    variants = [Variant(c, args) for c in configs]
    keys = [f"{i}:{c}" for i, c in enumerate(configs)]
    for v in variants:
        logger.info(
            f"{args.task}: {v.config_file} ({v.cfg.MODEL.META_ARCHITECTURE}) on "
            f"{A.device_description(v.device)}, {v.batch_size}x{v.height}x{v.width}"
        )
    logger.info(
        f"{args.warmup} warm-up + {args.iters} timed rounds of {len(variants)} config(s), "
        "interleaved"
    )
    with EventStorage(0):  # training losses log to Detectron2's event storage
        if args.count_flops:  # one more step each, before the warm-up rounds
            for v in variants:
                v.flops = A.step_flops(v.plain_step)
        times = interleaved_rounds(
            {k: v.step for k, v in zip(keys, variants)}, rounds=args.iters, warmup=args.warmup
        )
    results = []
    for key, v in zip(keys, variants):
        res = {
            "config_file": v.config_file,
            "task": args.task,
            "meta_architecture": v.cfg.MODEL.META_ARCHITECTURE,
            "device": str(v.device),
            "device_name": A.device_description(v.device),
            "torch": torch.__version__,
            "input_size": [v.height, v.width],
            "batch_size": v.batch_size,
            "amp": args.amp,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "warmup": args.warmup,
            "rounds": args.iters,
            "interleaved_with": len(variants) - 1,
            **A.latency_stats(times[key], v.batch_size),
            "latency_ms_rounds": [t * 1e3 for t in times[key]],
            "peak_memory_mib": v.step.peak,
            "peak_memory_kind": v.step.peak_kind
            + ("; other configs' models in the same process" if len(variants) > 1 else ""),
            # activations, workspace, optimizer state growth
            "memory_increase_mib": v.step.increase,
            # The config's own memory, whatever else the process holds: its weights, buffers and
            # optimizer state plus the largest rise during a timed step (activations, gradients,
            # workspace). With one config on CUDA it is close to the peak.
            "tensors_memory_mib": v.tensors_mib(),
            "own_memory_mib": v.tensors_mib() + max(v.step.rises[-args.iters :]),
        }
        if v.flops is not None:
            res["flops_per_step"] = v.flops
        if len(variants) > 1:
            res["baseline_config_file"] = configs[0]
            res.update(
                {
                    f"latency_{k}_vs_baseline": x
                    for k, x in ratio_stats(times[key], times[keys[0]]).items()
                    if k.startswith("ratio_")
                }
            )
        results.append(res)
    return results


def run(args):
    """Result of the first ``--config-file`` (all of them are measured, interleaved)."""
    return run_all(args)[0]


def print_results(res):
    print(f"device: {res['device_name']} | torch {res['torch']}")
    print(
        f"task: {res['task']} | "
        f"input: {res['batch_size']}x{res['input_size'][0]}x{res['input_size'][1]} "
        f"| amp: {res['amp']} | channels_last: {res['channels_last']} | compile: {res['compile']} "
        f"| warm-up {res['warmup']}, {res['iters']} timed rounds"
    )
    print(f"config: {res['config_file']}")
    print(f"latency_ms_median: {res['latency_ms_median']:.3f}")
    print(f"latency_ms_p90: {res['latency_ms_p90']:.3f}")
    print(
        f"latency_ms_iqr: {res['latency_ms_iqr']:.3f} "
        f"(q25 {res['latency_ms_q25']:.3f}, q75 {res['latency_ms_q75']:.3f})"
    )
    print(f"iters_per_s: {res['iters_per_s']:.4f}")
    print(f"images_per_s: {res['images_per_s']:.4f}")
    print(f"peak_memory_mib: {res['peak_memory_mib']:.1f} ({res['peak_memory_kind']})")
    print(
        f"memory_increase_mib: {res['memory_increase_mib']:.1f} "
        "(largest rise over the memory in use before a step)"
    )
    print(
        f"own_memory_mib: {res['own_memory_mib']:.1f} "
        "(weights, buffers, optimizer state + largest rise in a timed step)"
    )
    if "latency_ratio_median_vs_baseline" in res:
        print(
            "latency_ratio_vs_baseline: "
            f"{res['latency_ratio_median_vs_baseline']:.3f} "
            f"(IQR {res['latency_ratio_q25_vs_baseline']:.3f}-"
            f"{res['latency_ratio_q75_vs_baseline']:.3f} over {res['rounds']} rounds; "
            f"baseline {res['baseline_config_file']})"
        )


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="nrd_rsp", abbrev_name="nrd_rsp")
    results = run_all(args)
    for i, res in enumerate(results):
        if i:
            print()
        print_results(res)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            # One config: its result (as before); several: {"results": [...]} in --config-file
            # order, the first being the baseline of the ratios.
            json.dump(results[0] if len(results) == 1 else {"results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
