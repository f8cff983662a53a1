#!/usr/bin/env python
"""Train and evaluate nrd_rsp models (and Detectron2's stock ones) with Detectron2.

    python train_net.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume
    python train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT

One command scales from one CPU process to many GPUs and machines (Detectron2's ``launch``:
NCCL on GPUs, Gloo on CPU, where ``--num-gpus N`` starts N CPU processes).

Errors a user can fix (bad arguments, config, paths, checkpoints) print one ``ERROR:`` line and
exit with status 2; faults during a run (non-finite loss, too many bad samples) exit with 1.
"""

import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp.engine import Trainer, evaluate, load_model_for_eval, setup_cfg, validate_cfg
from nrd_rsp.errors import (
    NrdRspError,
    OneLineArgumentParser,
    UserError,
    exit_code,
    exit_on_error,
    report_error,
)
from nrd_rsp.predictor import visualize_predictions


def setup(args):
    if (
        comm.get_world_size() > 1
        and not torch.cuda.is_available()
        and "OMP_NUM_THREADS" not in os.environ
    ):
        # N CPU processes share the machine's cores; more threads than cores only spin.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    cfg = setup_cfg(args.config_file, args.opts)
    validate_cfg(cfg, eval_only=args.eval_only, resume=args.resume)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nrd_rsp")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = load_model_for_eval(cfg, resume=args.resume)
        res = evaluate(cfg, model)
        if comm.is_main_process():
            visualize_predictions(cfg, model)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()  # Detectron2's EvalHook evaluates after the last iteration
    res = getattr(trainer, "_last_eval_results", None)
    if res is not None:  # saved, then TTA if enabled
        res = evaluate(cfg, trainer.model, plain_results=res)
    if comm.is_main_process():
        visualize_predictions(cfg, trainer.model)
    return res


def worker_main(args):
    """``main`` in a process started by ``launch`` (world size > 1): a known error ends the process
    with its exit status, which ``cli`` passes on (``launch`` then stops the other processes).
    Errors that every rank raises alike (config, checkpoint, the trainer's all-rank step checks)
    are printed by the main process only; others by the rank that hit them."""
    try:
        return main(args)
    except NrdRspError as e:
        same_on_all_ranks = isinstance(e, UserError) or getattr(e, "all_ranks", False)
        if comm.is_main_process() or not same_on_all_ranks:
            if not comm.is_main_process():
                print(f"[rank {comm.get_rank()}]", end=" ", file=sys.stderr)
            report_error(e)
        sys.exit(exit_code(e))


def build_parser():
    """Detectron2's ``default_argument_parser`` whose usage errors are one line."""
    return OneLineArgumentParser.adopt(default_argument_parser())


@exit_on_error
def cli(argv=None):
    args = build_parser().parse_args(argv)
    # Fail fast, before spawning workers, on a wrong config / path / class count.
    validate_cfg(
        setup_cfg(args.config_file, args.opts, quiet=True),
        eval_only=args.eval_only,
        resume=args.resume,
        quiet=True,
    )
    print("Command Line Args:", args)
    world_size = args.num_gpus * args.num_machines
    try:
        launch(
            worker_main if world_size > 1 else main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as e:  # a worker stopped with a reported error
        return e.exit_code if e.exit_code and e.exit_code > 0 else 1
    return 0


if __name__ == "__main__":
    logging.captureWarnings(False)
    sys.exit(cli())
