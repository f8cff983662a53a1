"""nrd_rsp.engine.job.run_job in one process: the preemption signals are caught while the job
runs and given back afterwards, whether it ends normally or with an error."""

import signal
from types import SimpleNamespace

import pytest

from nrd_rsp.engine.job import run_job
from nrd_rsp.engine.preemption import preemption_requested


@pytest.mark.parametrize("fails", [False, True])
def test_single_process_job_gives_the_signal_handlers_back(fails):
    before = signal.getsignal(signal.SIGUSR2)
    seen = []

    def main(args):  # an eval-only run: no training hook releases the signals
        seen.append(signal.getsignal(signal.SIGUSR2))
        signal.raise_signal(signal.SIGUSR2)  # caught: only raises the flag
        seen.append(preemption_requested())
        if fails:
            raise RuntimeError("evaluation failed")

    args = SimpleNamespace(num_gpus=1, num_machines=1)
    if fails:
        with pytest.raises(RuntimeError):
            run_job(main, args, None, ["SIGUSR2"])
    else:
        assert run_job(main, args, None, ["SIGUSR2"]) == 0
    assert seen[0] is not before and seen[1] is True
    assert signal.getsignal(signal.SIGUSR2) is before and not preemption_requested()
