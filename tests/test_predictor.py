"""The one inference path: ``nrd_rsp.predictor.Predictor`` feeds the model exactly what evaluation
feeds it (test mapper: channel order ``INPUT.FORMAT``, test-time resize), and
``visualize_predictions`` draws through it."""

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, TOY_OPTS
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils

from nrd_rsp.data.mappers import build_test_mapper
from nrd_rsp.engine import Trainer, setup_cfg
from nrd_rsp.predictor import Predictor, visualize_predictions

SEM_CFG = f"{ROOT}/configs/Toy/semantic_fpn_R_18_toy.yaml"


@pytest.fixture(scope="module")
def model_and_cfg():
    # A test size other than the images' (64 x 80), so that the resize matters.
    cfg = setup_cfg(
        SEM_CFG,
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "96", *TOY_OPTS],
    )
    torch.manual_seed(0)
    return Trainer.build_model(cfg).eval(), cfg


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_predictor_matches_the_evaluation_path(model_and_cfg, fmt):
    model, cfg = model_and_cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.FORMAT = fmt
    d = DatasetCatalog.get("toy_sem_seg_val")[0]
    with torch.no_grad():
        expected = model([build_test_mapper(cfg)(dict(d))])[0]["sem_seg"]
    got = Predictor(cfg, model)(utils.read_image(d["file_name"], format="BGR"))["sem_seg"]
    assert (
        got.shape == expected.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, d["height"], d["width"])
    )
    assert torch.allclose(got, expected, atol=1e-5)


def test_visualize_predictions_draws_input_and_prediction(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    model.train()
    paths = visualize_predictions(
        cfg, model, "toy_sem_seg_val", num_images=2, output_dir=str(tmp_path)
    )
    assert model.training  # mode restored
    assert len(paths) == 2
    panel = cv2.imread(paths[0])
    h, w = (
        DatasetCatalog.get("toy_sem_seg_val")[0]["height"],
        DatasetCatalog.get("toy_sem_seg_val")[0]["width"],
    )
    scale = max(1.0, 480.0 / max(h, w))
    # input and drawing side by side, each the image scaled for legible labels
    assert panel.shape[:2] == (int(round(h * scale)), 2 * int(round(w * scale)))
    left, right = np.split(panel, 2, axis=1)
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 2.0  # prediction drawn over it
