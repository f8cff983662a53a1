"""End to end with train_net.py: a SIGKILLed run resumes to exactly the losses of an
uninterrupted one (also across DATALOADER.NUM_WORKERS), --resume skips a corrupt last checkpoint
and refuses to restart when none is readable, and evaluation gives the same metrics in 1 and 2
processes and with any number of data loader workers."""
import json
import os
import signal
import time

import pytest
import torch

from rel_utils import SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, check_ok, error_lines, popen, read_losses, run

MAX_ITER = 6


def _opts(out, workers, test=True):
    return [*SMALL_SEMANTIC_OPTS, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(MAX_ITER),
            "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", str(workers),
            *([] if test else ["DATASETS.TEST", "()"])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with 2 data loader workers, evaluated at the end."""
    out = tmp_path_factory.mktemp("reference")
    check_ok(run(["--config-file", SEMANTIC_CFG, *_opts(out, workers=2)]))
    return out


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A run without workers, SIGKILLed right after its first checkpoint, then resumed."""
    out = tmp_path_factory.mktemp("killed")
    proc = popen(["--config-file", SEMANTIC_CFG, *_opts(out, workers=0, test=False)], out / "killed.log")
    deadline = time.time() + 500
    while not (out / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (out / "killed.log").read_text()[-3000:]
    assert not (out / "model_final.pth").exists()  # killed mid-training
    killed_at = max(read_losses(out))
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    check_ok(r)
    return out, killed_at, r.stdout + r.stderr


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(reference, killed_and_resumed):
    out, killed_at, log = killed_and_resumed
    saved = [int(line.split("Starting training from iteration ")[1]) for line in log.splitlines()
             if "Starting training from iteration" in line]
    assert len(saved) == 1 and 2 <= saved[0] <= killed_at + 1  # resumed after the last saved checkpoint
    # The final iteration count is MAX_ITER.
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=False)["trainer"]["iteration"] == MAX_ITER - 1
    ref, got = read_losses(reference), read_losses(out)
    assert sorted(ref) == sorted(got) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        for entry in got[it]:  # iterations run twice (killed after, resumed before) agree too
            assert entry.keys() == ref[it][0].keys()
            for k, v in entry.items():
                assert v == pytest.approx(ref[it][0][k], abs=1e-5), (it, k)


def test_resume_falls_back_from_corrupt_checkpoint_and_never_restarts_silently(killed_and_resumed):
    out, _, _ = killed_and_resumed
    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # truncated, e.g. disk full
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    check_ok(r)
    log = r.stdout + r.stderr
    assert f"Cannot resume from {final}" in log
    assert f"Resumed from {out / 'model_0000005.pth'} instead" in log
    assert f"Starting training from iteration {MAX_ITER}" in log
    # No readable checkpoint at all: a clear error, not a silent fresh start.
    for f in os.listdir(out):
        if f.endswith(".pth"):
            (out / f).write_bytes(b"\0" * 64)
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert lines[-1].startswith("ERROR: --resume: no readable checkpoint in") and "model_0000005.pth" in lines[-1]
    assert "Starting training" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def _eval(out, weights, flags, opts):
    r = run(["--config-file", SEMANTIC_CFG, "--eval-only", *flags, *SMALL_SEMANTIC_OPTS, "OUTPUT_DIR", str(out),
             "MODEL.WEIGHTS", str(weights), *opts])
    check_ok(r)
    with open(out / "eval_results.json") as f:
        return json.load(f)


def test_evaluation_is_identical_across_processes_and_workers(reference, tmp_path):
    with open(reference / "eval_results.json") as f:
        during_training = json.load(f)  # 1 process, 2 workers
    one = _eval(tmp_path / "one", reference / "model_final.pth", [], ["DATALOADER.NUM_WORKERS", "0"])
    # (Data loader workers of launched processes are spawned, i.e. slow to start: none here.)
    two = _eval(tmp_path / "two", reference / "model_final.pth", ["--num-gpus", "2", "--dist-url", "auto"],
                ["DATALOADER.NUM_WORKERS", "0"])
    sem = during_training["sem_seg"]
    assert 0 < sem["mIoU"] < 100 and len(sem) > 10
    for res in (one, two):
        assert res["sem_seg"].keys() == sem.keys()
        for k, v in sem.items():
            assert res["sem_seg"][k] == pytest.approx(v, abs=1e-9), k
