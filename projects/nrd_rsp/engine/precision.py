"""Mixed precision: ``SOLVER.AMP.PRECISION`` and a device-aware AMP trainer.

* :func:`amp_dtype` reads ``SOLVER.AMP.PRECISION`` (``float16`` | ``bfloat16``);
* :func:`describe_precision`: the one log line that says what a run trains in;
* :class:`DeviceAMPTrainer`: Detectron2's ``AMPTrainer`` with ``torch.autocast`` on the
  model's device type (CUDA or CPU) instead of CUDA only, a GradScaler only for float16
  (bfloat16 has float32's exponent range and needs no loss scaling), and a ``load_state_dict``
  that resumes a checkpoint written with AMP off or in the other precision (Detectron2's
  raises ``KeyError: 'grad_scaler'`` on a checkpoint without AMP).

Parts of the models stay in float32 under autocast whatever the precision (the NRD decode,
RSE's softmax, every loss): see ``nrd_rsp.modeling``.
"""

import logging
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

from ..errors import ConfigError

__all__ = ["PRECISIONS", "amp_dtype", "describe_precision", "DeviceAMPTrainer"]

logger = logging.getLogger("nrd_rsp")

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(cfg) -> torch.dtype:
    """The autocast dtype of ``SOLVER.AMP.PRECISION``; ``ConfigError`` for another value."""
    name = cfg.SOLVER.AMP.PRECISION
    if name not in PRECISIONS:
        raise ConfigError(
            f"SOLVER.AMP.PRECISION must be one of {', '.join(PRECISIONS)}, got {name!r}."
        )
    return PRECISIONS[name]


def describe_precision(cfg) -> str:
    """What a run with ``cfg`` trains in, for the log."""
    device = torch.device(cfg.MODEL.DEVICE).type
    if not cfg.SOLVER.AMP.ENABLED:
        return f"Training precision: float32 on {device} (SOLVER.AMP.ENABLED False)."
    name = cfg.SOLVER.AMP.PRECISION
    scaler = "with a GradScaler" if name == "float16" else "without GradScaler"
    return (
        f"Training precision: mixed, {name} autocast on {device} {scaler} (SOLVER.AMP.PRECISION "
        f"{name}); the NRD decode, RSE's softmax and the losses run in float32."
    )


class DeviceAMPTrainer(AMPTrainer):
    """``AMPTrainer`` for any device type autocast supports (CUDA, CPU).

    Args:
        precision: the autocast dtype (float16 or bfloat16).
        device_type: ``"cuda"`` or ``"cpu"``, of the model.
        Other arguments: as :class:`detectron2.engine.AMPTrainer` (``grad_scaler`` is built
        here: enabled for float16 only).
    """

    def __init__(self, model, data_loader, optimizer, *, precision, device_type, **kwargs):
        scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
        super().__init__(
            model, data_loader, optimizer, grad_scaler=scaler, precision=precision, **kwargs
        )
        self.device_type = device_type

    def run_step(self):
        """``AMPTrainer.run_step`` with ``torch.autocast(device_type, precision)``."""
        assert self.model.training, "[DeviceAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        """Restore the optimizer, and the GradScaler state when the checkpoint has one (a
        checkpoint written without AMP, or with bfloat16, has none: the loss scale starts at
        its initial value)."""
        SimpleTrainer.load_state_dict(self, state_dict)
        scaler_state = state_dict.get("grad_scaler") or {}
        if not self.grad_scaler.is_enabled():
            return
        if scaler_state:
            self.grad_scaler.load_state_dict(scaler_state)
        else:
            logger.info(
                "The checkpoint has no GradScaler state (saved without float16 AMP): the loss "
                f"scale starts at {self.grad_scaler.get_scale():g}."
            )
