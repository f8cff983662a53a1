"""Preemption of a 2-process CPU/Gloo run with a real SIGTERM at about iteration 12 of 40: the
checkpoint of that iteration is written, the exit status is 75 with one line, and ``--resume``
reproduces the uninterrupted run's per-iteration losses (``DATALOADER.NUM_WORKERS`` 0 and 2).
The checkpoint also resumes on 1 process; the global batches after a resume on another process
count hold the same samples (checked through the sample indices); evaluation inside a 2-process
run equals a 1-process ``--eval-only`` of its checkpoint."""

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from run_helpers import (
    ENV,
    ROOT,
    SEMANTIC_CFG,
    SMALL_SEMANTIC_OPTS,
    assert_same_losses,
    check_ok,
    read_losses,
    run,
    train_net_cmd,
)

from nrd_rsp.data.resumable_sampling import ResumableTrainingSampler
from nrd_rsp.engine.hooks import JobLayoutHook
from nrd_rsp.engine.preemption import PREEMPTED_EXIT_STATUS, forward_signals

pytestmark = pytest.mark.slow

MAX_ITER, SIGNAL_AT, EVAL_AT = 40, 12, 20


def _opts(out, workers):
    return [
        *SMALL_SEMANTIC_OPTS,
        "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(EVAL_AT), "TEST.EVAL_PERIOD", str(EVAL_AT),
        "DATALOADER.NUM_WORKERS", str(workers),
    ]  # fmt: skip


def _children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _rank_pids(launcher_pid):
    """The two rank processes spawned by a ``--num-gpus 2`` launcher (not its resource
    tracker), once both run."""
    deadline = time.time() + 120
    while time.time() < deadline:
        ranks = []
        for pid in _children(launcher_pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    ranks.append(pid)
        if len(ranks) == 2:
            return sorted(ranks)
        time.sleep(0.2)
    raise AssertionError("the launcher did not start 2 ranks")


def _preempt(out, workers, target):
    """A 2-process run sent SIGTERM after iteration ``SIGNAL_AT`` is logged: to one rank
    (``"rank"``) or to the whole process group: launcher, ranks and loader workers
    (``"group"``). Returns (exit status, stderr)."""
    proc = subprocess.Popen(
        train_net_cmd("--config-file", SEMANTIC_CFG, "--num-gpus", "2", *_opts(out, workers)),
        cwd=ROOT,
        env=dict(os.environ, **ENV),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ranks = _rank_pids(proc.pid)
    deadline = time.time() + 400
    losses = out / "losses.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if losses.exists() and len(losses.read_text().splitlines()) >= SIGNAL_AT:
            break
        time.sleep(0.05)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(ranks[-1], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted 2-process run, evaluated at iteration EVAL_AT and at the end."""
    out = tmp_path_factory.mktemp("uninterrupted")
    check_ok(run(["--config-file", SEMANTIC_CFG, "--num-gpus", "2", *_opts(out, 2)]))
    return out


def _check_preempted(out, status, err):
    assert status == PREEMPTED_EXIT_STATUS, err[-3000:]
    lines = [ln for ln in err.splitlines() if "preempted" in ln or "ERROR" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    stopped = int(lines[0].split("preempted at iteration ")[1].split(";")[0])
    assert SIGNAL_AT - 1 <= stopped < MAX_ITER - 1 and "rerun with --resume" in lines[0]
    assert (out / "last_checkpoint").read_text() == f"model_{stopped:07d}.pth"
    ckpt = torch.load(out / f"model_{stopped:07d}.pth", weights_only=False)
    assert ckpt["iteration"] == stopped == ckpt["trainer"]["iteration"]
    assert ckpt["trainer"]["hooks"]["JobLayoutHook"] == {
        "world_size": 2,
        "ims_per_batch": 2,
        "aspect_ratio_grouping": True,  # the toy configs' Detectron2 default
    }
    assert sorted(read_losses(out)) == list(range(stopped + 1))  # nothing after the save
    assert not (out / "model_final.pth").exists()
    return stopped


@pytest.mark.parametrize("workers,target", [(0, "rank"), (2, "group")])
def test_sigterm_saves_the_iteration_and_resume_reproduces_the_losses(
    reference, tmp_path, workers, target
):
    out = tmp_path / "run"
    status, err = _preempt(out, workers, target)
    stopped = _check_preempted(out, status, err)
    if target == "group":  # the same checkpoint, resumed on 1 process (batch 2 on one rank)
        one = tmp_path / "one"
        one.mkdir()
        for f in ("last_checkpoint", f"model_{stopped:07d}.pth"):
            (one / f).write_bytes((out / f).read_bytes())
        short = ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", str(stopped + 3)]
        r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(one, 0), *short])
        check_ok(r)
        assert f"Starting training from iteration {stopped + 1}" in r.stdout
        assert "Resuming a 2-process checkpoint on 1 processes" in r.stdout
        assert (one / "model_final.pth").exists()
    r = run(["--config-file", SEMANTIC_CFG, "--num-gpus", "2", "--resume", *_opts(out, workers)])
    check_ok(r)
    assert f"Starting training from iteration {stopped + 1}" in r.stdout
    assert_same_losses(reference, out, MAX_ITER)


def test_evaluation_during_a_2_process_run_equals_a_1_process_eval_only(reference, tmp_path):
    with open(reference / "metrics.json") as f:
        during = [json.loads(line) for line in f if '"sem_seg/mIoU"' in line]
    at_period = next(d for d in during if d["iteration"] == EVAL_AT - 1)
    weights = reference / f"model_{EVAL_AT - 1:07d}.pth"
    opts = [*SMALL_SEMANTIC_OPTS, "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(weights)]
    check_ok(run(["--config-file", SEMANTIC_CFG, "--eval-only", *opts]))
    with open(tmp_path / "eval_results.json") as f:
        alone = json.load(f)["sem_seg"]
    assert 0 < alone["mIoU"] < 100
    for k, v in alone.items():
        assert at_period[f"sem_seg/{k}"] == pytest.approx(v, abs=1e-9), k


def _global_batches(world_size, batch, start_iter, n_iters, seed=7, size=11):
    """Global batches ``start_iter ..`` as the loader forms them: rank r takes every
    ``world_size``-th position of the stream and batches ``batch // world_size`` of them."""
    per_rank = batch // world_size
    out = [set() for _ in range(n_iters)]
    for rank in range(world_size):
        s = ResumableTrainingSampler(size=size, seed=seed, start_position=start_iter * batch)
        s.rank, s.world_size = rank, world_size
        items = iter(s)
        for i in range(n_iters):
            out[i] |= {next(items) for _ in range(per_rank)}
    return out


@pytest.mark.parametrize("before,after", [(2, 1), (1, 4), (4, 2)])
def test_global_batches_after_a_resume_do_not_depend_on_the_process_count(before, after):
    uninterrupted = _global_batches(before, batch=4, start_iter=0, n_iters=12)
    resumed = _global_batches(after, batch=4, start_iter=5, n_iters=7)
    assert resumed == uninterrupted[5:]
    # Reference: batch i is stream positions 4i..4i+3, each with its epoch permutation's index.
    one = ResumableTrainingSampler(size=11, seed=7)
    one.rank, one.world_size = 0, 1
    stream = list(itertools.islice(iter(one), 48))
    assert uninterrupted[6] == {(p, idx) for p, idx in stream if 24 <= p < 28}


def test_a_changed_layout_is_named_in_one_warning(caplog):
    saved = {"world_size": 4, "ims_per_batch": 16, "aspect_ratio_grouping": True}
    cases = [
        (dict(world_size=4, ims_per_batch=8, grouped=True), "SOLVER.IMS_PER_BATCH 8 instead"),
        (dict(world_size=2, ims_per_batch=16, grouped=True), "batches are grouped per process"),
    ]
    for layout, fragment in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nrd_rsp"):
            JobLayoutHook(**layout).load_state_dict(saved)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and fragment in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nrd_rsp"):
        JobLayoutHook(world_size=2, ims_per_batch=16, grouped=False).load_state_dict(saved)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("same 16 samples" in r.getMessage() for r in caplog.records)


def test_the_launcher_forwards_preemption_signals_to_its_workers(tmp_path):
    marker = tmp_path / "got"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            f"signal.signal(signal.SIGUSR1, lambda *a: (open({str(marker)!r}, 'w').close(), "
            "sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        forward_signals(lambda: [child.pid], ["SIGUSR1"])
        os.kill(os.getpid(), signal.SIGUSR1)  # the launcher survives and passes it on
        assert child.wait(timeout=30) == 0 and marker.exists()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _sleep(ready):
    ready.set()
    time.sleep(60)


def test_processes_forked_from_a_rank_still_end_on_sigterm():
    """A pool worker forked after catch_signals (panopticapi's, at evaluation) must end on its
    pool's terminate(), not raise the rank's preemption flag."""
    import multiprocessing

    from nrd_rsp.engine.preemption import catch_signals, preemption_requested, release_signals

    before = signal.getsignal(signal.SIGTERM)
    catch_signals(["SIGTERM"])
    try:
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        child = ctx.Process(target=_sleep, args=(ready,))
        child.start()
        assert ready.wait(timeout=20)  # a signal right after fork may be lost by CPython itself
        child.terminate()
        child.join(timeout=20)
        assert child.exitcode == -signal.SIGTERM
        assert not preemption_requested()
        os.kill(os.getpid(), signal.SIGTERM)  # this process only raises its flag
        assert preemption_requested()
    finally:
        release_signals()
    assert signal.getsignal(signal.SIGTERM) is before and not preemption_requested()
