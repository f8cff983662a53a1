#!/usr/bin/env python
"""Convert OpenMMLab ResNetV1c ImageNet weights to a Detectron2 ``.pkl`` for the NRD configs.

    python tools/convert-mmcls-v1c-to-d2.py resnet50_v1c-2cccc1ad.pth pretrained/resnet50_v1c.pkl

The input is the checkpoint behind ``open-mmlab://resnet50_v1c`` / ``resnet101_v1c`` (the NRD
authors' encoders; https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth,
``.../resnet101_v1c-e67eebb6.pth``) or an mmcls ``ResNetV1c`` checkpoint (``backbone.`` prefix,
``head.*`` dropped). ResNetV1c is ResNet-50/101/152 with a deep stem of three 3x3 convs
(32/32/64 channels) and the stride in the 3x3 conv, i.e. Detectron2's
``build_resnet_deeplab_backbone`` with ``STEM_TYPE deeplab``, ``STEM_OUT_CHANNELS 64`` and
``STRIDE_IN_1X1 False`` (the NRD configs). Key mapping:

    stem.0 / stem.1 (BN)           -> stem.conv1 / stem.conv1.norm   (likewise 3/4 -> conv2,
                                                                      6/7 -> conv3)
    layer{i}.{j}.conv{k} / bn{k}   -> res{i+1}.{j}.conv{k} / conv{k}.norm
    layer{i}.{j}.downsample.0 / .1 -> res{i+1}.{j}.shortcut / shortcut.norm

``fc.*`` and ``num_batches_tracked`` are dropped. The output is ``{"model": {name: ndarray},
"__author__": "OpenMMLab", "matching_heuristics": True}``, loaded by Detectron2 with its
name-matching heuristics. The weights expect RGB input with mean [123.675, 116.28, 103.53] and
std [58.395, 57.12, 57.375], which the NRD configs set.
"""

import os
import re
import sys
from collections import OrderedDict

import torch

from nrd_rsp.converters import check_d2_weights_path, torch_load_tensors, write_d2_weights
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error

# Blocks per stage (layer1..layer4) -> depth; Detectron2's deep-stem ResNet has these three only.
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
# Index of each module inside OpenMMLab's stem nn.Sequential (ReLUs at 2, 5, 8).
_STEM = {"0": "conv1", "1": "conv1.norm", "3": "conv2", "4": "conv2.norm", "6": "conv3",
         "7": "conv3.norm"}  # fmt: skip
_STEM_KEY = re.compile(r"^stem\.(\d)\.(\w+)$")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")
_DROPPED = re.compile(r"(^fc\.|^head\.|num_batches_tracked$)")


def _block_key(stage: str, block: str, layer: str, param: str) -> str:
    prefix = f"res{int(stage) + 1}.{block}."
    if layer.startswith("conv"):
        return prefix + f"{layer}.{param}"
    if layer.startswith("bn"):
        return prefix + f"conv{layer[2:]}.norm.{param}"
    if layer == "downsample.0":
        return prefix + f"shortcut.{param}"
    return prefix + f"shortcut.norm.{param}"  # downsample.1 (BatchNorm)


def rename_key(key: str):
    """OpenMMLab ResNetV1c key (``backbone.`` prefix stripped) -> Detectron2 key; None for the
    keys Detectron2 has no use for. Raises ``ConfigError`` for a key of no ResNetV1c."""
    if _DROPPED.search(key):
        return None
    m = _STEM_KEY.match(key)
    if m and m.group(1) in _STEM:
        return f"stem.{_STEM[m.group(1)]}.{m.group(2)}"
    m = _BLOCK_KEY.match(key)
    if m:
        return _block_key(*m.groups())
    raise ConfigError(f"'{key}' is not a key of an OpenMMLab ResNetV1c state dict.")


def load_v1c_state_dict(path: str):
    """The backbone state dict in ``path``: bare, or under 'state_dict' / 'model'; an mmcls
    classifier's ``backbone.`` prefix is stripped (its ``head.*`` is dropped by ``rename_key``)."""
    if not os.path.isfile(path):
        raise ConfigError(f"Input weights not found: '{path}'.")
    obj = torch_load_tensors(path, "an OpenMMLab checkpoint")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())
    if not obj or not tensors:
        raise ConfigError(f"'{path}' does not hold a state dict of tensors.")
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in obj):
            obj = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj.items()}
    if "stem.0.weight" not in obj:
        raise ConfigError(
            f"'{path}' has no 'stem.0.weight': not a ResNetV1c (deep-stem) checkpoint. For "
            "torchvision ResNets use tools/convert-torchvision-to-d2.py."
        )
    return obj


def detect_architecture(state_dict):
    """``(depth, stem_out_channels)`` of a ResNetV1c state dict."""
    blocks = {}
    for k in state_dict:
        m = _BLOCK_KEY.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = tuple(len(blocks.get(stage, ())) for stage in range(1, 5))
    if counts not in _DEPTHS or not any(k.endswith(".conv3.weight") for k in state_dict):
        raise ConfigError(
            f"Blocks per stage {counts} match no bottleneck ResNet-50/101/152, the depths of "
            "Detectron2's deep-stem ResNet."
        )
    return _DEPTHS[counts], int(state_dict["stem.6.weight"].shape[0])


def convert(state_dict):
    """ResNetV1c state dict -> (Detectron2 ``{"model": ...}`` dict, depth, stem channels)."""
    depth, stem_channels = detect_architecture(state_dict)
    model = OrderedDict()
    for k, v in state_dict.items():
        new = rename_key(k)
        if new is not None:
            model[new] = v.detach().cpu().numpy()
    converted = {"model": model, "__author__": "OpenMMLab", "matching_heuristics": True}
    return converted, depth, stem_channels


def config_overrides(depth: int, stem_channels: int, weights_path: str):
    """The ``KEY VALUE`` overrides that point an NRD config at the converted weights."""
    return [
        "MODEL.WEIGHTS", weights_path,
        "MODEL.RESNETS.DEPTH", str(depth),
        "MODEL.RESNETS.STEM_OUT_CHANNELS", str(stem_channels),
    ]  # fmt: skip


def build_parser():
    p = OneLineArgumentParser(
        prog="convert-mmcls-v1c-to-d2.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("input", metavar="IN.pth", help="OpenMMLab ResNetV1c checkpoint")
    p.add_argument("output", metavar="OUT.pkl", help="Detectron2 weights to write")
    return p


@exit_on_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_d2_weights_path(args.output)  # before reading a large input
    converted, depth, stem = convert(load_v1c_state_dict(args.input))
    write_d2_weights(converted, args.output)
    print(f"Converted ResNetV1c-{depth} (stem {stem // 2}/{stem // 2}/{stem}): "
          f"{len(converted['model'])} tensors -> {args.output}")  # fmt: skip
    print("Config overrides: " + " ".join(config_overrides(depth, stem, args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
