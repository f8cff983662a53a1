"""How ``train_net.py`` runs as a multi-process job: started by torchrun or srun it joins their
job (one world of 2, not two worlds of 1), an elastic restart resumes, ports never collide, a
taken port or a disagreeing ``--num-gpus`` is one line, and a fatal error on one of two
"machines" (two launchers on loopback) stops both within 60 s."""

import os
import socket
import subprocess
import sys
import time

import pytest
from run_helpers import ENV, ROOT, SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, check_ok, error_lines, run

from nrd_rsp.engine.launch import LaunchEnv, launcher_env, resolve_dist_url
from nrd_rsp.errors import ConfigError

pytestmark = pytest.mark.slow

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
TORCHRUN_ENV.update(MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")
# srun --nodes 2 --ntasks-per-node 2, third task.
SRUN_ENV = {"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "4"}
SRUN_ENV.update(SLURM_STEP_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[017-018]", SLURM_JOB_ID="4242")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opts(out, max_iter=4):
    return [*SMALL_SEMANTIC_OPTS, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(max_iter),
            "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(k, None)
    env.pop("MASTER_PORT", None)
    return dict(env, **ENV, **extra)


def test_launcher_environments_are_read(monkeypatch):
    assert launcher_env({}) is None
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None  # sbatch
    assert launcher_env(TORCHRUN_ENV) == LaunchEnv("torchrun", 1, 4, 1, 2, "10.0.0.1", 29500)
    for k, v in SRUN_ENV.items():
        monkeypatch.setenv(k, v)
    env = launcher_env(SRUN_ENV)
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("srun", 2, 4, 0)
    assert (env.local_world_size, env.num_machines, env.master_addr) == (2, 2, "gpu017")
    assert 20000 <= env.master_port <= 60000  # submitit's port for this job id, on every task
    assert launcher_env(dict(SRUN_ENV, MASTER_PORT="1234")).master_port == 1234


def test_ports_never_collide_and_a_taken_one_is_named():
    urls = {resolve_dist_url(None, 1, 0) for _ in range(3)}
    assert all(u.startswith("tcp://127.0.0.1:") for u in urls)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"Port {port} .* taken.*--dist-url"):
            resolve_dist_url(f"tcp://127.0.0.1:{port}", 1, 0)
        assert resolve_dist_url(f"tcp://127.0.0.1:{port}", 2, 1).endswith(str(port))  # not ours
    with pytest.raises(ConfigError, match="--num-machines 2 needs --dist-url"):
        resolve_dist_url(None, 2, 0)


def test_a_taken_port_and_a_disagreeing_num_gpus_are_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = ["--config-file", SEMANTIC_CFG, "--num-gpus", "2", *_opts(tmp_path)]
        r = run(["--dist-url", f"tcp://127.0.0.1:{port}", *args])
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and f"Port {port}" in lines[0], r.stderr
    env = dict(TORCHRUN_ENV, RANK="0", LOCAL_RANK="0")
    r = run(["--config-file", SEMANTIC_CFG, "--num-gpus", "8", *_opts(tmp_path)], env=env)
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--num-gpus 8 disagree with torchrun" in lines[0]


def _torchrun(out, *extra, env=None, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *extra, os.path.join(ROOT, "train_net.py"), "--config-file", SEMANTIC_CFG]  # fmt: skip
    return subprocess.run(
        [*cmd, *_opts(out, max_iter=6), "SOLVER.CHECKPOINT_PERIOD", "2"],
        cwd=ROOT,
        env=_clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_torchrun_runs_one_job_of_world_size_2(tmp_path):
    r = _torchrun(tmp_path)
    check_ok(r)
    log = r.stdout + r.stderr + (tmp_path / "log.txt").read_text()
    assert (tmp_path / "log.txt").read_text().count("World size: 2") == 1
    assert "World size: 1" not in log and (tmp_path / "log.txt.rank1").exists()
    assert (tmp_path / "model_final.pth").exists()


def test_a_torchrun_elastic_restart_resumes_from_last_checkpoint(tmp_path):
    # Rank 1 fails at iteration 3 in the first attempt; torchrun restarts both workers.
    r = _torchrun(tmp_path, "--max-restarts", "1", env={"NRD_RSP_INJECT_ERROR": "3@1"})
    check_ok(r)
    log = (tmp_path / "log.txt").read_text()
    assert "injected fault at iteration 3" in r.stdout + r.stderr
    assert "torchrun restart 1: resuming from last_checkpoint" in r.stdout
    assert "Starting training from iteration 0" in log and "from iteration 2" in log
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_srun_tasks_join_one_job(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = _clean_env(
            SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_NUM_TASKS="2",
            SLURM_STEP_NUM_NODES="1", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="77",
            MASTER_PORT=str(port),
        )  # fmt: skip
        cmd = [sys.executable, "train_net.py", "--config-file", SEMANTIC_CFG, *_opts(tmp_path)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "log.txt").read_text().count("World size: 2") == 1
    assert (tmp_path / "model_final.pth").exists()


@pytest.mark.parametrize("kind", ["", "fpe", "loader"])
def test_an_error_on_one_machine_stops_both_within_60s(tmp_path, kind):
    """Two launchers on loopback (--num-machines 2), an exception in rank 1's step (a
    RuntimeError, Detectron2's FloatingPointError) or in its data loader worker."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = _clean_env(NRD_RSP_INJECT_ERROR="3@1" + (f":{kind}" if kind else ""))
    procs = []
    for machine in range(2):
        cmd = [sys.executable, "train_net.py", "--config-file", SEMANTIC_CFG, "--num-gpus", "1",
               "--num-machines", "2", "--machine-rank", str(machine), "--dist-url", url,
               *_opts(tmp_path / str(machine), max_iter=200),
               "DATALOADER.NUM_WORKERS", "1" if kind == "loader" else "0"]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL
            )  # fmt: skip
        )
    errs = [procs[1].communicate(timeout=400)[1]]
    failed_at = time.time()
    errs.insert(0, procs[0].communicate(timeout=120)[1])
    assert time.time() - failed_at < 60
    expected = {"": "injected fault", "fpe": "Training diverged at iteration 3"}.get(
        kind, "injected loader fault at stream position"
    )
    for p, err in zip(procs, errs):
        lines = [ln for ln in err.splitlines() if "ERROR" in ln or "Error" in ln]
        assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert lines[0].startswith(("ERROR:", "[rank 1] ERROR:")) and expected in lines[0], lines
    assert "rank 1 stopped the job" in errs[0]


def test_two_machines_on_loopback_finish(tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    procs = []
    for machine in range(2):
        cmd = [sys.executable, "train_net.py", "--config-file", SEMANTIC_CFG, "--num-gpus", "1",
               "--num-machines", "2", "--machine-rank", str(machine), "--dist-url", url,
               *_opts(tmp_path / str(machine))]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_clean_env(), stderr=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, text=True))  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert (tmp_path / "0" / "model_final.pth").exists()
    assert (tmp_path / "0" / "log.txt").read_text().count("World size: 2") == 1
