"""NRD head (docs/NRD.md): parameter count and layout, dynamic decoding against a per-patch loop,
shapes, training, auxiliary head, Panoptic FPN integration. FLOPs: test_nrd_flops.py."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import panoptic_batch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, PanopticFPN, build_model
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.modeling.dynamic_mlp import (
    dynamic_param_layout,
    num_dynamic_params,
    relative_coordinates,
)
from nrd_rsp.modeling.nrd_head import NRDHead

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CFG = os.path.join(ROOT, "configs/Toy/nrd_R_18_toy.yaml")
TOY_PAN_CFG = os.path.join(ROOT, "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml")
TOY_PAN_BASE_CFG = os.path.join(ROOT, "configs/Toy/Base-Toy-Panoptic-FPN.yaml")
CITYSCAPES_CFG = os.path.join(
    ROOT, "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml"
)


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    torch.manual_seed(0)


def load_cfg(path=None, *opts):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    if path:
        cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


# Small backbone-like shapes: stride 4 / 16 / 32 as res2 / res4 / res5.
SHAPES = {
    "res2": ShapeSpec(channels=16, stride=4),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=32, stride=32),
}


def small_head(num_classes=5, **kwargs):
    args = dict(
        num_classes=num_classes,
        aspp_channels=16,
        controller_channels=16,
        aux_channels=8,
        guidance_conv_channels=8,
        ignore_value=255,
    )
    args.update(kwargs)
    return NRDHead(SHAPES, **args)


def features_for(height, width, n=2):
    """Random features with the sizes a stride-2-conv ResNet gives for an H x W input."""
    return {
        name: torch.randn(n, s.channels, math.ceil(height / s.stride), math.ceil(width / s.stride))
        for name, s in SHAPES.items()
    }


# --------------------------------------------------------------------------------------------
# Dynamic parameters


@pytest.mark.parametrize("num_classes, expected", [(19, 899), (150, 3126), (59, 1579)])
def test_controller_outputs_exactly_p_channels(num_classes, expected):
    # P = (2+G)H + H + HH + H + HK + K with the default H = G = 16.
    assert (2 + 16) * 16 + 16 + 16 * 16 + 16 + 16 * num_classes + num_classes == expected
    cfg = load_cfg(None, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes)
    assert cfg.MODEL.NRD.HIDDEN_CHANNELS == 16 and cfg.MODEL.NRD.GUIDANCE_CHANNELS == 16
    head = SEM_SEG_HEADS_REGISTRY.get("NRDHead")(cfg, SHAPES)
    assert num_dynamic_params([18, 16, 16, num_classes]) == expected
    assert head.controller[-1].out_channels == expected
    head.eval()
    with torch.no_grad():
        params = head.dynamic_params(features_for(64, 96, n=1))
    assert params.shape == (1, expected, 2, 3)


def test_param_layout_and_controller_init():
    layout = dynamic_param_layout([18, 16, 16, 19])
    assert layout == [
        ("weight0", (16, 18)),
        ("bias0", (16,)),
        ("weight1", (16, 16)),
        ("bias1", (16,)),
        ("weight2", (19, 16)),
        ("bias2", (19,)),
    ]
    head = small_head(num_classes=19)
    last = head.controller[-1]
    assert torch.count_nonzero(last.bias) == 0
    # Xavier-normal scaled by 1/P: std = sqrt(2 / (fan_in + fan_out)) / P.
    expected_std = math.sqrt(2.0 / (16 + 899)) / 899
    assert last.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    # MODEL.NRD.SCALE_CONTROLLER_INIT False (toy configs): plain Xavier-normal.
    unscaled = small_head(num_classes=19, scale_controller_init=False).controller[-1]
    assert unscaled.weight.std().item() == pytest.approx(expected_std * 899, rel=0.05)


def test_fourier_features_widen_the_mlp_input():
    coords = relative_coordinates(4, num_frequencies=2)
    assert coords.shape == (2 + 4 * 2, 4, 4)
    x, y = coords[0], coords[1]
    torch.testing.assert_close(coords[2], torch.sin(math.pi * x))
    torch.testing.assert_close(coords[5], torch.cos(math.pi * y))
    torch.testing.assert_close(coords[9], torch.cos(2 * math.pi * y))
    head = small_head(num_classes=19, fourier_features=2)
    c_in = 2 + 8 + 16
    assert head.controller[-1].out_channels == c_in * 16 + 16 + 16 * 16 + 16 + 16 * 19 + 19 == 1027
    head.eval()
    with torch.no_grad():
        out, _ = head(features_for(64, 64))
    assert out.shape == (2, 19, 64, 64)


def test_input_norm_is_separate_from_the_conv_norm():
    gn_widths = dict(
        guidance_channels=30,
        aspp_channels=32,
        controller_channels=32,
        guidance_conv_channels=32,
        aux_channels=32,
    )  # 32-group GN everywhere
    # default (input_norm unset): the MLP input follows the head's norm
    head = small_head(norm="GN", **gn_widths)
    assert isinstance(head.input_norm, torch.nn.GroupNorm) and head.input_norm.num_channels == 32
    # the toy config: GroupNorm in the convs, BatchNorm on the 2 + G MLP input channels
    head = small_head(norm="GN", input_norm="BN", **gn_widths)
    assert isinstance(head.input_norm, torch.nn.BatchNorm2d) and head.input_norm.num_features == 32
    assert isinstance(head.controller[0].norm, torch.nn.GroupNorm)
    assert isinstance(head.guidance[0].norm, torch.nn.GroupNorm)
    assert isinstance(head.aspp.project.norm, torch.nn.GroupNorm)
    cfg = load_cfg(TOY_CFG)
    assert (cfg.MODEL.NRD.NORM, cfg.MODEL.NRD.INPUT_NORM) == ("GN", "BN")
    # The config key is explicit (default BN, the authors' BatchNorm); "" is no norm.
    assert load_cfg().MODEL.NRD.INPUT_NORM == "BN"
    head = SEM_SEG_HEADS_REGISTRY.get("NRDHead")(load_cfg(None, "MODEL.NRD.INPUT_NORM", ""), SHAPES)
    assert isinstance(head.input_norm, torch.nn.Identity)
    assert not any(k.startswith("input_norm.") for k in head.state_dict())
    with pytest.raises(ValueError, match="INPUT_NORM"):
        small_head(input_norm="none")


# --------------------------------------------------------------------------------------------
# Dynamic decoding vs. an explicit per-patch loop


def naive_patch_mlp(params_ij, pixels, c_in, hidden, k):
    """MLP of one location; ``params_ij`` [P] in the documented layout, ``pixels`` [M, c_in]."""
    offset = 0

    def take(n):
        nonlocal offset
        out = params_ij[offset : offset + n]
        offset += n
        return out

    w0 = take(hidden * c_in).reshape(hidden, c_in)
    b0 = take(hidden)
    w1 = take(hidden * hidden).reshape(hidden, hidden)
    b1 = take(hidden)
    w2 = take(k * hidden).reshape(k, hidden)
    b2 = take(k)
    assert offset == params_ij.numel()
    x = torch.relu(pixels @ w0.T + b0)
    x = torch.relu(x @ w1.T + b1)
    return x @ w2.T + b2


@pytest.mark.parametrize("r, h, w", [(8, 2, 3), (4, 3, 2), (2, 1, 1)])
def test_batched_decoder_matches_per_patch_loop(r, h, w):
    k, hidden, g = 5, 16, 16
    head = small_head(num_classes=k, patch_size=r).eval()
    n, c_in = 2, 2 + g
    inputs = torch.randn(n, c_in, h * r, w * r, dtype=torch.float64)
    params = torch.randn(n, head.mlp.num_params, h, w, dtype=torch.float64) * 0.3
    out = head.decode(inputs, params)
    assert out.shape == (n, k, h * r, w * r)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                patch = inputs[b, :, i * r : (i + 1) * r, j * r : (j + 1) * r]  # [C, r, r]
                pixels = patch.reshape(c_in, r * r).T
                expected = naive_patch_mlp(params[b, :, i, j], pixels, c_in, hidden, k)
                got = out[b, :, i * r : (i + 1) * r, j * r : (j + 1) * r].reshape(k, r * r).T
                torch.testing.assert_close(got, expected)
    # Different locations really use different weights: swapping two locations' parameters
    # changes only their patches.
    swapped = params.clone()
    swapped[:, :, 0, 0] = params[:, :, h - 1, w - 1]
    out2 = head.decode(inputs, swapped)
    if (h, w) != (1, 1):
        assert not torch.allclose(out2[..., :r, :r], out[..., :r, :r])
    torch.testing.assert_close(out2[..., r:, :], out[..., r:, :])


def test_mlp_inputs_tile_relative_coordinates_and_guidance():
    r = 8
    head = small_head(patch_size=r).eval()
    feats = features_for(64, 96)
    with torch.no_grad():
        inputs = head.mlp_inputs(feats, (2, 3))
        guide = head.guidance(feats["res2"])
    assert inputs.shape == (2, 2 + 16, 16, 24)
    rows = torch.arange(16).remainder(r).float() / r
    cols = torch.arange(24).remainder(r).float() / r
    torch.testing.assert_close(inputs[:, 0], cols.expand(2, 16, 24))  # x
    torch.testing.assert_close(inputs[:, 1], rows[:, None].expand(2, 16, 24))  # y
    torch.testing.assert_close(inputs[:, 2:], guide)
    # The full head is decode(norm(inputs), controller params).
    with torch.no_grad():
        expected = head.decode(head.input_norm(inputs), head.dynamic_params(feats))
        torch.testing.assert_close(head.layers(feats), expected)


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("r", [8, 16, 32])
def test_output_sizes_for_patch_sizes(r):
    head = small_head(patch_size=r).eval()
    feats = features_for(100, 130)  # not divisible by 32: res5 is 4 x 5, res2 25 x 33
    with torch.no_grad():
        low = head.layers(feats)
        out, extra = head(feats)
    assert head.output_stride == 32 // r
    assert low.shape == (2, 5, 4 * r, 5 * r)
    assert out.shape == (2, 5, 128, 160) and extra == {}
    head.train()
    targets = torch.randint(0, 5, (2, 100, 130))
    _, losses = head(feats, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_guidance_resized_to_output_stride():
    # r = 16 -> stride 2: the 1x1-conv guidance is bilinearly upsampled x2 from res2.
    head = small_head(patch_size=16).eval()
    feats = features_for(64, 64)
    with torch.no_grad():
        inputs = head.mlp_inputs(feats, (2, 2))
        guide = head.guidance(feats["res2"])
    expected = F.interpolate(guide, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(inputs[:, 2:], expected)


def test_semantic_segmentor_output_has_input_size():
    cfg = load_cfg(TOY_CFG)
    model = build_model(cfg).eval()
    assert isinstance(model.sem_seg_head, NRDHead)
    images = [torch.randint(0, 255, (3, h, w)).float() for h, w in [(100, 130), (97, 161)]]
    with torch.no_grad():
        out = model([{"image": images[0]}, {"image": images[1], "height": 50, "width": 70}])
    assert out[0]["sem_seg"].shape == (8, 100, 130)
    assert out[1]["sem_seg"].shape == (8, 50, 70)


def test_bad_configuration_errors():
    with pytest.raises(KeyError, match="res3"):
        NRDHead(SHAPES, num_classes=3, guidance_in_feature="res3")
    with pytest.raises(ValueError, match="PATCH_SIZE 12 does not divide"):
        NRDHead(SHAPES, num_classes=3, patch_size=12)
    head = small_head().train()
    with pytest.raises(ValueError, match="larger"):
        head(features_for(64, 64), torch.zeros(2, 96, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        head(features_for(64, 64))


# --------------------------------------------------------------------------------------------
# Training, losses, auxiliary head


def test_training_step_losses_and_gradients():
    cfg = load_cfg(TOY_CFG, "MODEL.NRD.SCALE_CONTROLLER_INIT", "True")  # authors' init: logits ~ 0
    model = build_model(cfg).train()
    batch = []
    for _ in range(2):
        sem = torch.randint(0, 8, (128, 128))
        sem[:10] = 255
        batch.append({"image": torch.randint(0, 255, (3, 128, 128)).float(), "sem_seg": sem})
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    for name, v in losses.items():
        assert torch.isfinite(v) and v > 0, name
    # The 1/P-scaled controller init gives near-zero initial logits: CE ~ log K.
    assert losses["loss_sem_seg"].item() == pytest.approx(math.log(8), abs=0.05)
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_weights_and_ignore_value():
    feats = features_for(64, 64)
    targets = torch.randint(0, 5, (2, 64, 64))
    losses = {}
    for lw, aw in [(1.0, 0.4), (0.5, 0.8)]:
        torch.manual_seed(0)
        head = small_head(loss_weight=lw, aux_loss_weight=aw, aux_dropout=0.0).train()
        _, losses[lw] = head(feats, targets)
    torch.testing.assert_close(losses[0.5]["loss_sem_seg"], losses[1.0]["loss_sem_seg"] * 0.5)
    torch.testing.assert_close(losses[0.5]["loss_sem_seg_aux"], losses[1.0]["loss_sem_seg_aux"] * 2)
    # Main loss = CE of the logits upsampled to the input size; IGNORE_VALUE pixels count 0 and
    # (authors' mmseg 0.10 default) still count in the mean, or are left out of it.
    targets[:, :32] = 255
    for avg_non_ignore, valid_share in [(False, 0.5), (True, 1.0)]:
        torch.manual_seed(0)
        head = small_head(aux_in_feature="", avg_non_ignore=avg_non_ignore).train()
        _, losses = head(feats, targets)
        assert set(losses) == {"loss_sem_seg"}
        logits = F.interpolate(
            head.layers(feats), size=(64, 64), mode="bilinear", align_corners=False
        )
        per_pixel = -F.log_softmax(logits, 1).gather(1, targets.clamp(max=4)[:, None])[:, 0]
        valid_mean = per_pixel[:, 32:].mean()  # rows 32.. are the valid half
        torch.testing.assert_close(losses["loss_sem_seg"], valid_mean * valid_share)


def test_aux_head_runs_in_training_only():
    cfg = load_cfg(TOY_CFG)
    model = build_model(cfg)
    calls = []
    model.sem_seg_head.aux_head.register_forward_hook(lambda *a: calls.append(1))
    image = torch.randint(0, 255, (3, 128, 160)).float()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image}])
    assert calls == [] and set(out[0]) == {"sem_seg"}
    flops = FlopCountAnalysis(model, [{"image": image}])
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert flops.by_module()["model.sem_seg_head.aux_head"] == 0
    assert "model.sem_seg_head.aux_head" in flops.uncalled_modules()
    assert flops.by_module()["model.sem_seg_head"] > 0
    assert calls == []
    model.train()
    with EventStorage():
        model([{"image": image, "sem_seg": torch.randint(0, 8, (128, 160))}])
    assert calls == [1]


class _FixedLogits(torch.nn.Module):
    """Stands in for the auxiliary FCN head: returns the given logits whatever its input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def _column_ce_reference(col_logits, labels, out_width, in_over_out):
    """Independent 1-D reference (NumPy, float64): mean cross-entropy over ``out_width`` output
    columns of logits ``[K, w]`` bilinearly resampled (half-pixel centres, clamped at the
    border, as ``F.interpolate(align_corners=False)``) with ``in / out = in_over_out``;
    ``labels[x]`` is the class of output column ``x``. Constant along rows, so the mean over a
    column is the mean over the image."""
    logits = col_logits.double().numpy()
    w = logits.shape[1]
    losses = []
    for x in range(out_width):
        src = max((x + 0.5) * in_over_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, w - 1)
        lam = src - i0
        z = (1 - lam) * logits[:, i0] + lam * logits[:, i1]
        losses.append(np.log(np.exp(z).sum()) - z[labels[x]])
    return float(np.mean(losses))


def test_aux_loss_aligned_with_labels_on_250x300():
    """At 250 x 300 (not a multiple of 32) res4 is 16 x 19 and res5 8 x 10. The stride-16 aux
    logits cover 16 * 19 = 304 columns: they must be resized to 256 x 304 and cropped, not
    stretched to res5's 256 x 320 (which shifts column 299 by about 15 pixels)."""
    h, w, k = 250, 300, 5
    feats = features_for(h, w, n=2)  # two images: BatchNorm on the 1x1 pooled map
    assert feats["res4"].shape[-2:] == (16, 19) and feats["res5"].shape[-2:] == (8, 10)
    # Aux logits: class (j mod 2) wins by 8 in feature column j; labels follow the true column
    # of each pixel (x // 16), so only an aligned resize gets them right away from borders.
    cols = torch.arange(19)
    col_logits = torch.zeros(k, 19)
    col_logits[cols % 2, cols] = 8.0
    labels = (torch.arange(w) // 16) % 2
    targets = labels.expand(2, h, w).clone()
    head = small_head(num_classes=k, aux_loss_weight=1.0).train()
    head.aux_head = _FixedLogits(col_logits[None, :, None, :].expand(2, k, 16, 19))
    _, losses = head(feats, targets)
    got = losses["loss_sem_seg_aux"].item()
    aligned = _column_ce_reference(col_logits, labels.numpy(), w, 19 / 304)
    stretched = _column_ce_reference(col_logits, labels.numpy(), w, 19 / 320)
    assert got == pytest.approx(aligned, rel=1e-5)
    # The misaligned resize is far worse: this label pattern tells the two apart.
    assert stretched > aligned + 1.0


def test_pooling_norm_changes_only_the_pooling_conv():
    default = small_head()  # authors: 1x1 conv + norm (here BN) + ReLU, no bias
    plain = small_head(pooling_norm="")  # Detectron2's ASPP: 1x1 conv with bias + ReLU
    assert isinstance(default.aspp.pool_conv.norm, torch.nn.BatchNorm2d)
    assert default.aspp.pool_conv.bias is None
    assert plain.aspp.pool_conv.norm is None and plain.aspp.pool_conv.bias is not None
    gn = small_head(
        norm="GN",
        aspp_channels=32,
        controller_channels=32,
        guidance_conv_channels=32,
        aux_channels=32,
        guidance_channels=30,
    )
    assert isinstance(gn.aspp.pool_conv.norm, torch.nn.GroupNorm)  # follows NORM
    keys_default, keys_plain = set(default.state_dict()), set(plain.state_dict())
    assert keys_default - keys_plain == {
        f"aspp.pool_conv.norm.{p}"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert keys_plain - keys_default == {"aspp.pool_conv.bias"}
    # The config key is explicit (default BN, the authors' conv + norm); "" removes the norm.
    assert load_cfg().MODEL.NRD.POOLING_NORM == "BN"
    head = SEM_SEG_HEADS_REGISTRY.get("NRDHead")(
        load_cfg(None, "MODEL.NRD.POOLING_NORM", ""), SHAPES
    )
    assert head.aspp.pool_conv.norm is None
    with pytest.raises(ValueError, match='POOLING_NORM: "none" is not a norm'):
        small_head(pooling_norm="none")
    # The pooled branch's value is norm(conv(mean(x))) + ReLU, broadcast over the map.
    default.eval()
    x = torch.randn(2, 32, 3, 4)
    with torch.no_grad():
        pc = default.aspp.pool_conv
        expected = torch.relu(pc.norm(F.conv2d(x.mean((2, 3), keepdim=True), pc.weight)))
        torch.testing.assert_close(pc(F.adaptive_avg_pool2d(x, 1)), expected)


# --------------------------------------------------------------------------------------------
# Panoptic FPN / RSPPanopticFPN semantic branch


@pytest.mark.slow
@pytest.mark.parametrize("meta_arch", ["RSPPanopticFPN", "PanopticFPN"])
def test_panoptic_semantic_branch(meta_arch):
    # Mean over the valid pixels: the FPN pads 112 x 140 to 128 x 160 with ignored pixels.
    avg = ("MODEL.NRD.LOSS_AVG_NON_IGNORE", "True")
    if meta_arch == "RSPPanopticFPN":
        cfg = load_cfg(TOY_PAN_CFG, "MODEL.NRD.SCALE_CONTROLLER_INIT", "True", *avg)
    else:  # Detectron2's own PanopticFPN with NRDHead on its p5 / p2
        cfg = load_cfg(
            TOY_PAN_BASE_CFG,
            "MODEL.SEM_SEG_HEAD.NAME",
            "NRDHead",
            "MODEL.NRD.CONTROLLER_IN_FEATURE",
            "p5",
            "MODEL.NRD.GUIDANCE_IN_FEATURE",
            "p2",
            "MODEL.NRD.AUX_IN_FEATURE",
            "",
            "MODEL.NRD.ASPP_CHANNELS",
            "32",
            "MODEL.NRD.CONTROLLER_CHANNELS",
            "32",
            *avg,
        )
    model = build_model(cfg).train()
    assert type(model).__name__ == meta_arch
    assert isinstance(model, PanopticFPN) and isinstance(model.sem_seg_head, NRDHead)
    assert model.sem_seg_head.aux_head is None
    batch = panoptic_batch(h=112, w=140)  # padded to 128 x 160 by the FPN's size divisibility
    with EventStorage():
        losses = model(batch)
    assert "loss_sem_seg" in losses and "loss_sem_seg_aux" not in losses
    for k, v in losses.items():
        assert torch.isfinite(v), k
    # LOSS_WEIGHT 0.5 of Panoptic FPN is applied by the head; 6 classes at near-zero logits.
    assert losses["loss_sem_seg"].item() == pytest.approx(0.5 * math.log(6), abs=0.03)
    sum(losses.values()).backward()
    for name, p in model.sem_seg_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])
        _, sem = model.inference([{"image": batch[0]["image"]}], do_postprocess=False)
    assert out[0]["sem_seg"].shape == (6, 112, 140)
    assert out[0]["panoptic_seg"][0].shape == (112, 140)
    assert sem.shape == (1, 6, 128, 160)


def test_real_dataset_configs_build_the_reference_design():
    cfg = load_cfg(CITYSCAPES_CFG)
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone"
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.RESNETS.RES5_DILATION == 1
    assert list(cfg.MODEL.RESNETS.RES5_MULTI_GRID) == [1, 1, 1]
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.WEIGHT_DECAY == 0.0005
    assert cfg.SOLVER.MAX_ITER == 84000 and cfg.INPUT.CROP.SIZE == [512, 1024]
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    assert shapes["res5"].stride == 32 and shapes["res5"].channels == 2048
    head = model.sem_seg_head
    assert head.controller[-1].out_channels == 899
    assert head.output_stride == 4 and head.patch_size == 8
    assert len(head.aspp.branches) == 4 and head.aspp.project.kernel_size == (3, 3)
    assert head.aspp.project.out_channels == 512 and head.controller[0].out_channels == 512
    assert head.guidance[0].out_channels == 48 and head.guidance[1].out_channels == 16
    assert head.aux_head[0].out_channels == 256 and head.aux_loss_weight == 0.4
    # ResNetV1c stem: three 3x3 convs, 32 / 32 / 64 channels.
    stem = model.backbone.stem
    convs = [stem.conv1, stem.conv2, stem.conv3]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.out_channels for c in convs] == [32, 32, 64] and convs[0].stride == (2, 2)
    assert model.backbone.res2[0].conv1.in_channels == 64
    # Image pooling: 1x1 conv + norm + ReLU, no bias (mmseg ASPPHead.image_pool).
    assert head.aspp.pool_conv.norm is not None and head.aspp.pool_conv.bias is None
