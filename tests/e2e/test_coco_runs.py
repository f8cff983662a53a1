"""Every shipped COCO panoptic config trains two iterations on the COCO stand-in (official layout,
prepared by datasets/prepare_panoptic_fpn.py) and is evaluated with PQ, box/mask AP and mIoU;
panoptic test-time augmentation; a FrozenBN backbone without weights."""

import os

import pytest
from standin_runs import (
    check_metrics,
    shipped_configs,
    train_and_check,
    train_net,
)

pytestmark = pytest.mark.slow

FOLDER = "COCO-PanopticSegmentation"
CONFIGS = shipped_configs(FOLDER)


def test_every_config_folder_has_configs():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_config_trains_and_evaluates(config, standin_setup, tmp_path):
    train_and_check(config, standin_setup, tmp_path)
    assert os.listdir(tmp_path / "vis"), "no prediction drawn"


@pytest.mark.parametrize("name", ["panoptic_fpn_R_50_1x", "rsp_panoptic_fpn_R_50_1x"])
def test_panoptic_tta(name, standin_setup, tmp_path):
    res, _ = train_and_check(
        f"configs/{FOLDER}/{name}.yaml",
        standin_setup,
        tmp_path,
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(48, 64)",
        "TEST.AUG.MAX_SIZE",
        "256",
    )
    check_metrics(res, FOLDER, suffix="_TTA")
    # instances come from the plain pass: the same detections, the same AP
    assert res["bbox_TTA"] == res["bbox"] and res["segm_TTA"] == res["segm"]


def test_frozen_bn_backbone_without_weights_stops_with_one_line(standin_setup, tmp_path):
    r = train_net(
        f"configs/{FOLDER}/panoptic_fpn_R_50_1x.yaml",
        standin_setup[0],
        tmp_path,
        "MODEL.WEIGHTS",
        "",
        "SOLVER.MAX_ITER",
        "20",
        "SOLVER.BASE_LR",
        "0.02",
    )
    assert "cannot train from scratch" in r.stderr  # the start-up warning
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and (
        "Training diverged" in last or "Non-finite loss" in last
    ), last
