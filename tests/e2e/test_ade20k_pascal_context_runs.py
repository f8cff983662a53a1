"""Every shipped ADE20K and PASCAL Context config trains two iterations on the stand-ins (official
layouts, prepared by datasets/prepare_ade20k_sem_seg.py and prepare_pascal_context.py) and is
evaluated by SemSegEvaluator, as ``train_net.py`` runs it for a user."""

import os

import pytest
from standin_runs import shipped_configs, train_and_check

pytestmark = pytest.mark.slow

CONFIGS = [
    c
    for f in ["ADE20K-SemanticSegmentation", "PascalContext-SemanticSegmentation"]
    for c in shipped_configs(f)
]


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_config_trains_and_evaluates(config, standin_setup, tmp_path):
    train_and_check(config, standin_setup, tmp_path)
    assert os.listdir(tmp_path / "vis"), "no prediction drawn"
