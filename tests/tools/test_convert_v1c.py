"""tools/convert-mmcls-v1c-to-d2.py: random state dicts with OpenMMLab's ResNetV1c key layout (no
download) become Detectron2 .pkl files whose every backbone key maps and which fill every tensor
of the ResNetV1c backbone of the NRD configs, with the values they came from."""

import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script
from detectron2.checkpoint import DetectionCheckpointer

from nrd_rsp.engine import ConfigError, Trainer, setup_cfg

SCRIPT = os.path.join(ROOT, "tools", "convert-mmcls-v1c-to-d2.py")
CS = os.path.join(ROOT, "configs", "Cityscapes-SemanticSegmentation")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


convert = load_script("tools/convert-mmcls-v1c-to-d2.py")


def random_v1c_state(depth=50, stem=64, seed=0):
    """The state dict of an OpenMMLab ``ResNetV1c`` classifier (mmcv/mmseg layout: ``stem`` is
    ``Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu)``, bottlenecks with ``conv1-3``,
    ``bn1-3`` and ``downsample = Sequential(conv, bn)`` in the first block of each stage, plus
    ``fc``), built from the architecture with every tensor random (BN statistics included)."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()

    def conv(name, c_out, c_in, k):
        state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g)

    def bn(name, c):
        state[f"{name}.weight"] = torch.randn(c, generator=g)
        state[f"{name}.bias"] = torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    widths = [(stem // 2, 3), (stem // 2, stem // 2), (stem, stem // 2)]
    for i, (c_out, c_in) in enumerate(widths):
        conv(f"stem.{3 * i}", c_out, c_in, 3)
        bn(f"stem.{3 * i + 1}", c_out)
    in_ch = stem
    for stage, n in enumerate(BLOCKS[depth], start=1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(n):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", planes, in_ch, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", 4 * planes, planes, 1), bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * planes, in_ch, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            in_ch = 4 * planes
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


def to_openmmlab_name(d2_key):
    """Independent inverse mapping (Detectron2 backbone key -> OpenMMLab key) for the check."""
    if d2_key.startswith("stem."):
        _, conv, rest = d2_key.split(".", 2)  # stem.conv2.norm.bias
        index = 3 * (int(conv[-1]) - 1)
        if rest.startswith("norm."):
            return f"stem.{index + 1}.{rest[len('norm.') :]}"
        return f"stem.{index}.{rest}"
    stage, block, rest = d2_key.split(".", 2)
    layer = f"layer{int(stage[3:]) - 1}.{block}."
    if rest.startswith("shortcut.norm."):
        return layer + "downsample.1." + rest[len("shortcut.norm.") :]
    if rest.startswith("shortcut."):
        return layer + "downsample.0." + rest[len("shortcut.") :]
    conv, tail = rest.split(".", 1)
    if tail.startswith("norm."):
        return layer + "bn" + conv[4:] + "." + tail[len("norm.") :]
    return layer + rest


def test_rename_key():
    r = convert.rename_key
    assert r("stem.0.weight") == "stem.conv1.weight"
    assert r("stem.1.running_var") == "stem.conv1.norm.running_var"
    assert r("stem.3.weight") == "stem.conv2.weight" and r("stem.4.bias") == "stem.conv2.norm.bias"
    assert r("stem.6.weight") == "stem.conv3.weight"
    assert r("stem.7.weight") == "stem.conv3.norm.weight"
    assert r("layer1.0.conv1.weight") == "res2.0.conv1.weight"
    assert r("layer1.0.bn1.running_mean") == "res2.0.conv1.norm.running_mean"
    assert r("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert r("layer3.22.downsample.1.bias") == "res4.22.shortcut.norm.bias"
    assert r("layer4.2.bn3.weight") == "res5.2.conv3.norm.weight"
    for dropped in ("fc.weight", "head.fc.bias", "stem.1.num_batches_tracked"):
        assert r(dropped) is None
    for bad in ("stem.2.weight", "conv1.weight", "features.0.weight"):
        with pytest.raises(ConfigError, match="not a key of an OpenMMLab ResNetV1c"):
            r(bad)


@pytest.mark.parametrize("depth", [50, 101])
def test_every_key_maps_and_architecture_is_detected(depth):
    state = random_v1c_state(depth)
    converted, got_depth, stem = convert.convert(state)
    assert (got_depth, stem) == (depth, 64)
    model = converted["model"]
    kept = [k for k in state if "num_batches_tracked" not in k and not k.startswith("fc.")]
    assert len(model) == len(kept)  # every backbone key maps, one to one
    for k, v in model.items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, state[to_openmmlab_name(k)].numpy())
    assert converted["__author__"] == "OpenMMLab" and converted["matching_heuristics"] is True


@pytest.mark.slow
def test_cli_fills_the_v1c_nrd_backbone(tmp_path):
    state = random_v1c_state(50, seed=1)
    src, dst = tmp_path / "resnet50_v1c.pth", tmp_path / "out" / "resnet50_v1c.pkl"
    # OpenMMLab checkpoints hold the weights under "state_dict", next to "meta"
    torch.save({"meta": {"epoch": 100}, "state_dict": state}, src)
    r = subprocess.run([sys.executable, SCRIPT, str(src), str(dst)], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ResNetV1c-50 (stem 32/32/64)" in r.stdout
    assert "MODEL.RESNETS.STEM_OUT_CHANNELS 64" in r.stdout
    cfg = setup_cfg(os.path.join(CS, "nrd_R_50_84k_bs16.yaml"),
                    ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN",
                     "MODEL.NRD.NORM", "BN", "MODEL.NRD.INPUT_NORM", "BN",
                     "MODEL.NRD.POOLING_NORM", "BN"])  # fmt: skip
    model = Trainer.build_model(cfg)
    ckpt = DetectionCheckpointer(model)
    incompatible = ckpt._load_model(ckpt._load_file(str(dst)))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.")]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    backbone = model.backbone.state_dict()
    assert len(backbone) > 250
    for k, v in backbone.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(v, state[to_openmmlab_name(k)]), k
    assert model.backbone.stem.conv1.weight.shape == (32, 3, 3, 3)


@pytest.mark.slow
def test_mmcls_prefix_and_errors(tmp_path):
    state = random_v1c_state(101)
    mmcls = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    mmcls["head.fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "mmcls.pth"
    torch.save({"state_dict": mmcls}, path)
    converted, depth, _ = convert.convert(convert.load_v1c_state_dict(str(path)))
    assert depth == 101 and "stem.conv1.weight" in converted["model"]
    assert not any(k.startswith("head") for k in converted["model"])
    # a torchvision ResNet (7x7 stem) is named as such
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "tv.pth")
    with pytest.raises(ConfigError, match="convert-torchvision-to-d2"):
        convert.load_v1c_state_dict(str(tmp_path / "tv.pth"))
    # Detectron2's deep-stem ResNet exists for bottleneck depths only
    small = {k: v for k, v in state.items() if not k.startswith(("layer3.", "layer4."))}
    with pytest.raises(ConfigError, match="match no bottleneck ResNet"):
        convert.convert(small)
    r = subprocess.run([sys.executable, SCRIPT, str(path), str(tmp_path / "x.pth")],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr
    assert "OUT must end with .pkl" in errors[0]
