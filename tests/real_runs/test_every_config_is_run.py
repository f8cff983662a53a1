"""Every shipped config is exercised by a test: the real ones train and evaluate on the dataset
stand-ins (tests/real_runs), the toy ones train a step and predict
(tests/reliability/test_degenerate_inputs.py), and every Base-*.yaml is inherited by a leaf."""

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
    names = _list_in("reliability/test_degenerate_inputs.py", "MODELS") + _list_in(
        "test_train_net.py", "TOY_RUNS"
    )
    return {f"configs/Toy/{m}.yaml" for m in names}


def _configs():
    paths = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def test_every_leaf_config_is_run_by_a_test():
    leaves = [c for c in _configs() if not os.path.basename(c).startswith("Base-")]
    exercised = REAL_RUNS | _toy_models()
    missing = [c for c in leaves if c not in exercised]
    assert not missing, f"shipped configs no test runs: {missing}"
    assert len(REAL_RUNS) >= 15


def test_every_base_config_is_inherited():
    inherited = set()
    for c in _configs():
        with open(os.path.join(ROOT, c)) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if base:
            inherited.add(os.path.normpath(os.path.join(os.path.dirname(c), base)))
    bases = [c for c in _configs() if os.path.basename(c).startswith("Base-")]
    assert bases and not [b for b in bases if b not in inherited]
