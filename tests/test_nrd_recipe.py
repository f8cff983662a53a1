"""The NRD authors' training recipe (docs/NRD.md, "Training recipe"): the recipe table against
the shipped configs and the config variants. The poly schedule the recipe uses:
tests/test_solver.py."""

import os
import re

import pytest
import yaml
from detectron2.config import get_cfg

from nrd_rsp import add_nrd_rsp_config

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
