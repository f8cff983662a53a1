"""The step guard: every training step is checked after ``backward`` and before the optimizer
step, on every rank at once.

Detectron2's ``SimpleTrainer.run_step`` / ``AMPTrainer.run_step`` call ``after_backward()``
between ``backward`` and the optimizer step; the guard overrides that public hook point. The
step's loss dict reaches it through a forward hook on the model (the dict the trainer sums and
back-propagates). A non-finite loss term, or a fatal data-loader condition (too many skipped
samples, ``TrainingHealth.fatal_error``), raises on *every* rank (the findings are all-gathered
when the world size is > 1), so no rank is left waiting in a collective and the weights are
never updated from a non-finite gradient. The guard writes the skipped-sample totals over ranks
and the loss terms averaged over ranks into the shared :class:`TrainingHealth`. It reads the loss
terms to the host with one transfer per step (a single ``tolist`` of the stacked terms).

With ``SOLVER.AMP.ENABLED`` the inner trainer is :class:`GuardedAMPTrainer`, autocast in
``SOLVER.AMP.PRECISION`` on the model's device, CPU included (:mod:`.precision`).
"""

import logging
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from ..errors import NonFiniteLossError, TooManyBadSamplesError
from ..training_health import TrainingHealth
from .determinism import setup_determinism
from .precision import DeviceAMPTrainer, amp_dtype, describe_precision

__all__ = ["GuardedSimpleTrainer", "GuardedAMPTrainer", "build_guarded_trainer"]

logger = logging.getLogger("nrd_rsp")


class _Report(NamedTuple):
    """One rank's findings at a step, all-gathered by the guard."""

    non_finite: List[str]  # "term=value" of the non-finite loss terms (when checked)
    data_error: Optional[str]  # the loader's fatal error (``TrainingHealth.fatal_error``)
    skipped: int  # samples this rank's loader skipped, and loaded, so far
    seen: int
    losses: Dict[str, float]  # {term: value}


class _GuardedStepMixin:
    """The step guard (module docstring) for a Detectron2 ``SimpleTrainer`` subclass.

    Args (keyword-only, besides the trainer's own):
        health: the run's :class:`TrainingHealth` (read: ``num_seen``, ``num_skipped``,
            ``fatal_error``; written: ``skip_totals``, ``last_losses``).
        check_finite: stop on a non-finite loss term (``SOLVER.CHECK_FINITE_LOSS``).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        health: TrainingHealth,
        check_finite: bool = True,
        **kwargs,
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.health = health
        self.check_finite = check_finite
        self._loss_dict: Optional[Dict[str, torch.Tensor]] = None
        model.register_forward_hook(self._record_losses)

    def _record_losses(self, module, inputs, output):
        """Forward hook: keep the training loss dict of this step (a tensor: ``total_loss``)."""
        if module.training:
            self._loss_dict = {"total_loss": output} if torch.is_tensor(output) else output

    def run_step(self):
        self._loss_dict = None
        try:
            super().run_step()
        except FloatingPointError as e:
            if isinstance(e, NonFiniteLossError):
                raise
            # Detectron2's own divergence checks (e.g. "Predicted boxes or scores contain
            # Inf/NaN") fire inside the forward pass, on the rank that diverged.
            raise NonFiniteLossError(
                f"Training diverged at iteration {self.iter}: {e} Lower SOLVER.BASE_LR, increase "
                "SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS (with a FrozenBN backbone, "
                "start from ImageNet weights), then --resume."
            ) from e
        finally:
            self._loss_dict = None

    def after_backward(self):
        """Detectron2's hook point between ``backward`` and the optimizer step."""
        super().after_backward()
        if self._loss_dict is not None:
            self._guard_step(self._loss_dict, self.iter)

    def _local_report(self, loss_dict) -> _Report:
        # One device-to-host transfer for all terms (not one .item() per term).
        terms = [v.detach().float().mean() for v in loss_dict.values()]
        terms = torch.stack(terms).tolist() if terms else []
        values = dict(zip(loss_dict.keys(), terms))
        bad = [f"{k}={v}" for k, v in values.items() if not np.isfinite(v)]
        h = self.health
        return _Report(
            non_finite=bad if self.check_finite else [],
            data_error=h.fatal_error,
            skipped=h.num_skipped,
            seen=h.num_seen,
            losses=values,
        )

    def _guard_step(self, loss_dict, iteration: int) -> None:
        report = self._local_report(loss_dict)
        reports = comm.all_gather(report) if comm.get_world_size() > 1 else [report]
        mean = {k: float(np.mean([r.losses[k] for r in reports])) for k in report.losses}
        self.health.skip_totals = (sum(r.skipped for r in reports), sum(r.seen for r in reports))
        self.health.last_losses = {
            "iteration": int(iteration),
            "total_loss": float(sum(mean.values())),
            **mean,
        }
        _raise_on_findings(reports, iteration)


def _raise_on_findings(reports: List[_Report], iteration: int) -> None:
    """Raise, identically on every rank, the first fatal data error, else the non-finite terms
    of every rank."""
    ranked = len(reports) > 1
    data_errors = [(rank, r.data_error) for rank, r in enumerate(reports) if r.data_error]
    if data_errors:
        rank, msg = data_errors[0]
        raise TooManyBadSamplesError(
            f"Iteration {iteration}{f' (rank {rank})' if ranked else ''}: {msg}", all_ranks=True
        )
    bad_by_rank = [(rank, r.non_finite) for rank, r in enumerate(reports) if r.non_finite]
    if bad_by_rank:
        where = "; ".join(
            (f"rank {rank}: " if ranked else "") + ", ".join(terms) for rank, terms in bad_by_rank
        )
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {iteration}: {where}. Training stopped before the "
            "optimizer step, so the weights (and the last checkpoint) are not affected. Lower "
            "SOLVER.BASE_LR, increase SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then "
            "--resume.",
            all_ranks=True,
        )


class GuardedSimpleTrainer(_GuardedStepMixin, SimpleTrainer):
    """``SimpleTrainer`` with the step guard of ``_GuardedStepMixin``."""


class GuardedAMPTrainer(_GuardedStepMixin, DeviceAMPTrainer):
    """:class:`~.precision.DeviceAMPTrainer` (CUDA or CPU autocast, float16 with a GradScaler or
    bfloat16 without) with the step guard of ``_GuardedStepMixin``."""


def build_guarded_trainer(cfg, model, data_loader, optimizer, health: TrainingHealth):
    """The guarded inner trainer for ``cfg`` (AMP in ``SOLVER.AMP.PRECISION`` on
    ``MODEL.DEVICE`` or float32, ``SOLVER.CHECK_FINITE_LOSS``); logs the precision and applies
    ``DETERMINISTIC_ALGORITHMS`` to this process (:func:`.determinism.setup_determinism`)."""
    kwargs = {"health": health, "check_finite": cfg.SOLVER.CHECK_FINITE_LOSS}
    if cfg.SOLVER.AMP.ENABLED:
        cls = GuardedAMPTrainer
        kwargs["precision"] = amp_dtype(cfg)
        kwargs["device_type"] = torch.device(cfg.MODEL.DEVICE).type
    else:
        cls = GuardedSimpleTrainer
    if comm.is_main_process():
        logger.info(describe_precision(cfg))
    setup_determinism(cfg)  # after default_setup's cudnn.benchmark, before the first step
    return cls(model, data_loader, optimizer, **kwargs)
