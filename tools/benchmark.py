#!/usr/bin/env python
"""Inference or training speed and peak memory of any model of the project.

    python tools/benchmark.py --config-file configs/Toy/rsp_R_18_toy.yaml --task inference
    python tools/benchmark.py \\
        --config-file configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml \\
        --task train --input-size 512 1024 --batch-size 2 --amp fp16 --device cuda MODEL.WEIGHTS ""

Inference: ``model(inputs)`` under ``torch.no_grad`` on B synthetic H x W images already on
the device (full Detectron2 forward incl. pre/post-processing). Training: forward + backward +
optimizer step (the config's optimizer) on a few cached batches of synthetic images with
labels built for the model (semantic labels; for Panoptic FPN also boxes, classes, masks).
``--warmup`` steps run first; the device is synchronised before and after every timed step.
Reported: median and p90 latency, iterations/s and images/s (from the median), peak memory
over warm-up and timed steps (CUDA ``max_memory_allocated``; on CPU the peak RSS of the whole
process, reset before the first step where Linux allows it; with ``--compile`` it includes the
compilation) and its increase over the memory in use before the first step.

Default input size: the crop size for training, else the toy image size or
(MIN_SIZE_TEST, MAX_SIZE_TEST). ``--compile`` wraps backbone, RSP and semantic head in
``torch.compile`` (RPN/ROI heads have data-dependent shapes and stay eager); compilation
happens in the warm-up steps. Real-dataset configs are adapted to one process (SyncBN -> BN,
URL weights not loaded; logged).
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
from nrd_rsp.engine import Trainer
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error

logger = logging.getLogger("nrd_rsp.benchmark")


def parse_args(argv=None):
    p = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE")
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
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
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


def run(args):
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    cfg = A.setup(args.config_file, args.opts, device=args.device)
    device = torch.device(cfg.MODEL.DEVICE)
    A.autocast(device, args.amp)  # fail early on fp16 without CUDA
    batch_size = args.batch_size or (1 if args.task == "inference" else 2)
    height, width = args.input_size or A.default_input_size(cfg, args.task)
    if min(height, width, batch_size) < 1:
        raise ConfigError(
            f"--input-size and --batch-size must be positive, got {height}x{width}, {batch_size}."
        )

    model = A.build_model(cfg, eval_mode=args.task == "inference")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        _compile(model)

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

    logger.info(
        f"{args.task}: {cfg.MODEL.META_ARCHITECTURE} on {A.device_description(device)}, "
        f"{batch_size}x{height}x{width}, warm-up {args.warmup}, {args.iters} timed steps"
    )
    # Peak memory covers warm-up and timed steps; the warm-up allocates what later steps reuse
    # (on CPU the allocator keeps it resident), and includes compilation with --compile.
    baseline = A.reset_peak_memory(device)
    with EventStorage(0):  # training losses log to Detectron2's event storage
        times = A.time_steps(step, iters=args.iters, warmup=args.warmup, device=device)
    peak, peak_kind = A.peak_memory(device)
    res = {
        "config_file": args.config_file,
        "task": args.task,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "device": str(device),
        "device_name": A.device_description(device),
        "torch": torch.__version__,
        "input_size": [height, width],
        "batch_size": batch_size,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "iters": args.iters,
        "warmup": args.warmup,
        **A.latency_stats(times, batch_size),
        "peak_memory_mib": peak,
        "peak_memory_kind": peak_kind,
        "memory_increase_mib": peak - baseline,  # activations, workspace, optimizer state growth
    }
    return res


def print_results(res):
    print(f"device: {res['device_name']} | torch {res['torch']}")
    print(
        f"task: {res['task']} | "
        f"input: {res['batch_size']}x{res['input_size'][0]}x{res['input_size'][1]} "
        f"| amp: {res['amp']} | channels_last: {res['channels_last']} | compile: {res['compile']} "
        f"| warm-up {res['warmup']}, {res['iters']} timed iterations"
    )
    print(f"latency_ms_median: {res['latency_ms_median']:.3f}")
    print(f"latency_ms_p90: {res['latency_ms_p90']:.3f}")
    print(f"iters_per_s: {res['iters_per_s']:.4f}")
    print(f"images_per_s: {res['images_per_s']:.4f}")
    print(f"peak_memory_mib: {res['peak_memory_mib']:.1f} ({res['peak_memory_kind']})")
    print(
        f"memory_increase_mib: {res['memory_increase_mib']:.1f} "
        "(peak minus the memory in use before the first step)"
    )


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="nrd_rsp", abbrev_name="nrd_rsp")
    res = run(args)
    print_results(res)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
