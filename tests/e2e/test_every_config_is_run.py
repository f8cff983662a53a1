"""Every shipped config is exercised by a test: the real ones train and evaluate on the dataset
stand-ins (tests/e2e), the toy ones train a step and predict
(tests/engine/test_degenerate_inputs.py), and every Base-*.yaml is inherited by a leaf."""

import ast
import glob
import os

import test_ade20k_pascal_context_runs
import test_cityscapes_runs
import test_coco_runs
import yaml
from conftest import ROOT

REAL_RUNS = set(
    test_cityscapes_runs.CONFIGS + test_coco_runs.CONFIGS + test_ade20k_pascal_context_runs.CONFIGS
)


# The shipped configs, written out: a config added, removed or renamed must be added here too,
# and a test that runs it named in the walker's sources.
EXPECTED_LEAVES = [
    "configs/ADE20K-SemanticSegmentation/nrd_R_101_164k_bs16.yaml",
    "configs/ADE20K-SemanticSegmentation/semantic_fpn_R_50_160k_bs16.yaml",
    "configs/COCO-PanopticSegmentation/nrd_rsp_panoptic_fpn_R_50_1x.yaml",
    "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "configs/COCO-PanopticSegmentation/rsp_panoptic_fpn_R_101_3x.yaml",
    "configs/COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_1x.yaml",
    "configs/COCO-PanopticSegmentation/rsp_panoptic_fpn_R_50_3x.yaml",
    "configs/Cityscapes-SemanticSegmentation/nrd_R_101_84k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/nrd_R_50_deeplab_stem_84k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/rsp_R_101_FPN_90k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml",
    "configs/PascalContext-SemanticSegmentation/nrd_R_101_84k_bs16.yaml",
    "configs/PascalContext-SemanticSegmentation/semantic_fpn_R_50_80k_bs16.yaml",
    "configs/Toy/deeplabv3plus_R_18_toy.yaml",
    "configs/Toy/nrd_R_18_toy.yaml",
    "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
    "configs/Toy/panoptic_fpn_R_18_toy.yaml",
    "configs/Toy/rsp_R_18_toy.yaml",
    "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml",
    "configs/Toy/semantic_fpn_R_18_toy.yaml",
]


def _list_in(test_file, name):
    """The literal list ``name`` of a test module (read, not imported)."""
    with open(os.path.join(ROOT, "tests", test_file)) as f:
        tree = ast.parse(f.read())
    (value,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]
    ]
    return ast.literal_eval(value)


def _toy_models():
    """Toy configs trained by test_degenerate_inputs.py (MODELS) or test_train_net.py (TOY_RUNS)."""
    names = _list_in("engine/test_degenerate_inputs.py", "MODELS") + _list_in(
        "tools/test_train_net.py", "TOY_RUNS"
    )
    return {f"configs/Toy/{m}.yaml" for m in names}


def _configs():
    paths = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def test_the_shipped_configs_are_the_expected_ones():
    leaves = [c for c in _configs() if not os.path.basename(c).startswith("Base-")]
    assert sorted(leaves) == EXPECTED_LEAVES, (
        "update EXPECTED_LEAVES (and the runs) for a new config"
    )


def test_every_expected_config_is_run_by_a_test():
    exercised = REAL_RUNS | _toy_models()
    missing = [c for c in EXPECTED_LEAVES if c not in exercised]
    assert not missing, f"shipped configs no test runs: {missing}"
    assert not exercised - set(EXPECTED_LEAVES), "a test runs a config that is not shipped"


def test_every_base_config_is_inherited():
    inherited = set()
    for c in _configs():
        with open(os.path.join(ROOT, c)) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if base:
            inherited.add(os.path.normpath(os.path.join(os.path.dirname(c), base)))
    bases = [c for c in _configs() if os.path.basename(c).startswith("Base-")]
    assert bases and not [b for b in bases if b not in inherited]
