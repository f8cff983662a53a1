"""The NRD authors' training recipe (docs/NRD.md, "Training recipe"): the recipe table against
the shipped configs, the config variants, and the poly schedule with a floor against mmcv's
``PolyLrUpdaterHook`` formula."""

import math
import os
import re

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR as D2WarmupPolyLR

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.engine import Trainer
from nrd_rsp.solver import WarmupPolyLR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "NRD.md")
CS = "configs/Cityscapes-SemanticSegmentation"
TABLE_CONFIGS = {  # column of the recipe table -> config it describes
    "Cityscapes": f"{CS}/nrd_R_50_84k_bs16.yaml",
    "ADE20K": "configs/ADE20K-SemanticSegmentation/nrd_R_101_164k_bs16.yaml",
    "PASCAL Context": "configs/PascalContext-SemanticSegmentation/nrd_R_101_84k_bs16.yaml",
}
# The six differences of issue 12 must each be a row of the table.
REQUIRED_KEYS = {
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.WEIGHTS", "SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_FACTOR", "SOLVER.POLY_LR_MIN_LR", "SOLVER.WEIGHT_DECAY_NORM",
    "INPUT.COLOR_AUG_TYPE", "MODEL.NRD.POOLING_NORM", "MODEL.NRD.LOSS_AVG_NON_IGNORE",
}  # fmt: skip


def load_cfg(path):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    return cfg


def recipe_rows():
    """``[(fact, authors, key, {column: value})]`` of the recipe table in docs/NRD.md; values are
    the YAML literals between backticks."""
    lines = open(DOC).read().splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.startswith("| fact | authors (source) |")
    )
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    assert columns[3:] == list(TABLE_CONFIGS), columns
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(columns), line
        fact, authors, key = cells[:3]
        values = {col: yaml.safe_load(v.strip("`")) for col, v in zip(columns[3:], cells[3:]) if v}
        rows.append((fact, authors, key.strip("`"), values))
    return rows


def cfg_value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def test_recipe_table_is_complete_and_cites_sources():
    rows = recipe_rows()
    keys = [key for _, _, key, _ in rows if key.isupper() or "." in key]
    assert len(rows) >= 50 and len(keys) == len(set(keys))
    assert REQUIRED_KEYS <= set(keys)
    for fact, authors, key, values in rows:
        assert re.search(r"\[(C|A|P|M|H|S|D|R|mmseg|mmcv)\]", authors), fact
        if key.startswith("-"):  # no key: documented in the key cell
            assert not values, fact
        else:
            assert set(values) == set(TABLE_CONFIGS), fact


@pytest.mark.parametrize("column", list(TABLE_CONFIGS))
def test_shipped_configs_follow_the_recipe_table(column):
    cfg = load_cfg(TABLE_CONFIGS[column])
    checked = 0
    for fact, _, key, values in recipe_rows():
        if key.startswith("-"):
            continue
        got, want = cfg_value(cfg, key), values[column]
        if isinstance(want, float) or isinstance(got, float):
            assert got == pytest.approx(want, rel=1e-9), (column, fact, key)
        else:
            assert got == want, (column, fact, key)
        checked += 1
    assert checked >= 50


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize(
    "variant, allowed",
    [
        ("nrd_R_101_84k_bs16.yaml", {"MODEL.RESNETS.DEPTH", "MODEL.WEIGHTS"}),
        ("nrd_R_50_deeplab_stem_84k_bs16.yaml",
         {"MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.WEIGHTS"}),
    ],
)  # fmt: skip
def test_cityscapes_variants_differ_from_r50_only_in_encoder(variant, allowed):
    base = _flat(load_cfg(TABLE_CONFIGS["Cityscapes"]))
    other = _flat(load_cfg(f"{CS}/{variant}"))
    differ = {k for k in base if base[k] != other[k]}
    assert differ == allowed | {"OUTPUT_DIR"}
    if "deeplab" in variant:
        assert other["MODEL.RESNETS.STEM_OUT_CHANNELS"] == 128
        assert other["MODEL.WEIGHTS"] == "detectron2://DeepLab/R-52.pkl"


def test_other_recipes_keep_their_defaults():
    """The new solver / input keys default to the non-NRD recipes, which stay unchanged."""
    cfg = load_cfg(f"{CS}/semantic_fpn_R_50_90k_bs16.yaml")
    assert cfg.SOLVER.POLY_LR_MIN_LR == 0.0 and cfg.INPUT.COLOR_AUG_TYPE == "detectron2"
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0 and cfg.SOLVER.WARMUP_ITERS == 1000
    default = get_cfg()
    add_nrd_rsp_config(default)
    # MODEL.NRD keys default to the authors' values (norms: BatchNorm, as MODEL.NRD.NORM).
    assert default.MODEL.NRD.LOSS_AVG_NON_IGNORE is False
    nrd = default.MODEL.NRD
    assert nrd.NORM == nrd.INPUT_NORM == nrd.POOLING_NORM == "BN"


# --------------------------------------------------------------------------------------------
# Poly schedule with a floor


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


@pytest.mark.parametrize("config", [TABLE_CONFIGS["Cityscapes"], TABLE_CONFIGS["PASCAL Context"]])
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
