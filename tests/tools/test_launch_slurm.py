"""tools/launch_slurm.py: the sbatch script it asks submitit for, a one-line error without
Slurm, a ``--local`` job that finishes, and a local job preempted mid-training that is requeued
with ``--resume`` and ends with the weights of an uninterrupted job."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TOY_OPTS

pytestmark = pytest.mark.slow

sys.path.insert(0, os.path.join(ROOT, "tools"))
import launch_slurm  # noqa: E402

SEMANTIC_CFG = "configs/Toy/semantic_fpn_R_18_toy.yaml"
SMALL = TOY_OPTS + [
    "DATASETS.TOY.IMAGE_SIZE", "(64, 80)", "INPUT.RESIZE_BASE_SIZE", "(64, 80)",
    "INPUT.CROP.SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "TEST.NUM_VIS_IMAGES", "0", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _cmd(*args):
    return [sys.executable, os.path.join(ROOT, "tools", "launch_slurm.py"), *args]


def test_the_sbatch_script_carries_the_job_and_its_warning_signal(tmp_path, monkeypatch):
    srun = tmp_path / "bin" / "srun"  # submitit looks for srun on the PATH
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    args = launch_slurm.build_parser().parse_args(
        ["--config-file", SEMANTIC_CFG, "--nodes", "2", "--gpus-per-node", "8",
         "--partition", "learn", "--time", "600", "--account", "acc", "--constraint", "h100",
         "--mem", "400", "--cpus-per-task", "12", "--name", "rsp"]
    )  # fmt: skip
    executor = launch_slurm.build_executor(args, str(tmp_path))
    script = executor._executor._make_submission_file_text("CMD", "uid")
    for line in ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=learn",
                 "--time=600", "--account=acc", "--constraint=h100", "--mem=400GB",
                 "--cpus-per-task=12", "--job-name=rsp", "--signal=USR2@120"]:  # fmt: skip
        assert f"#SBATCH {line}\n" in script, (line, script)
    job = launch_slurm.TrainJob(["--config-file", "c.yaml", "A", "1"])
    assert job.checkpoint().function.argv == ["--resume", "--config-file", "c.yaml", "A", "1"]


def test_without_slurm_submitting_is_one_line(tmp_path):
    env = dict(ENV, PATH=str(tmp_path))  # no srun or sbatch on the PATH
    r = subprocess.run(
        _cmd("--config-file", SEMANTIC_CFG, "--nodes", "1", "--gpus-per-node", "2",
             "OUTPUT_DIR", str(tmp_path)),  # fmt: skip
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln or "Traceback" in ln]
    assert r.returncode == 2 and len(errors) == 1 and "--local" in errors[0], r.stderr[-2000:]


def test_a_local_job_finishes_with_final_weights(tmp_path):
    out = tmp_path / "out"
    args = ["--local", "--nodes", "1", "--gpus-per-node", "2", "--config-file", SEMANTIC_CFG]
    r = subprocess.run(
        _cmd(*args, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)),
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (out / "model_final.pth").exists()
    assert (out / "log.txt").read_text().count("World size: 2") == 1


def _local_job(out, max_iter, preempt_at=None):
    args = ["--local", "--nodes", "1", "--gpus-per-node", "2", "--config-file", SEMANTIC_CFG]
    proc = subprocess.Popen(
        _cmd(*args, *SMALL, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(out)),
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if preempt_at is not None:
        losses, deadline = out / "losses.jsonl", time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if losses.exists() and len(losses.read_text().splitlines()) >= preempt_at:
                proc.send_signal(signal.SIGTERM)  # forwarded to the job's tasks
                break
            time.sleep(0.05)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def test_a_preempted_local_job_is_requeued_and_ends_like_an_uninterrupted_one(tmp_path):
    reference = _local_job(tmp_path / "ref", max_iter=20)
    got = _local_job(tmp_path / "pre", max_iter=20, preempt_at=8)
    logs = "".join(p.read_text() for p in (tmp_path / "pre" / "submitit").glob("*_log.*"))
    assert "Requeued job" in logs and "Starting training from iteration 0" in logs
    resumed = [ln for ln in logs.splitlines() if "Starting training from iteration " in ln]
    assert any(int(ln.rsplit(" ", 1)[1]) > 1 for ln in resumed), resumed
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k


@pytest.fixture(autouse=True)
def _no_stray_handlers():
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
