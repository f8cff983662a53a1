#!/usr/bin/env python
"""Submit ``train_net.py`` to Slurm with submitit; preempted or timed-out jobs are requeued with
``--resume``.

    python tools/launch_slurm.py --config-file CFG --nodes 2 --gpus-per-node 8 \\
        --partition P --time 4320 [--account A] [--constraint C] [--mem GB] \\
        [--cpus-per-task K] [--job-dir DIR] [--name NAME] [KEY VALUE ...]
    python tools/launch_slurm.py --local --nodes 1 --gpus-per-node 2 --config-file CFG [KEY VAL]

Every task of the job is one rank (``--gpus-per-node`` tasks per node): submitit's
``TorchDistributedEnvironment`` exports its rank and the master address, and ``train_net.py``
joins that job (``nrd_rsp.engine.launch``). Slurm sends ``SIGUSR2`` ``--signal-delay`` seconds
before the time limit (and on preemption): every rank saves the current iteration
(``nrd_rsp.engine.preemption``), then submitit's checkpoint hook resubmits the same command with
``--resume`` and requeues the job.

``--local`` runs the job through submitit's local executor on this machine (CPU/Gloo without a
GPU), waits, and exits with the job's status; a SIGTERM to this command preempts the local job,
which is requeued the same way. The job's logs are in ``--job-dir`` (default
``OUTPUT_DIR/submitit``).
"""

import os
import signal
import sys

import submitit
from submitit.core.job_environment import JobEnvironment

from nrd_rsp.engine import setup_cfg
from nrd_rsp.engine.preemption import PREEMPTED_EXIT_STATUS, forward_signals
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, RunError, exit_on_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
NO_SLURM = (
    "Cannot submit to Slurm from this machine: run this on a Slurm login node, or pass --local "
    "to run the job here"
)


class TrainJob(submitit.helpers.Checkpointable):
    """``train_net.py ARGV`` as one task (rank) of a submitit job."""

    def __init__(self, argv):
        self.argv = list(argv)

    def __call__(self):
        import runpy

        submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        usr_sig = JobEnvironment._usr_sig()
        requeue = signal.getsignal(usr_sig)  # submitit's checkpoint-and-requeue handler
        signals = f"('SIGTERM', 'SIGUSR1', '{signal.Signals(usr_sig).name}')"
        argv = self.argv + ["PREEMPTION.SIGNALS", signals]
        cli = runpy.run_path(TRAIN_NET, run_name="nrd_rsp_train_net")["cli"]
        try:
            status = cli(argv)
        except SystemExit as e:
            status = e.code
        if status == PREEMPTED_EXIT_STATUS and callable(requeue):
            requeue(usr_sig, None)  # rank 0: self.checkpoint(), requeue, exit
        if status:
            sys.exit(status)
        return 0

    def checkpoint(self, *args, **kwargs):
        """The same command with ``--resume`` (submitit calls this before requeueing)."""
        argv = self.argv if "--resume" in self.argv else ["--resume", *self.argv]
        return submitit.helpers.DelayedSubmission(TrainJob(argv))


def build_parser():
    p = OneLineArgumentParser(prog="launch_slurm.py", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="= tasks (ranks) per node")
    p.add_argument("--partition", default="")
    p.add_argument("--time", type=int, default=4320, help="time limit in minutes")
    p.add_argument("--account", default="")
    p.add_argument("--constraint", default="")
    p.add_argument("--mem", type=int, default=0, help="memory per node in GB (0: Slurm's)")
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--job-dir", default="", help="submitit's folder (default OUTPUT_DIR/submitit)")
    p.add_argument("--name", default="nrd_rsp")
    p.add_argument(
        "--signal-delay", type=int, default=120, help="seconds of warning before the limit"
    )
    p.add_argument("--resume", action="store_true", help="resume from OUTPUT_DIR's last_checkpoint")
    p.add_argument("--local", action="store_true", help="run here with submitit's local executor")
    p.add_argument("opts", nargs="...", default=[], help="config overrides: KEY VALUE pairs")
    return p


def build_executor(args, job_dir):
    """submitit's executor for ``args`` (Slurm, or local with ``--local``)."""
    import torch

    if args.nodes < 1 or args.gpus_per_node < 1:
        raise ConfigError("--nodes and --gpus-per-node must be at least 1.")
    if args.local and args.nodes != 1:
        raise ConfigError("--local runs on this machine: use --nodes 1.")
    common = dict(
        nodes=args.nodes,
        tasks_per_node=args.gpus_per_node,
        timeout_min=args.time,
        stderr_to_stdout=False,
    )
    if args.local:
        executor = submitit.LocalExecutor(folder=job_dir)
        gpus = args.gpus_per_node if torch.cuda.is_available() else 0
        executor.update_parameters(**common, gpus_per_node=gpus, signal_delay_s=args.signal_delay)
        return executor
    try:
        executor = submitit.AutoExecutor(folder=job_dir, cluster="slurm")
    except RuntimeError as e:  # submitit finds no srun
        raise ConfigError(f"{NO_SLURM} ({e})") from None
    params = dict(
        common,
        name=args.name,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        slurm_signal_delay_s=args.signal_delay,
    )
    if args.mem:
        params["mem_gb"] = args.mem
    for key in ("partition", "account", "constraint"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    executor.update_parameters(**params)
    return executor


def _wait(job) -> int:
    """Wait for a local job (a SIGTERM/SIGUSR1 here preempts it); its exit status."""
    forward_signals(lambda: [int(job.job_id)], ["SIGTERM", "SIGUSR1"])
    job.wait()
    try:
        job.results()
    except Exception as e:
        raise RunError(
            f"the local job failed ({str(e).strip().splitlines()[-1]}); its logs: "
            f"{job.paths.folder}"
        ) from None
    return 0


@exit_on_error
def cli(argv=None):
    args = build_parser().parse_args(argv)
    opts = list(args.opts)
    cfg = setup_cfg(args.config_file, opts, quiet=True)  # a wrong config fails here, not in Slurm
    job_dir = args.job_dir or os.path.join(cfg.OUTPUT_DIR, "submitit")
    executor = build_executor(args, job_dir)
    train_argv = ["--config-file", os.path.abspath(args.config_file), *opts]
    try:
        job = executor.submit(TrainJob((["--resume"] if args.resume else []) + train_argv))
    except FileNotFoundError as e:  # no sbatch here
        raise ConfigError(f"{NO_SLURM} ({e.filename or e}: not found)") from None
    print(
        f"Submitted job {job.job_id} ({args.nodes} x {args.gpus_per_node} ranks); logs in {job_dir}"
    )
    return _wait(job) if args.local else 0


if __name__ == "__main__":
    sys.exit(cli())
