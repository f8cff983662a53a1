"""Test-only fault injection: a NaN loss at a chosen training iteration (and rank), through a
forward hook, so that it flows into ``backward`` exactly like a real divergence."""

import logging
import os

from detectron2.utils import comm

__all__ = ["NAN_INJECTION_ENV", "install_nan_injection"]

logger = logging.getLogger("nrd_rsp")

NAN_INJECTION_ENV = "NRD_RSP_INJECT_NAN_LOSS"


def install_nan_injection(model, trainer) -> None:
    """With ``NRD_RSP_INJECT_NAN_LOSS=ITER`` (or ``ITER@RANK``) in the environment, make the
    first loss term of ``model`` NaN at ``trainer.iter == ITER`` (on rank RANK only). Install it
    before any other forward hook that reads the losses. A no-op without the variable."""
    spec = os.environ.get(NAN_INJECTION_ENV, "")
    if not spec:
        return
    it, _, rank = spec.partition("@")
    it, rank = int(it), (int(rank) if rank else None)
    logger.warning(f"{NAN_INJECTION_ENV}={spec}: a NaN loss will be injected at iteration {it}")

    def hook(module, inputs, output):
        if not (module.training and isinstance(output, dict) and output):
            return output
        if trainer.iter == it and (rank is None or rank == comm.get_rank()):
            key = sorted(output)[0]
            output = dict(output)
            output[key] = output[key] * float("nan")
        return output

    model.register_forward_hook(hook)
