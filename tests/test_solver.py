"""``nrd_rsp.solver.WarmupPolyLR``: the poly schedule with a floor, against mmcv's
``PolyLrUpdaterHook`` formula (the NRD recipe's configs, through ``Trainer.build_lr_scheduler``)
and, with no floor, against Detectron2's own ``WarmupPolyLR``."""

import math
import os

import pytest
import torch
from conftest import ROOT
from detectron2.config import get_cfg
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as D2WarmupPolyLR

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.engine import Trainer
from nrd_rsp.solver import WarmupPolyLR

NRD_CONFIGS = [
    "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml",
    "configs/PascalContext-SemanticSegmentation/nrd_R_101_84k_bs16.yaml",
]


def load_cfg(path):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    return cfg


def mmcv_poly_lr(it, base_lr, *, max_iters, power, min_lr, warmup_iters, warmup_ratio):
    """mmcv ``PolyLrUpdaterHook(power, min_lr, warmup='linear')`` at iteration ``it``
    (``runner.iter``, 0-based): the regular poly rate, scaled during warm-up by
    ``1 - (1 - it / warmup_iters) (1 - warmup_ratio)``."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it >= warmup_iters:
        return regular
    k = (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def _lrs_by_iteration(scheduler, optimizer, iterations):
    """Learning rate of each param group used at each of ``iterations``, stepping the scheduler
    once per iteration as Detectron2's LRScheduler hook does."""
    wanted, out = set(iterations), {}
    for it in range(max(iterations) + 1):
        if it in wanted:
            out[it] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()  # no gradients: a no-op, in the order PyTorch expects
        scheduler.step()
    return out


@pytest.mark.parametrize("config", NRD_CONFIGS)
def test_nrd_schedule_matches_mmcv_poly_with_floor(config):
    cfg = load_cfg(config)
    s = cfg.SOLVER
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(
        [{"params": [params[0]]}, {"params": [params[1]], "lr": 2 * s.BASE_LR}],
        lr=s.BASE_LR, momentum=0.9,
    )  # fmt: skip
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupPolyLR) and scheduler.min_lr == 1e-4
    iterations = [0, 1, 17, 2000, 3999, 4000, 4001, 30000, 60000, 83000, 83999]
    got = _lrs_by_iteration(scheduler, optimizer, iterations)
    for it in iterations:
        for group, base_lr in enumerate((s.BASE_LR, 2 * s.BASE_LR)):
            want = mmcv_poly_lr(it, base_lr, max_iters=84000, power=0.9, min_lr=1e-4,
                                warmup_iters=4000, warmup_ratio=0.01)  # fmt: skip
            assert got[it][group] == pytest.approx(want, rel=1e-9, abs=1e-15), (it, group)
    # Spot values: 0.01 x lr at the start, the floor at the end.
    assert got[0][0] == pytest.approx(0.01 * s.BASE_LR, rel=1e-3)
    assert got[83999][0] == pytest.approx(1e-4, rel=5e-3)  # (lr - 1e-4) / 84000^0.9 above
    assert min(v[0] for v in got.values()) >= 0.01 * s.BASE_LR * (1 - 1e-9)


def test_zero_floor_is_detectron2_warmup_poly():
    def make(cls, **kw):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
        sched = cls(opt, 1000, warmup_factor=0.001, warmup_iters=100, power=0.9, **kw)
        return sched, opt

    iterations = [0, 50, 99, 100, 500, 999]
    ours = _lrs_by_iteration(*make(WarmupPolyLR, min_lr=0.0), iterations)
    theirs = _lrs_by_iteration(*make(D2WarmupPolyLR), iterations)
    assert ours == theirs
    floored = _lrs_by_iteration(*make(WarmupPolyLR, min_lr=1e-3), iterations)
    assert floored[999][0] > 1e-3 > theirs[999][0]
    assert floored[500][0] == pytest.approx((0.02 - 1e-3) * 0.5**0.9 + 1e-3, rel=1e-12)


def test_bad_floor_is_rejected():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match="above the initial learning rate"):
        WarmupPolyLR(opt, 100, min_lr=0.1)
    with pytest.raises(ValueError, match="POLY_LR_CONSTANT_ENDING"):
        WarmupPolyLR(opt, 100, min_lr=1e-4, constant_ending=0.1)
    assert math.isfinite(WarmupPolyLR(opt, 100, min_lr=1e-4).get_last_lr()[0])
