"""SemanticSegmentorWithTTA averages probabilities over scales and undoes the flip."""
import torch
from torch import nn

from detectron2.config import get_cfg

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.modeling import SemanticSegmentorWithTTA


class _ColumnModel(nn.Module):
    """Logits of class 1 grow from left to right of the image it sees, resized to (height, width)."""

    input_format = "RGB"

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            img = x["image"].float()
            # depends on content (the image's red channel), so a wrongly un-flipped output differs
            red = nn.functional.interpolate(img[None, :1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
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
