#!/usr/bin/env python
"""Train and evaluate nrd_rsp models (and Detectron2's stock ones) with Detectron2.

    python train_net.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume
    python train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT

One command scales from one CPU process to many GPUs and machines (Detectron2's ``launch``:
NCCL on GPUs, Gloo on CPU, where ``--num-gpus N`` starts N CPU processes).
"""
import json
import logging
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp.data.datasets import DatasetNotFoundError
from nrd_rsp.engine import ConfigError, Trainer, evaluate, setup_cfg, validate_cfg, visualize_predictions


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    validate_cfg(cfg, eval_only=args.eval_only)
    default_setup(cfg, args)
    return cfg


def save_results(cfg, res):
    """Write the evaluation results to OUTPUT_DIR/eval_results.json (main process only)."""
    if res and comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(res, f, indent=2)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = evaluate(cfg, model)
        save_results(cfg, res)
        if comm.is_main_process():
            visualize_predictions(cfg, model)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()  # Detectron2's EvalHook evaluates after the last iteration
    res = getattr(trainer, "_last_eval_results", None)
    if cfg.TEST.AUG.ENABLED:
        res.update(Trainer.test_with_TTA(cfg, trainer.model))
    save_results(cfg, res)
    if comm.is_main_process():
        visualize_predictions(cfg, trainer.model)
    return res


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        # Fail fast, before spawning workers, on a wrong config / path / class count.
        validate_cfg(setup_cfg(args.config_file, args.opts), eval_only=args.eval_only)
    except (ConfigError, DatasetNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    logging.captureWarnings(False)
    sys.exit(cli())
