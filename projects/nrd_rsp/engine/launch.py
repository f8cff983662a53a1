"""How ``train_net.py`` joins or starts a multi-process job.

Three ways to run N processes, one command line for all of them:

* **Spawned here** (Detectron2's ``launch``): ``--num-gpus G [--num-machines M --machine-rank R
  --dist-url tcp://HOST:PORT]``. One machine without ``--dist-url`` takes a free port, so two jobs
  on one machine never collide; a taken port is one line naming it.
* **Started by torchrun** (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``): this process *is* one rank; it joins the job.
  An elastic restart (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes from ``last_checkpoint``.
* **Started by srun**, one task per GPU (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
  ``SLURM_LOCALID``; the master is the first node of the job, read by submitit's
  ``SlurmJobEnvironment``; the port is ``MASTER_PORT`` or derived from the job id as submitit
  does).

``--num-gpus`` / ``--num-machines`` that disagree with a launcher's environment are one line.
"""

import dataclasses
import logging
import os
import random
import socket
from datetime import timedelta
from typing import Mapping, Optional
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..errors import ConfigError

__all__ = [
    "LaunchEnv",
    "launcher_env",
    "check_args_against_env",
    "free_port",
    "resolve_dist_url",
    "join_job",
    "elastic_restart_count",
]

logger = logging.getLogger("nrd_rsp")

# Detectron2's DEFAULT_TIMEOUT; a failed rank stops the others long before (engine/abort.py).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)
_SLURM_PORT_RANGE = (20000, 60000)  # submitit's TorchDistributedEnvironment


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a job started by an external launcher."""

    launcher: str  # "torchrun" or "srun"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size


_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ConfigError(f"Environment variable {key}={environ[key]!r} is not an integer.")


def _torchrun_env(environ: Mapping[str, str]) -> LaunchEnv:
    world = _int(environ, "WORLD_SIZE")
    local_world = _int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else world
    return LaunchEnv(
        launcher="torchrun",
        rank=_int(environ, "RANK"),
        world_size=world,
        local_rank=_int(environ, "LOCAL_RANK"),
        local_world_size=local_world,
        master_addr=environ["MASTER_ADDR"],
        master_port=_int(environ, "MASTER_PORT"),
    )


def _srun_env(environ: Mapping[str, str]) -> LaunchEnv:
    from submitit.slurm.slurm import SlurmJobEnvironment

    slurm = SlurmJobEnvironment()
    world = _int(environ, "SLURM_STEP_NUM_TASKS")
    nodes = _int(environ, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in environ else 1
    if "MASTER_PORT" in environ:
        port = _int(environ, "MASTER_PORT")
    else:
        port = random.Random(slurm.job_id).randint(*_SLURM_PORT_RANGE)
    hosts = slurm.hostnames
    return LaunchEnv(
        launcher="srun",
        rank=_int(environ, "SLURM_PROCID"),
        world_size=world,
        local_rank=_int(environ, "SLURM_LOCALID"),
        local_world_size=max(1, world // max(1, nodes)),
        master_addr=environ.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
        master_port=port,
    )


def launcher_env(environ: Optional[Mapping[str, str]] = None) -> Optional[LaunchEnv]:
    """The job this process was started into by torchrun (or anything that sets its variables,
    like submitit's ``TorchDistributedEnvironment``) or by ``srun`` with more than one task;
    None when it was started alone (then ``train_net.py`` spawns its own processes)."""
    environ = os.environ if environ is None else environ
    if all(k in environ for k in _TORCHRUN_KEYS):
        return _torchrun_env(environ)
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        return _srun_env(environ)
    return None


def elastic_restart_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """How often torchrun has restarted this job's workers (``--max-restarts``)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def check_args_against_env(args, env: LaunchEnv) -> None:
    """Fill ``args.num_gpus`` / ``num_machines`` / ``machine_rank`` from ``env``; ConfigError
    when the user passed values that disagree with it."""
    given = {"--num-gpus": args.num_gpus, "--num-machines": args.num_machines}
    wanted = {"--num-gpus": env.local_world_size, "--num-machines": env.num_machines}
    wrong = [f"{k} {v}" for k, v in given.items() if v is not None and v != wanted[k]]
    if wrong:
        raise ConfigError(
            f"{' and '.join(wrong)} disagree with {env.launcher}, which started "
            f"{env.world_size} processes ({env.local_world_size} per machine on "
            f"{env.num_machines} machine(s)): drop {' and '.join(w.split()[0] for w in wrong)} "
            f"(the launcher decides), or launch with matching {env.launcher} options."
        )
    args.num_gpus = env.local_world_size
    args.num_machines = env.num_machines
    args.machine_rank = env.rank // env.local_world_size


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _is_local(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", "") or host.startswith("127."):
        return True
    try:
        return (
            host in (socket.gethostname(), socket.getfqdn())
            or socket.gethostbyname(host) in socket.gethostbyname_ex(socket.gethostname())[2]
        )
    except OSError:
        return False


def resolve_dist_url(dist_url: Optional[str], num_machines: int, machine_rank: int) -> str:
    """The ``--dist-url`` of a spawned job: a free port on 127.0.0.1 for one machine without one
    (or with ``auto``); ConfigError for several machines without one, or when the port that
    machine 0 must listen on is taken."""
    if dist_url in (None, "", "auto"):
        if num_machines > 1:
            raise ConfigError(
                f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT, with HOST the "
                "address of machine 0 and PORT a free port there, the same on every machine."
            )
        return f"tcp://127.0.0.1:{free_port()}"
    url = urlparse(dist_url)
    if url.scheme == "tcp" and machine_rank == 0 and url.port and _is_local(url.hostname or ""):
        host = "" if url.hostname not in ("127.0.0.1", "localhost") else url.hostname
        if _port_taken(host, url.port):
            raise ConfigError(
                f"Port {url.port} of --dist-url {dist_url} is taken on this machine (another "
                f"job?): pass --dist-url tcp://{url.hostname}:<free port>"
                + (", or leave --dist-url out to take a free port." if num_machines == 1 else ".")
            )
    return dist_url


def _job_store(env: LaunchEnv, timeout: timedelta):
    """The job's c10d store, its keys under this torchrun attempt: torchrun's agent store (when it
    serves one) keeps the keys of the attempt before an elastic restart, and stale addresses
    there would make the restarted ranks connect to dead peers. Otherwise rank 0 hosts it."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        env.master_addr,
        env.master_port,
        env.world_size,
        is_master=not agent and env.rank == 0,
        timeout=timeout,
    )
    return dist.PrefixStore(f"nrd_rsp/attempt_{elastic_restart_count()}/", store)


def join_job(env: LaunchEnv, timeout: timedelta = PROCESS_GROUP_TIMEOUT) -> None:
    """Join the process group of ``env`` (NCCL with CUDA, else Gloo) and set up Detectron2's
    per-machine group, as Detectron2's ``launch`` does for the processes it spawns."""
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    try:
        store = _job_store(env, timeout)
    except Exception as e:
        raise ConfigError(
            f"Rank {env.rank} cannot reach the job's store at {env.master_addr}:"
            f"{env.master_port} ({type(e).__name__}: {' '.join(str(e).split())[:200]}): check "
            "MASTER_ADDR / MASTER_PORT (a port taken by another job?)."
        ) from None
    dist.init_process_group(
        backend="NCCL" if has_gpu else "GLOO",
        store=store,
        world_size=env.world_size,
        rank=env.rank,
        timeout=timeout,
    )
    comm.create_local_process_group(env.local_world_size)
    comm.synchronize()
