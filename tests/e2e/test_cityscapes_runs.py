"""Every shipped Cityscapes config trains two iterations on the Cityscapes stand-in (official
layout, prepared by datasets/prepare_cityscapes.py) and is evaluated by cityscapesscripts and
SemSegEvaluator, as ``train_net.py`` runs it for a user. Also: a periodic evaluation during
training, test-time augmentation, and a 2-process CPU run of a SyncBN config."""

import json
import os

import pytest
from standin_runs import (
    check_metrics,
    shipped_configs,
    train_and_check,
)

pytestmark = pytest.mark.slow

FOLDER = "Cityscapes-SemanticSegmentation"
CONFIGS = shipped_configs(FOLDER)
TTA_OPTS = [
    "TEST.AUG.ENABLED",
    "True",
    "TEST.AUG.MIN_SIZES",
    "(64, 128)",
    "TEST.AUG.MAX_SIZE",
    "512",
]


def test_every_config_folder_has_configs():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_config_trains_and_evaluates(config, standin_setup, tmp_path):
    train_and_check(config, standin_setup, tmp_path)
    assert os.listdir(tmp_path / "vis"), "no prediction drawn"


def test_periodic_evaluation_and_tta(standin_setup, tmp_path):
    res, _ = train_and_check(
        f"configs/{FOLDER}/semantic_fpn_R_50_90k_bs16.yaml",
        standin_setup,
        tmp_path,
        "TEST.EVAL_PERIOD",
        "1",
        *TTA_OPTS,
    )
    check_metrics(res, FOLDER, suffix="_TTA")
    with open(tmp_path / "metrics.json") as f:
        evals = [json.loads(line) for line in f if "cityscapes_sem_seg/IoU" in line]
    # the periodic one after the first step (event-storage iteration 0), the final one after
    # training
    assert [e["iteration"] for e in evals] == [0, 2], evals


def test_eval_only_with_tta(standin_setup, tmp_path):
    config = f"configs/{FOLDER}/semantic_fpn_R_50_90k_bs16.yaml"
    trained, _ = train_and_check(config, standin_setup, tmp_path / "train")
    res, _ = train_and_check(
        config,
        standin_setup,
        tmp_path / "eval",
        "MODEL.WEIGHTS",
        str(tmp_path / "train" / "model_final.pth"),
        *TTA_OPTS,
        flags=["--eval-only"],
    )
    check_metrics(res, FOLDER, suffix="_TTA")
    # the same checkpoint evaluated without TTA, as at the end of training: the plain numbers
    assert res["sem_seg"]["mIoU"] == pytest.approx(trained["sem_seg"]["mIoU"], abs=1e-6)
    assert res["cityscapes_sem_seg"]["iIoU"] == pytest.approx(
        trained["cityscapes_sem_seg"]["iIoU"], abs=1e-6
    )


def test_two_cpu_processes_with_sync_bn(standin_setup, tmp_path):
    config = f"configs/{FOLDER}/rsp_R_50_FPN_90k_bs16.yaml"
    _, r = train_and_check(config, standin_setup, tmp_path, num_gpus=2)
    assert "SyncBN becomes naiveSyncBN" in r.stderr and "MODEL.RESNETS.NORM" in r.stderr
    assert "DATALOADER.NUM_WORKERS 8 -> 1 per process" in r.stderr
    with open(tmp_path / "log.txt") as f:
        assert "Rank of current process: 0. World size: 2" in f.read()
