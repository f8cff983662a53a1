#!/usr/bin/env python
"""Train and evaluate nrd_rsp models (and Detectron2's stock ones) with Detectron2.

    python train_net.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml
    python train_net.py --config-file CFG --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume
    python train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    torchrun --nproc_per_node 8 train_net.py --config-file CFG
    srun --ntasks-per-node 8 python train_net.py --config-file CFG

One command scales from one CPU process to many GPUs and machines (NCCL on GPUs, Gloo on CPU,
where ``--num-gpus N`` starts N CPU processes); started by torchrun or srun, each process joins
their job (``nrd_rsp.engine.job``; GETTING_STARTED.md "Training at scale"). A preemption signal
(SIGTERM, SIGUSR1) saves the current iteration and exits with status 75.

Errors a user can fix (bad arguments, config, paths, checkpoints) print one ``ERROR:`` line and
exit with status 2; faults during a run (non-finite loss, too many bad samples) exit with 1.
"""

import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp.engine import Trainer, evaluate, load_model_for_eval, setup_cfg, validate_cfg
from nrd_rsp.engine.job import prepare_launch, run_job
from nrd_rsp.errors import OneLineArgumentParser, exit_on_error
from nrd_rsp.predictor import visualize_predictions
from nrd_rsp.safe_loading import add_allow_unsafe_config_argument


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


def build_parser():
    """Detectron2's ``default_argument_parser`` whose usage errors are one line, plus
    ``--allow-unsafe-config`` (read configs with Python YAML tags; nrd_rsp.safe_loading).
    ``--num-gpus`` / ``--num-machines`` / ``--dist-url`` default to None: taken from torchrun's
    or srun's environment, else 1, 1 and a free local port (``nrd_rsp.engine.job``)."""
    parser = OneLineArgumentParser.adopt(default_argument_parser())
    parser.set_defaults(num_gpus=None, num_machines=None, dist_url=None)
    return add_allow_unsafe_config_argument(parser)


@exit_on_error
def cli(argv=None):
    args = build_parser().parse_args(argv)
    env = prepare_launch(args)  # torchrun / srun environment, or --num-gpus etc.
    # Fail fast, before spawning workers, on a wrong config / path / class count.
    cfg = setup_cfg(args.config_file, args.opts, quiet=True)
    validate_cfg(cfg, eval_only=args.eval_only, resume=args.resume, quiet=True)
    if env is None or env.rank == 0:
        print("Command Line Args:", args)
    return run_job(main, args, env, signals=cfg.PREEMPTION.SIGNALS)


if __name__ == "__main__":
    logging.captureWarnings(False)
    sys.exit(cli())
