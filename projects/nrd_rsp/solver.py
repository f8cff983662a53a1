"""Learning-rate schedules of nrd_rsp.

``WarmupPolyLR`` extends Detectron2's DeepLab ``WarmupPolyLR`` with the floor of mmcv's
``PolyLrUpdaterHook(min_lr=...)``, which the NRD authors train with
(``configs/_base_/schedules/schedule_80k_warmup.py`` of their code: power 0.9, ``min_lr`` 1e-4,
linear warm-up of 4k iterations from 0.01 x lr). ``build_lr_scheduler(cfg, optimizer)`` builds it
for ``SOLVER.LR_SCHEDULER_NAME: WarmupPolyLR`` and defers every other name to Detectron2.
"""

import math
from typing import List

import torch
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as _D2WarmupPolyLR
from detectron2.solver import LRScheduler
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.lr_scheduler import _get_warmup_factor_at_iter

__all__ = ["WarmupPolyLR", "build_lr_scheduler"]


class WarmupPolyLR(_D2WarmupPolyLR):
    """Poly schedule with a floor and a linear or constant warm-up.

    At iteration ``i`` (0-based, the iteration about to run), for each parameter group with
    initial rate ``base_lr``::

        regular(i) = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
        lr(i)      = regular(i) * warmup_factor(i)

    ``warmup_factor(i)`` is Detectron2's: linear ``f + (1 - f) i / warmup_iters`` below
    ``warmup_iters`` (``f = WARMUP_FACTOR``), 1 after. This equals mmcv's linear warm-up
    ``regular(i) * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))`` with
    ``warmup_ratio = f``: both scale the regular (poly) rate of the same iteration.

    With ``min_lr = 0`` the rates are those of Detectron2's ``WarmupPolyLR`` (same code path,
    ``constant_ending`` included). ``min_lr`` is absolute, as in mmcv, and shared by all groups.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        *,
        min_lr: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            optimizer, max_iters, kwargs: as Detectron2's ``WarmupPolyLR`` (``warmup_factor``,
                ``warmup_iters``, ``warmup_method``, ``power``, ``constant_ending``,
                ``last_epoch``).
            min_lr: floor of the poly decay (``SOLVER.POLY_LR_MIN_LR``), >= 0 and below every
                group's initial rate.
        """
        if min_lr < 0:
            raise ValueError(f"SOLVER.POLY_LR_MIN_LR must be >= 0, got {min_lr}.")
        if min_lr > 0 and kwargs.get("constant_ending", 0.0) > 0:
            raise ValueError(
                "SOLVER.POLY_LR_MIN_LR and SOLVER.POLY_LR_CONSTANT_ENDING both end the poly "
                "decay; set only one."
            )
        lowest = min(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
        if min_lr > lowest:
            raise ValueError(
                f"SOLVER.POLY_LR_MIN_LR {min_lr} is above the initial learning rate {lowest}."
            )
        self.min_lr = min_lr
        super().__init__(optimizer, max_iters, **kwargs)

    def get_lr(self) -> List[float]:
        if self.min_lr == 0:
            return super().get_lr()
        it = self.last_epoch
        factor = _get_warmup_factor_at_iter(
            self.warmup_method, it, self.warmup_iters, self.warmup_factor
        )
        decay = math.pow(max(0.0, 1.0 - it / self.max_iters), self.power)
        return [
            ((base_lr - self.min_lr) * decay + self.min_lr) * factor for base_lr in self.base_lrs
        ]


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """``WarmupPolyLR`` (with ``SOLVER.POLY_LR_MIN_LR``) for ``SOLVER.LR_SCHEDULER_NAME``
    "WarmupPolyLR"; Detectron2's scheduler of that name otherwise."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    return WarmupPolyLR(
        optimizer,
        s.MAX_ITER,
        min_lr=s.POLY_LR_MIN_LR,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_iters=s.WARMUP_ITERS,
        warmup_method=s.WARMUP_METHOD,
        power=s.POLY_LR_POWER,
        constant_ending=s.POLY_LR_CONSTANT_ENDING,
    )
