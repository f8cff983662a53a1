"""Run ``main(args)`` as one process, as N processes spawned here, or as one rank of a job that
torchrun or srun started (:mod:`.launch`), with preemption (:mod:`.preemption`) and one rank's
failure stopping all (:mod:`.abort`).

Exit statuses: 0 done; 1 a fault during the run; 2 a user error; 75 preempted after saving.
"""

import logging
import multiprocessing
import sys
import traceback
from typing import Callable, Optional, Sequence

from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from ..errors import NrdRspError, UserError, exit_code, one_line, report_error
from .abort import AbortWatch
from .launch import (
    LaunchEnv,
    check_args_against_env,
    elastic_restart_count,
    join_job,
    launcher_env,
    resolve_dist_url,
)
from .preemption import catch_signals, forward_signals, release_signals

__all__ = ["prepare_launch", "run_job"]

logger = logging.getLogger("nrd_rsp")


def prepare_launch(args) -> Optional[LaunchEnv]:
    """Settle the process layout in ``args`` before anything runs: from torchrun's or srun's
    environment when there is one (its ``LaunchEnv`` is returned), else from ``--num-gpus`` /
    ``--num-machines`` (default 1) and ``--dist-url`` (a free local port when left out). After a
    torchrun elastic restart, ``args.resume`` is set."""
    env = launcher_env()
    if env is not None:
        check_args_against_env(args, env)
        restarts = elastic_restart_count()
        if restarts and not args.resume:
            args.resume = True
            if env.rank == 0:
                print(f"torchrun restart {restarts}: resuming from last_checkpoint", flush=True)
        return env
    args.num_gpus = 1 if args.num_gpus is None else args.num_gpus
    args.num_machines = 1 if args.num_machines is None else args.num_machines
    if args.num_gpus * args.num_machines > 1:
        args.dist_url = resolve_dist_url(args.dist_url, args.num_machines, args.machine_rank)
    return None


def _report(e: BaseException) -> None:
    """One ``ERROR:`` line on stderr (the traceback of an unexpected error goes to the log)."""
    if isinstance(e, NrdRspError):
        report_error(e)
        return
    logger.error("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    print(f"ERROR: {type(e).__name__}: {one_line(e)}", file=sys.stderr, flush=True)


def rank_main(main_func: Callable, args, signals: Sequence[str]):
    """``main_func(args)`` in one rank of a multi-process job. An error that only this rank
    raised is announced to the others (they stop within seconds); an error that every rank raises
    alike (user errors, the step guard's, preemption) is printed by the main process only. The
    process then exits with the error's status."""
    catch_signals(signals)
    watch = AbortWatch()
    try:
        result = main_func(args)
    except Exception as e:
        status = exit_code(e)
        same_on_all_ranks = isinstance(e, UserError) or (isinstance(e, NrdRspError) and e.all_ranks)
        if not same_on_all_ranks:
            name = "" if isinstance(e, NrdRspError) else f"{type(e).__name__}: "
            watch.announce(name + one_line(e), status)
        if comm.is_main_process() or not same_on_all_ranks:
            if not comm.is_main_process():
                print(f"[rank {comm.get_rank()}]", end=" ", file=sys.stderr)
            _report(e)
        watch.close()
        sys.exit(status)
    watch.close()
    return result


def _child_pids():
    return [p.pid for p in multiprocessing.active_children()]


def run_job(main_func: Callable, args, env: Optional[LaunchEnv], signals: Sequence[str]) -> int:
    """Run ``main_func(args)`` in the layout :func:`prepare_launch` settled; returns the exit
    status (errors of a single process propagate)."""
    if env is not None and env.world_size > 1:
        join_job(env)
        rank_main(main_func, args, signals)
        return 0
    world_size = args.num_gpus * args.num_machines
    if world_size == 1:
        catch_signals(signals)
        try:
            main_func(args)
        finally:  # eval-only runs have no training hook to give the handlers back
            release_signals()
        return 0
    forward_signals(_child_pids, signals)
    try:
        launch(
            rank_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main_func, args, tuple(signals)),
        )
    except ProcessExitedException as e:  # a worker stopped with a reported error
        return e.exit_code if e.exit_code and e.exit_code > 0 else 1
    return 0
