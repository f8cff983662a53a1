"""tools/convert-torchvision-to-d2.py: torchvision ResNet-50 / ResNet-18 state dicts (random,
no download) become Detectron2 .pkl files that fill every tensor of the ResNet backbone of our
R-50 FPN (Cityscapes RSP) and R-18 FPN (toy) configs through DetectionCheckpointer's matching
heuristics, with the values of the torchvision tensors they came from."""

import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import ROOT, TOY_OPTS, load_script
from detectron2.checkpoint import DetectionCheckpointer

from nrd_rsp.engine import ConfigError, Trainer, setup_cfg

SCRIPT = os.path.join(ROOT, "tools", "convert-torchvision-to-d2.py")


convert = load_script("tools/convert-torchvision-to-d2.py")


def _random_torchvision_state(arch, seed=0):
    """A torchvision ResNet state dict in which every tensor, BN statistics included, is random
    (default BN statistics 0 / 1 would equal Detectron2's and prove nothing)."""
    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if v.is_floating_point():
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.copy_(torch.randn(v.shape, generator=g))
    return state


def _to_torchvision_name(d2_key):
    """Independent inverse mapping (Detectron2 backbone key -> torchvision key) for the check."""
    k = d2_key
    if k.startswith("stem.conv1.norm."):
        return "bn1." + k[len("stem.conv1.norm.") :]
    if k.startswith("stem.conv1."):
        return "conv1." + k[len("stem.conv1.") :]
    stage, block, rest = k.split(".", 2)
    layer = f"layer{int(stage[3:]) - 1}.{block}."
    if rest.startswith("shortcut.norm."):
        return layer + "downsample.1." + rest[len("shortcut.norm.") :]
    if rest.startswith("shortcut."):
        return layer + "downsample.0." + rest[len("shortcut.") :]
    conv, tail = rest.split(".", 1)  # conv2 / norm.running_mean
    if tail.startswith("norm."):
        return layer + "bn" + conv[4:] + "." + tail[len("norm.") :]
    return layer + rest


def _check_backbone_filled(model, pkl_path, tv_state):
    bottom_up = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone
    prefix = "backbone.bottom_up." if hasattr(model.backbone, "bottom_up") else "backbone."
    DetectionCheckpointer(model).load(pkl_path)
    d2_state = bottom_up.state_dict()
    assert len(d2_state) > 50
    for k, v in d2_state.items():
        expected = tv_state[_to_torchvision_name(k)]
        assert torch.equal(v, expected), (
            f"{prefix}{k} was not loaded from {_to_torchvision_name(k)}"
        )
    # the same through DetectionCheckpointer's report: no backbone key is missing
    ckpt = DetectionCheckpointer(model)
    incompatible = ckpt._load_model(ckpt._load_file(pkl_path))
    assert not [k for k in incompatible.missing_keys if k.startswith(prefix)]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes


def test_rename_key():
    r = convert.rename_key
    assert r("conv1.weight") == "stem.conv1.weight"
    assert r("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert r("layer1.0.conv3.weight") == "res2.0.conv3.weight"
    assert r("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert r("layer3.5.downsample.1.running_var") == "res4.5.shortcut.norm.running_var"
    assert r("layer4.2.bn2.bias") == "res5.2.conv2.norm.bias"
    assert r("fc.weight") is None and r("layer1.0.bn1.num_batches_tracked") is None
    with pytest.raises(ConfigError, match="not a key of a torchvision ResNet"):
        r("features.0.weight")


@pytest.mark.slow
def test_resnet50_cli_fills_rsp_r50_fpn_backbone(tmp_path):
    tv = _random_torchvision_state("resnet50")
    src, dst = tmp_path / "resnet50.pth", tmp_path / "R-50-tv.pkl"
    torch.save(tv, src)
    r = subprocess.run(
        [sys.executable, SCRIPT, str(src), str(dst)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ResNet-50" in r.stdout and "MODEL.RESNETS.STRIDE_IN_1X1 False" in r.stdout
    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert not any(k.startswith("fc.") or "num_batches_tracked" in k for k in data["model"])
    cfg = setup_cfg(
        os.path.join(
            ROOT, "configs", "Cityscapes-SemanticSegmentation", "rsp_R_50_FPN_90k_bs16.yaml"
        ),
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.RESNETS.STRIDE_IN_1X1",
            "False",
        ],
    )
    model = Trainer.build_model(cfg)
    _check_backbone_filled(model, str(dst), tv)
    # e.g. a BN's running_mean and the last block's conv
    bu = model.backbone.bottom_up
    assert torch.equal(bu.res3[0].conv1.norm.running_mean, tv["layer2.0.bn1.running_mean"])
    assert torch.equal(bu.res5[2].conv3.weight, tv["layer4.2.conv3.weight"])


def test_resnet18_fills_toy_r18_fpn_backbone(tmp_path):
    tv = _random_torchvision_state("resnet18", seed=1)
    src, dst = tmp_path / "resnet18.pth", tmp_path / "R-18-tv.pkl"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in tv.items()}}, src
    )  # wrapped + DDP prefix
    assert convert.main([str(src), str(dst)]) == 0
    cfg = setup_cfg(
        os.path.join(ROOT, "configs", "Toy", "semantic_fpn_R_18_toy.yaml"),
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.STRIDE_IN_1X1",
            "False",
            *TOY_OPTS,
        ],
    )
    model = Trainer.build_model(cfg)
    _check_backbone_filled(model, str(dst), tv)
    assert torch.equal(
        model.backbone.bottom_up.stem.conv1.norm.running_mean, tv["bn1.running_mean"]
    )
    shortcut_bn = model.backbone.bottom_up.res3[0].shortcut.norm
    assert torch.equal(shortcut_bn.running_var, tv["layer2.0.downsample.1.running_var"])


def test_detect_depth():
    assert convert.detect_depth(torchvision.models.resnet34(weights=None).state_dict()) == 34
    assert convert.detect_depth(torchvision.models.resnet101(weights=None).state_dict()) == 101


@pytest.mark.parametrize("case", ["missing", "not_resnet", "bad_ext", "text"])
def test_errors_are_one_line(case, tmp_path, capsys):
    src, dst = tmp_path / "in.pth", tmp_path / "out.pkl"
    if case == "not_resnet":
        torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).state_dict(), src)
    elif case == "text":
        src.write_text("not a checkpoint")
    elif case == "bad_ext":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
        dst = tmp_path / "out.pth"
    with pytest.raises(SystemExit) as e:
        convert.main([str(src), str(dst)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and "\n" not in err
    assert not dst.exists()


def _trained_like_torchvision(arch, seed):
    """torchvision's own initialisation with BN statistics and affine parameters moved away from
    0 / 1."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


@pytest.mark.parametrize(
    "arch, config, extra",
    [
        ("resnet18", "Toy/semantic_fpn_R_18_toy.yaml", TOY_OPTS),
        ("resnet50", "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml", []),
    ],
)
def test_converted_backbone_computes_torchvision_forward(arch, config, extra, tmp_path, capsys):
    """The converted weights, with the overrides the converter prints (and nothing else), give
    the features of torchvision's own forward (layer1..layer4 = res2..res5) within 1e-4, on an
    RGB image normalised as torchvision normalises it."""
    net = _trained_like_torchvision(arch, seed=3)
    src, dst = tmp_path / f"{arch}.pth", tmp_path / f"{arch}.pkl"
    torch.save(net.state_dict(), src)
    assert convert.main([str(src), str(dst)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Config overrides:")]
    overrides = shlex.split(line[len("Config overrides:") :])
    cfg = setup_cfg(
        os.path.join(ROOT, "configs", config), overrides + ["MODEL.DEVICE", "cpu", *extra]
    )
    model = Trainer.build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model, net = model.double(), net.double()  # float64: 1e-4 is absolute even where |x| ~ 300
    g = torch.Generator().manual_seed(4)
    rgb = torch.rand(1, 3, 96, 128, generator=g, dtype=torch.float64) * 255  # format RGB
    assert cfg.INPUT.FORMAT == "RGB"
    with torch.no_grad():
        d2 = model.backbone.bottom_up((rgb - model.pixel_mean) / model.pixel_std)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = (rgb / 255 - mean.double()[:, None, None]) / std.double()[:, None, None]
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for i, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4]):
            x = layer(x)
            ours = d2[f"res{i + 2}"]
            assert ours.shape == x.shape
            assert x.abs().max() > 0.1  # not a degenerate comparison
            assert (ours - x).abs().max() <= 1e-4, f"res{i + 2}: {(ours - x).abs().max():.2e}"
