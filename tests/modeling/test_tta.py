"""Test-time augmentation: SemanticSegmentorWithTTA averages probabilities over scales and undoes
the flip; PanopticFPNWithTTA combines them with the plain pass's instances; plain results are
saved before TTA runs."""

import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.engine import Trainer, evaluate, setup_cfg
from nrd_rsp.modeling import PanopticFPNWithTTA, SemanticSegmentorWithTTA, build_tta_model


class _ColumnModel(nn.Module):
    """Logits of class 1 grow from left to right of the image it sees, resized to
    (height, width)."""

    input_format = "RGB"

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            img = x["image"].float()
            # depends on content (the image's red channel), so a wrongly un-flipped output differs
            red = nn.functional.interpolate(
                img[None, :1], size=(h, w), mode="bilinear", align_corners=False
            )[0, 0]
            logits = torch.stack([torch.zeros_like(red), red / 255.0 * 4])
            outs.append({"sem_seg": logits})
        return outs


def _cfg(flip):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.TEST.AUG.MIN_SIZES = (32, 48)
    cfg.TEST.AUG.MAX_SIZE = 200
    cfg.TEST.AUG.FLIP = flip
    return cfg


def test_tta_undoes_flip_and_averages():
    ramp = torch.linspace(0, 255, 40).repeat(32, 1)
    image = torch.stack([ramp, ramp * 0, ramp * 0]).to(torch.uint8)
    inp = {"image": image, "height": 32, "width": 40}
    plain = _ColumnModel()([dict(inp)])[0]["sem_seg"].softmax(0)
    with_flip = SemanticSegmentorWithTTA(_cfg(True), _ColumnModel())([dict(inp)])[0]["sem_seg"]
    without_flip = SemanticSegmentorWithTTA(_cfg(False), _ColumnModel())([dict(inp)])[0]["sem_seg"]
    assert with_flip.shape == (2, 32, 40)
    assert torch.allclose(with_flip.sum(0), torch.ones(32, 40), atol=1e-5)
    # class-1 probability still increases from left to right (the flip was undone)
    assert (with_flip[1, :, -1] > with_flip[1, :, 0]).all()
    assert torch.allclose(with_flip, without_flip, atol=0.05)
    assert torch.allclose(with_flip, plain, atol=0.05)


class _NoFormatModel(_ColumnModel):
    """Like Detectron2's SemanticSegmentor: no ``input_format`` attribute."""

    input_format = property(lambda self: (_ for _ in ()).throw(AttributeError("input_format")))


def test_tta_reads_files_in_the_config_format(tmp_path):
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1))
    rgb = np.stack([ramp, ramp * 0, ramp * 0], axis=2)  # red grows to the right
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for fmt, expect_increasing in (("RGB", True), ("BGR", False)):
        cfg = _cfg(False)
        cfg.INPUT.FORMAT = fmt
        out = SemanticSegmentorWithTTA(cfg, _NoFormatModel())(
            [{"file_name": str(tmp_path / "a.png")}]
        )[0]
        p = out["sem_seg"][1]
        assert p.shape == (32, 40)
        # in BGR the model's first channel is blue (0): no ramp
        assert bool((p[:, -1] > p[:, 0] + 0.1).all()) == expect_increasing


def _toy_panoptic(tmp_path, *opts):
    cfg = setup_cfg(
        "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml",
        [
            "MODEL.WEIGHTS",
            "",
            "OUTPUT_DIR",
            str(tmp_path),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
            "0.0",
            *opts,
        ],
    )
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    return cfg, model, {"image": image, "height": 96, "width": 128, "file_name": "x.png"}


@pytest.mark.slow
def test_panoptic_tta_with_one_scale_and_no_flip_is_the_plain_prediction(tmp_path):
    cfg, model, inp = _toy_panoptic(
        tmp_path,
        "TEST.AUG.MIN_SIZES",
        "(96,)",
        "TEST.AUG.MAX_SIZE",
        "1000",
        "TEST.AUG.FLIP",
        "False",
    )
    tta = build_tta_model(cfg, model)
    assert isinstance(tta, PanopticFPNWithTTA)
    with torch.no_grad():
        plain = model([dict(inp)])[0]
        out = tta([dict(inp)])[0]
    assert len(plain["instances"]) > 0
    torch.testing.assert_close(out["sem_seg"], plain["sem_seg"].softmax(0))
    torch.testing.assert_close(
        out["instances"].pred_boxes.tensor, plain["instances"].pred_boxes.tensor
    )
    assert torch.equal(out["panoptic_seg"][0], plain["panoptic_seg"][0])
    assert out["panoptic_seg"][1] == plain["panoptic_seg"][1]


@pytest.mark.slow
def test_panoptic_tta_combines_averaged_semantics_with_plain_instances(tmp_path):
    cfg, model, inp = _toy_panoptic(
        tmp_path,
        # A few instances of the random model, so that stuff regions remain beside them.
        "TEST.DETECTIONS_PER_IMAGE",
        "4",
        "TEST.AUG.MIN_SIZES",
        "(64, 96, 128)",
        "TEST.AUG.MAX_SIZE",
        "1000",
        "TEST.AUG.FLIP",
        "True",
    )
    with torch.no_grad():
        # The random semantic head would call most pixels "things" (class 0); disfavour it, so
        # that the averaged argmax has stuff regions for the combination to keep.
        model.sem_seg_head.predictor.bias[0] -= 10.0
        plain = model([dict(inp)])[0]
        out = build_tta_model(cfg, model)([dict(inp)])[0]
    torch.testing.assert_close(out["instances"].scores, plain["instances"].scores)
    assert out["sem_seg"].shape == plain["sem_seg"].shape
    assert torch.allclose(out["sem_seg"].sum(0), torch.ones(96, 128), atol=1e-5)
    assert not torch.allclose(out["sem_seg"], plain["sem_seg"].softmax(0), atol=1e-3)  # averaged
    seg, segments = out["panoptic_seg"]
    label = out["sem_seg"].argmax(0)
    stuff = [s for s in segments if not s["isthing"]]
    assert stuff, segments
    for s in stuff:  # stuff segments are regions of the averaged semantic argmax
        assert bool((label[seg == s["id"]] == s["category_id"]).all())
    things = [s for s in segments if s["isthing"]]
    for s in things:  # thing segments are plain-pass instances
        assert s["instance_id"] < len(plain["instances"])


def test_plain_results_are_saved_before_tta(tmp_path, monkeypatch):
    cfg = _cfg(True)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.AUG.ENABLED = True

    def broken_tta(cfg, model):
        raise RuntimeError("TTA failed")

    monkeypatch.setattr(Trainer, "test_with_TTA", broken_tta)
    plain = {"sem_seg": {"mIoU": 12.5}}
    with pytest.raises(RuntimeError, match="TTA failed"):
        evaluate(cfg, None, plain_results=plain)
    assert json.loads((tmp_path / "eval_results.json").read_text()) == plain
