"""Numerically safe regions under autocast (issue 19), against float32 on CPU autocast.

NRD: with the authors' init (controller output divided by P) the dynamic weights start near
1/P, so the within-patch detail the MLP adds (logits minus their r x r patch mean) is orders of
magnitude below the logits. The setting is the issue's: the NRD Cityscapes R-50 config at
256x512 with random weights, in eval mode (BatchNorm with its initial running statistics, as at
inference; the issue's measurements), and in training mode for the float16 gradient. The
backbone features are computed once in float32 and given to the head in the autocast dtype
(what an autocast backbone hands it), so that the comparison measures the head. The gradient
checks use the main cross-entropy times a loss scale of 65536 (the GradScaler's initial scale)
and unscale the guidance branch's gradient.
"""

import pytest
import torch
from conftest import panoptic_batch
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from nrd_rsp.engine import Trainer, setup_cfg
from nrd_rsp.modeling import RSE

NRD_CFG = "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml"
LOSS_SCALE = 65536.0


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _detail(logits, r):
    """Logits minus their r x r patch mean (what the dynamic MLP adds over a coarse decoder)."""
    mean = F.avg_pool2d(logits, r)
    return logits - F.interpolate(mean, scale_factor=r, mode="nearest")


def _nrd_setting(training):
    torch.manual_seed(0)
    cfg = setup_cfg(NRD_CFG, ["MODEL.WEIGHTS", ""], quiet=True)
    model = Trainer.build_model(cfg).train(training)
    images = torch.randn(2, 3, 256, 512) * 50
    with torch.no_grad():
        features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    targets = torch.randint(0, 19, (2, 256, 512), generator=torch.Generator().manual_seed(1))
    head = model.sem_seg_head
    # Only the guidance branch needs gradients here (no float16 backward through the rest).
    for name, p in head.named_parameters():
        p.requires_grad_(name.startswith("guidance."))
    return head, features, targets


@pytest.fixture(scope="module")
def nrd_setting():
    return _nrd_setting(training=False)


def _run_head(head, features, targets, dtype):
    """(logits, unscaled guidance-branch gradient) with ``dtype`` autocast (None: float32)."""
    head.zero_grad(set_to_none=True)
    feats = {k: v.to(dtype) if dtype else v for k, v in features.items()}
    scale = LOSS_SCALE if dtype else 1.0
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = head.layers(feats)
        loss = head.losses(logits, None, targets)["loss_sem_seg"]
    (loss * scale).backward()
    grad = torch.cat([p.grad.flatten() / scale for p in head.guidance.parameters()])
    return logits.detach().float(), grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_nrd_keeps_its_within_patch_detail_and_guidance_gradient_under_autocast(nrd_setting, dtype):
    head, features, targets = nrd_setting
    ref_logits, ref_grad = _run_head(head, features, targets, None)
    logits, grad = _run_head(head, features, targets, dtype)
    r = head.patch_size
    ref_detail = _detail(ref_logits, r)
    # The detail is real but tiny: far below the logits themselves.
    assert 0 < ref_detail.norm() < 1e-3 * ref_logits.norm()
    assert logits.dtype == torch.float32 and ref_grad.norm() > 0
    assert _rel(_detail(logits, r), ref_detail) < 0.10
    assert _rel(logits, ref_logits) < 0.10
    assert _rel(grad, ref_grad) < 0.10


def test_nrd_guidance_gradient_survives_float16_loss_scaling_in_training():
    """Training mode (BatchNorm on the batch): the guidance-branch gradient is orders of magnitude
    smaller; in float16 it underflowed to zero even times 65536 (relative error 1)."""
    head, features, targets = _nrd_setting(training=True)
    _, ref_grad = _run_head(head, features, targets, None)
    _, grad = _run_head(head, features, targets, torch.float16)
    assert 0 < ref_grad.norm() < 1e-6  # tiny: 65536 x the per-element gradient is below 1
    assert _rel(grad, ref_grad) < 0.10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_rse_softmax_runs_in_float32_under_autocast(dtype):
    torch.manual_seed(0)
    rse = RSE(32, 48, channels=32, num_heads=4, window_size=3)
    fine, coarse = torch.randn(2, 32, 11, 14), torch.randn(2, 48, 6, 7)
    with torch.no_grad():
        ref_out, ref_w = rse(fine, coarse, return_weights=True)
        with torch.autocast("cpu", dtype=dtype):
            out, w = rse(fine.to(dtype), coarse.to(dtype), return_weights=True)
    assert w.dtype == torch.float32 and out.dtype == dtype
    # Each window's weights sum to 1 to float32 accuracy (a 16-bit softmax is off by ~1e-3).
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-6, rtol=0)
    assert (w == 0).sum() == (ref_w == 0).sum()  # the windows' outside positions stay exact 0
    assert _rel(w, ref_w) < 0.05 and _rel(out, ref_out) < 0.05


TOY_CONFIGS = [
    "configs/Toy/semantic_fpn_R_18_toy.yaml",
    "configs/Toy/rsp_R_18_toy.yaml",
    "configs/Toy/nrd_R_18_toy.yaml",
    "configs/Toy/deeplabv3plus_R_18_toy.yaml",
    "configs/Toy/panoptic_fpn_R_18_toy.yaml",
    "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml",
    "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
]


@pytest.mark.parametrize("config", TOY_CONFIGS, ids=lambda c: c.split("/")[-1][:-5])
def test_every_loss_is_float32_under_bfloat16_autocast(config):
    torch.manual_seed(0)
    cfg = setup_cfg(config, quiet=True)
    model = Trainer.build_model(cfg).train()
    batch = panoptic_batch(n=2)
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert losses and all(v.dtype == torch.float32 for v in losses.values()), {
        k: v.dtype for k, v in losses.items()
    }
