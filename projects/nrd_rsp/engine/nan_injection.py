"""Test-only fault injection, through a forward hook at a chosen training iteration (and rank):
a NaN loss that flows into ``backward`` exactly like a real divergence
(``NRD_RSP_INJECT_NAN_LOSS``), or an exception raised in the step (``NRD_RSP_INJECT_ERROR``:
``RuntimeError``, with ``:fpe`` the ``FloatingPointError`` of Detectron2's RPN check, with
``:loader`` a ``RuntimeError`` in the data loader, i.e. in a worker process when there are
workers)."""

import logging
import os

from detectron2.utils import comm

from ..data.resumable_loader import ResumableMapDataset

__all__ = [
    "NAN_INJECTION_ENV",
    "ERROR_INJECTION_ENV",
    "install_nan_injection",
    "install_loader_fault",
]

logger = logging.getLogger("nrd_rsp")

NAN_INJECTION_ENV = "NRD_RSP_INJECT_NAN_LOSS"
ERROR_INJECTION_ENV = "NRD_RSP_INJECT_ERROR"


def _parse(spec: str):
    """``ITER[@RANK][:KIND]`` -> (iteration, rank or None, kind)."""
    spec, _, kind = spec.partition(":")
    it, _, rank = spec.partition("@")
    return int(it), (int(rank) if rank else None), kind


class _FailingMapDataset(ResumableMapDataset):
    """A :class:`ResumableMapDataset` that raises from stream position ``fail_from`` on (module
    level: data loader workers may receive it pickled)."""

    fail_from = 0

    def __getitem__(self, key):
        p = key[0] if isinstance(key, tuple) else int(key)
        if p >= self.fail_from:
            raise RuntimeError(f"injected loader fault at stream position {p}")
        return super().__getitem__(key)


def _failing_loader(data_loader, first_position: int, rank):
    """Make the mapped dataset of ``data_loader`` raise from stream position ``first_position``
    on (on ``rank`` only)."""
    dataset = getattr(data_loader, "dataset", None)
    if isinstance(dataset, ResumableMapDataset) and rank in (None, comm.get_rank()):
        dataset.__class__ = _FailingMapDataset
        dataset.fail_from = first_position


def _first_attempt() -> bool:
    """Whether this is a job's first attempt (a torchrun elastic restart runs clean)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def install_loader_fault(data_loader, ims_per_batch: int) -> None:
    """With ``NRD_RSP_INJECT_ERROR=ITER[@RANK]:loader`` in the environment, make the mapped
    dataset of ``data_loader`` raise from the first stream position of iteration ``ITER`` on
    (``ims_per_batch`` positions per iteration). A no-op otherwise."""
    spec = os.environ.get(ERROR_INJECTION_ENV, "")
    if not spec:
        return
    it, rank, kind = _parse(spec)
    if kind != "loader":
        return
    logger.warning(f"{ERROR_INJECTION_ENV}={spec}: an error will be raised at iteration {it}")
    if _first_attempt():
        _failing_loader(data_loader, it * ims_per_batch, rank)


def _install_error_injection(model, trainer) -> None:
    spec = os.environ.get(ERROR_INJECTION_ENV, "")
    if not spec:
        return
    it, rank, kind = _parse(spec)
    if kind == "loader":
        return  # install_loader_fault
    logger.warning(f"{ERROR_INJECTION_ENV}={spec}: an error will be raised at iteration {it}")
    first_attempt = _first_attempt()

    def hook(module, inputs, output):
        hit = trainer.iter == it and rank in (None, comm.get_rank())
        if module.training and hit and first_attempt:
            if kind == "fpe":
                raise FloatingPointError("Predicted boxes or scores contain Inf/NaN (injected).")
            raise RuntimeError(f"injected fault at iteration {it}")
        return output

    model.register_forward_hook(hook)


def install_nan_injection(model, trainer) -> None:
    """With ``NRD_RSP_INJECT_NAN_LOSS=ITER`` (or ``ITER@RANK``) in the environment, make the
    first loss term of ``model`` NaN at ``trainer.iter == ITER`` (on rank RANK only); with
    ``NRD_RSP_INJECT_ERROR`` (not ``:loader``), raise in the step. Install it before any other
    forward hook that reads the losses. A no-op without the variables."""
    _install_error_injection(model, trainer)
    spec = os.environ.get(NAN_INJECTION_ENV, "")
    if not spec:
        return
    it, rank, _ = _parse(spec)
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
