"""Preemption: a signal from the cluster becomes a checkpoint of the current iteration.

Clusters send ``SIGTERM`` (or, with Slurm's ``--signal``, ``SIGUSR1``/``SIGUSR2``) some time before
they kill a job. :class:`PreemptionHook` turns the signals of ``PREEMPTION.SIGNALS``, received by
any rank, into an orderly stop:

1. the signal handler (:func:`catch_signals`, installed when a rank starts) only raises a flag;
2. after every iteration the ranks all-reduce their flags (a CPU/Gloo collective: no GPU
   synchronisation), so all of them stop after the same iteration and none waits for the others;
3. the main process writes ``model_<iter>.pth`` and ``last_checkpoint`` atomically (unless that
   iteration's periodic checkpoint exists), all ranks meet at a barrier, and every rank raises
   :class:`Preempted` (exit status :data:`PREEMPTED_EXIT_STATUS`, 75, ``EX_TEMPFAIL``: "try
   again"), which prints ``preempted at iteration N; rerun with --resume``.

Data loader workers ignore the signals unless their main process sends them
(:mod:`nrd_rsp.data.resumable_loader`): a signal sent to the whole process group must not end
them, and with them the main process, before the save; other processes forked from a rank keep
the usual behaviour. After training the previous handlers are back (:func:`release_signals`).
The launching process of ``--num-gpus N`` forwards the signals to its workers
(:func:`forward_signals`).
"""

import logging
import os
import signal
import threading
from typing import Callable, Dict, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import ConfigError, RunError

__all__ = [
    "PREEMPTED_EXIT_STATUS",
    "Preempted",
    "PreemptionHook",
    "parse_signals",
    "catch_signals",
    "release_signals",
    "preemption_requested",
    "forward_signals",
]

logger = logging.getLogger("nrd_rsp")

PREEMPTED_EXIT_STATUS = 75  # sysexits.h EX_TEMPFAIL


class Preempted(RunError):
    """Training stopped on a preemption signal after saving ``iteration``."""

    exit_status = PREEMPTED_EXIT_STATUS

    def __init__(self, iteration: int, checkpoint: str = ""):
        where = f" (saved {checkpoint})" if checkpoint else ""
        message = f"preempted at iteration {iteration}; rerun with --resume{where}"
        super().__init__(message, all_ranks=True)  # every rank stops after the same iteration
        self.iteration = iteration


def parse_signals(names: Sequence[str]) -> Dict[str, int]:
    """``("SIGTERM", "USR1")`` -> ``{"SIGTERM": 15, "SIGUSR1": 10}``; ConfigError for an
    unknown name."""
    out = {}
    for name in names:
        full = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
        if not isinstance(getattr(signal, full, None), signal.Signals):
            raise ConfigError(
                f"PREEMPTION.SIGNALS: unknown signal '{name}'; use names like SIGTERM, SIGUSR1."
            )
        out[full] = int(getattr(signal, full))
    return out


# Process-wide, like signal dispositions: the flag, the process that raised it, the handlers
# that catch_signals replaced.
_state = {"signal": None, "pid": None, "previous": {}}


def _flag(signum, frame):
    if os.getpid() != _state["pid"]:  # a process forked from ours (a pool worker): die as usual
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _state["signal"] = signum


def catch_signals(signals: Sequence[str]) -> None:
    """From now on, the preemption ``signals`` only raise this process's flag (read by
    :class:`PreemptionHook` after every iteration), until :func:`release_signals`. Call it as
    early as possible in each rank (main thread), so that a signal during start-up stops
    training at its first iteration. Processes forked later keep the usual behaviour."""
    _state["pid"] = os.getpid()
    for signum in parse_signals(signals).values():
        previous = signal.signal(signum, _flag)
        if previous is not _flag:
            _state["previous"][signum] = previous


def release_signals() -> None:
    """Give the preemption signals back the handlers :func:`catch_signals` replaced, and lower
    the flag (a later training in this process starts afresh)."""
    for signum, previous in _state["previous"].items():
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    _state["previous"] = {}
    _state["signal"] = None


def preemption_requested() -> bool:
    """Whether this process got a preemption signal since :func:`catch_signals`."""
    return _state["signal"] is not None and _state["pid"] == os.getpid()


class PreemptionHook(HookBase):
    """Stop every rank after the same iteration once any of them got a preemption signal, and
    save that iteration (see the module docstring). Register it last, so that the iteration's
    losses, LR step, periodic checkpoint and evaluation come first."""

    def __init__(self, signals: Sequence[str]):
        self.signals = parse_signals(signals)

    def before_train(self):
        if not self.signals:
            return
        if threading.current_thread() is threading.main_thread():
            catch_signals(list(self.signals))  # already done by train_net.py; idempotent
        logger.info(
            f"On {', '.join(self.signals)}: save the current iteration and exit with status "
            f"{PREEMPTED_EXIT_STATUS} (rerun with --resume)."
        )

    def after_train(self):
        if self.signals and threading.current_thread() is threading.main_thread():
            release_signals()

    def _agreed(self) -> bool:
        flag = 1 if preemption_requested() else 0
        if comm.get_world_size() == 1:
            return bool(flag)
        t = torch.tensor([flag], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
        return bool(t.item())

    def after_step(self):
        if not self.signals or not self._agreed():
            return
        it = self.trainer.iter
        checkpointer = self.trainer.checkpointer
        name = f"model_{it:07d}"
        path = os.path.join(checkpointer.save_dir, name + ".pth")
        if comm.is_main_process():
            if not os.path.isfile(path):
                checkpointer.save(name, iteration=it)
            else:  # this iteration's periodic checkpoint
                checkpointer.tag_last_checkpoint(name + ".pth")
        comm.synchronize()  # nobody exits (and has the launcher kill the others) before the save
        raise Preempted(it, path)


def forward_signals(pids: Callable[[], Sequence[int]], signals: Sequence[str]) -> None:
    """In a launching process: pass the preemption ``signals`` it receives on to the processes
    ``pids()`` (its workers), and keep running until they exit."""

    def forward(signum, frame):
        for pid in pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in parse_signals(signals).values():
        signal.signal(signum, forward)
