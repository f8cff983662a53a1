"""One rank's fatal error stops every rank of the job, on every machine, within seconds.

Without this, the other ranks wait in their next collective until the process group's timeout
(30 minutes), or, under NCCL, forever. Through the job's rendezvous store (the c10d store every
rank already talks to):

* the rank that fails :meth:`AbortWatch.announce`\\ s its one-line error and exit status, and
  waits (a few seconds at most) until the others have read it;
* every rank runs a watcher thread that polls the store once a second; when another rank has
  announced, it prints ``ERROR: rank R stopped the job: <message>`` (once per machine: local
  rank 0) and ends its process with that status, wherever its main thread is blocked;
* losing the store (its host, rank 0, died without a word) ends the process as well.

At the end of a run every rank calls :meth:`AbortWatch.close`; rank 0, which hosts the store,
waits (a few seconds at most) for the others to close before it returns.
"""

import json
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Optional

import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["AbortWatch"]

_ABORT_KEY = "nrd_rsp/abort"
_ACK_KEY = "nrd_rsp/abort_ack"
_CLOSED_KEY = "nrd_rsp/closed"


class AbortWatch:
    """The watcher of one rank (a no-op when the world size is 1).

    Args:
        poll_s: how often the store is polled.
        linger_s: how long an announcing rank, and rank 0 at :meth:`close`, wait for the others.
    """

    def __init__(self, poll_s: float = 1.0, linger_s: float = 10.0):
        self.poll_s = poll_s
        self.linger_s = linger_s
        self._store = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if dist.is_available() and dist.is_initialized() and comm.get_world_size() > 1:
            self._store = dist.distributed_c10d._get_default_store()
            self._thread = threading.Thread(target=self._watch, name="nrd_rsp-abort", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if not self._store.check([_ABORT_KEY]):
                    continue
                note = json.loads(self._store.get(_ABORT_KEY))
            except Exception as e:  # the store's host is gone
                if self._stop.is_set():
                    return
                self._exit(
                    1,
                    f"lost contact with the job's rank 0 ({type(e).__name__}): it "
                    "stopped without a word (killed, or its machine failed)",
                )
            else:
                if note["rank"] == comm.get_rank():
                    continue
                try:
                    self._store.set(f"{_ACK_KEY}/{comm.get_rank()}", "1")
                    time.sleep(0.5)  # the announcing rank reads the store before it may vanish
                except Exception:
                    pass
                self._exit(
                    int(note["status"]),
                    f"rank {note['rank']} stopped the job: {note['message']}",
                )

    def _exit(self, status: int, message: str) -> None:
        if comm.get_local_rank() == 0:
            print(f"ERROR: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(status)

    def announce(self, message: str, status: int) -> None:
        """Tell every other rank to stop with ``message`` and ``status``; returns once they have
        read it or after ``linger_s``."""
        if self._store is None:
            return
        self._stop.set()
        try:
            note = {"rank": comm.get_rank(), "message": message, "status": int(status)}
            self._store.set(_ABORT_KEY, json.dumps(note))
            others = [r for r in range(comm.get_world_size()) if r != comm.get_rank()]
            acks = [f"{_ACK_KEY}/{r}" for r in others]
            self._store.wait(acks, timedelta(seconds=self.linger_s))
        except Exception:  # the store is gone: the others notice that themselves
            pass

    def close(self) -> None:
        """Stop watching (the run ends on this rank); rank 0 waits for the others to close."""
        if self._store is None or self._stop.is_set():
            return
        self._stop.set()
        try:
            closed = self._store.add(_CLOSED_KEY, 1)
            deadline = time.time() + self.linger_s
            while comm.get_rank() == 0 and closed < comm.get_world_size():
                if time.time() > deadline:
                    break
                time.sleep(0.05)
                closed = self._store.add(_CLOSED_KEY, 0)
        except Exception:
            pass
