#!/usr/bin/env python
"""FLOPs, parameters, activations and structure of any model of the project.

    python tools/analyze_model.py --config-file configs/Toy/rsp_R_18_toy.yaml \\
        --tasks flop parameter activation structure
    python tools/analyze_model.py \\
        --config-file configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml \\
        --tasks flop parameter --input-size 1024 2048 MODEL.WEIGHTS ""   # random init

With ``--input-size H W`` costs are counted on one synthetic H x W image in inference mode.
Without it they are averaged over ``-n`` images of the config's first test dataset (the toy
data for toy configs; a missing real dataset is an error naming its path).

FLOPs follow fvcore (1 fused multiply-add = 1 flop). The cost is split into backbone, neck
(FPN ``backbone.fpn_*``/``top_block`` and RSP ``rsp``), head (``sem_seg_head``,
``proposal_generator``, ``roi_heads``) and other (pre/post-processing); see
``nrd_rsp/analysis/``. Operators fvcore cannot count are listed with the modules running them.
Real-dataset configs are adapted to one process: SyncBN -> BN, URL weights not loaded (logged);
a local ``MODEL.WEIGHTS`` file (e.g. the NRD configs' ``pretrained/resnet50_v1c.pkl``) must exist,
or pass ``MODEL.WEIGHTS ""`` for random initialisation (same FLOPs and parameters).
"""

import argparse
import itertools
import json
import logging
import os
import sys

import numpy as np
import torch
from detectron2.utils.logger import setup_logger
from fvcore.nn import flop_count_table, parameter_count, parameter_count_table

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp import analysis as A
from nrd_rsp.engine import Trainer, validate_cfg
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error
from nrd_rsp.safe_loading import add_allow_unsafe_config_argument

logger = logging.getLogger("nrd_rsp.analyze_model")
TASKS = ("flop", "parameter", "activation", "structure")


def parse_args(argv=None):
    p = OneLineArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE")
    add_allow_unsafe_config_argument(p)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["flop", "parameter"])
    p.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="count on one synthetic HxW image instead of test-set images",
    )
    p.add_argument(
        "-n",
        "--num-inputs",
        type=int,
        default=10,
        help="number of test images to average FLOPs/activations over (default 10)",
    )
    p.add_argument("--max-depth", type=int, default=3, help="depth of the per-module tables")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's default)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides"
    )
    return p.parse_args(argv)


def iter_inputs(cfg, args):
    """Yields (description, list[dict]) model inputs of batch size 1."""
    if args.input_size:
        h, w = args.input_size
        if h <= 0 or w <= 0:
            raise ConfigError(f"--input-size must be positive, got {h} {w}.")
        yield f"synthetic {h}x{w}", A.synthetic_inference_inputs(h, w, 1, device=cfg.MODEL.DEVICE)
        return
    if args.num_inputs < 1:
        raise ConfigError(f"-n must be >= 1, got {args.num_inputs}.")
    if not cfg.DATASETS.TEST:
        raise ConfigError("The config has no DATASETS.TEST; pass --input-size H W.")
    validate_cfg(cfg, eval_only=True)  # DatasetNotFoundError names the missing directory
    name = cfg.DATASETS.TEST[0]
    loader = Trainer.build_test_loader(cfg, name)
    for batch in itertools.islice(loader, args.num_inputs):
        d = batch[0]
        yield (
            f"{name}: {os.path.basename(d.get('file_name', '?'))} {tuple(d['image'].shape[-2:])}",
            batch,
        )


def _fmt_breakdown(parts, scale):
    return " | ".join(f"{k} {parts[k] / scale:.4g}" for k in A.COMPONENTS)


def _mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def run_counting(model, cfg, args, kind, out):
    """FLOPs (kind="flop") or activations (kind="activation"), averaged over the inputs."""
    make = A.flop_count_analysis if kind == "flop" else A.activation_count_analysis
    unit, scale = ("GFLOPs", 1e9) if kind == "flop" else ("M activations", 1e6)
    totals, parts, by_op = [], [], {}
    first = None
    unsupported, uncounted_modules = {}, {}
    # Our modules below the root; the root's own ops are Detectron2's pre/post-processing
    # (ImageList padding, detector_postprocess, ...), the same as in Detectron2's meta-archs.
    own_modules = {m for m in A.project_module_names(model) if m}
    descriptions = []
    for desc, inputs in iter_inputs(cfg, args):
        descriptions.append(desc)
        with torch.no_grad():
            analysis = make(model, inputs)
            total = analysis.total()
        totals.append(total)
        parts.append(A.component_breakdown(A.module_counts(analysis)))
        for op, v in analysis.by_operator().items():
            by_op[op] = by_op.get(op, 0) + v
        # Activations are defined on conv/linear/matmul outputs only: other ops are not "missed".
        uncounted = A.unsupported_ops_by_module(analysis) if kind == "flop" else {}
        for mod, ops in uncounted.items():
            for op, c in ops.items():
                unsupported.setdefault(op, set()).add(mod or "<top level>")
                if mod in own_modules or any(mod.startswith(o + ".") for o in own_modules):
                    uncounted_modules.setdefault(mod, set()).add(op)
        if first is None:
            first = analysis
    n = len(totals)
    mean, std = _mean_std(totals)
    mean_parts = {k: float(np.mean([p[k] for p in parts])) for k in A.COMPONENTS}
    label = "GFLOPs" if kind == "flop" else "activations (M)"
    print(f"\n===== {kind} =====")
    print(f"Inputs ({n}): " + ("; ".join(descriptions[:3]) + (" ..." if n > 3 else "")))
    print("Per-module table of the first input (fvcore flop_count_table):")
    if kind == "flop":
        print(flop_count_table(first, max_depth=args.max_depth))
    else:
        table = flop_count_table(first, max_depth=args.max_depth, show_param_shapes=False)
        print(table.replace("#flops", "#activations", 1))
    print(
        f"{'Average' if n > 1 else 'Count'} by operator ({unit}): "
        + ", ".join(
            f"{op} {v / n / scale:.4g}" for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])
        )
    )
    print(f"{kind.capitalize()} by component ({unit}, mean): {_fmt_breakdown(mean_parts, scale)}")
    print(f"Total {label}: {mean / scale:.6g} ± {std / scale:.3g} (mean ± std over {n} input(s))")
    if kind == "activation":
        print("(fvcore counts the output elements of conv, linear, matmul, bmm and einsum ops.)")
    else:
        if unsupported:
            print("Operators fvcore could not count (not included above):")
            for op in sorted(unsupported):
                print(f"  {op}  in: {', '.join(sorted(unsupported[op]))}")
        else:
            print("Operators fvcore could not count: none")
        if uncounted_modules:
            print(
                "WARNING: project modules with uncounted operators: "
                + "; ".join(
                    f"{m}: {', '.join(sorted(o))}" for m, o in sorted(uncounted_modules.items())
                )
            )
        else:
            print("Project (nrd_rsp) modules with uncounted operators: none")
    out[kind] = {
        "total": mean,
        "std": std,
        "num_inputs": n,
        "by_component": mean_parts,
        "by_operator": {op: v / n for op, v in by_op.items()},
        "unsupported_ops": {op: sorted(m) for op, m in unsupported.items()},
        "project_modules_with_unsupported_ops": {
            m: sorted(o) for m, o in uncounted_modules.items()
        },
    }


def run_parameters(model, args, out):
    counts = parameter_count(model)
    parts = A.component_breakdown(counts)
    print("\n===== parameter =====")
    print(parameter_count_table(model, max_depth=args.max_depth))
    print(f"Parameters by component (M): {_fmt_breakdown(parts, 1e6)}")
    total = counts[""]
    print(f"Total parameters: {total} ({total / 1e6:.3f} M)")
    out["parameter"] = {"total": total, "by_component": parts}


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="nrd_rsp", abbrev_name="nrd_rsp")
    setup_logger(name="fvcore", abbrev_name="fvcore")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    cfg = A.setup(args.config_file, args.opts)
    logger.info(
        f"Config {args.config_file}: {cfg.MODEL.META_ARCHITECTURE}, device {cfg.MODEL.DEVICE}"
    )
    model = A.build_model(cfg)
    out = {"config_file": args.config_file, "input_size": args.input_size, "tasks": args.tasks}
    for task in args.tasks:
        if task in ("flop", "activation"):
            run_counting(model, cfg, args, task, out)
        elif task == "parameter":
            run_parameters(model, args, out)
        elif task == "structure":
            print("\n===== structure =====")
            print(str(model))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
