#!/usr/bin/env python
"""Convert ImageNet ResNet weights from torchvision's format to a Detectron2 ``.pkl``.

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth R-50-torchvision.pkl

The output is ``{"model": {name: ndarray}, "__author__": "torchvision",
"matching_heuristics": True}``; Detectron2 loads it with name-matching heuristics, so the same
file initialises ``build_resnet_backbone`` and ``build_resnet_fpn_backbone`` models. ResNet-18/34
(BasicBlock) and ResNet-50/101/152 (Bottleneck) are supported; ``fc.*`` is dropped.

torchvision's ResNets differ from the MSRA ones the configs default to; train with
    MODEL.WEIGHTS R-50-torchvision.pkl MODEL.RESNETS.STRIDE_IN_1X1 False INPUT.FORMAT RGB
    MODEL.PIXEL_MEAN "[123.675, 116.28, 103.53]" MODEL.PIXEL_STD "[58.395, 57.12, 57.375]"
(plus MODEL.RESNETS.DEPTH 18/34 MODEL.RESNETS.RES2_OUT_CHANNELS 64 for the small ResNets). The
tool prints these overrides for the converted depth. torchvision ResNets have the basic 7x7 stem
(64 channels), which the NRD configs' DeepLab backbone (``STEM_TYPE: deeplab``: three 3x3 convs,
128 channels, R-52/R-103 weights) does not have: with torchvision weights, also pass
``MODEL.RESNETS.STEM_TYPE basic MODEL.RESNETS.STEM_OUT_CHANNELS 64`` there, or the stem and the
first res2 block are not loaded (Detectron2 warns about their shapes).
"""

import os
import re
import sys
from collections import Counter, OrderedDict

import torch

from nrd_rsp.converters import check_d2_weights_path, torch_load_tensors, write_d2_weights
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error

# torchvision ResNet depth -> blocks per stage (layer1..layer4), block type.
_ARCHS = {
    (2, 2, 2, 2): (18, "basic"),
    (3, 4, 6, 3): (34, "basic"),  # also ResNet-50's counts: disambiguated by conv3
    (3, 4, 23, 3): (101, "bottleneck"),
    (3, 8, 36, 3): (152, "bottleneck"),
}

_STEM = {"conv1.weight": "stem.conv1.weight"}
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
# layer{i}.{j}.conv{k}.weight / bn{k}.* / downsample.0.weight / downsample.1.*
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")


def rename_key(key):
    """torchvision ResNet key -> Detectron2 ResNet key; None for keys Detectron2 has no use for
    (``fc.*``, ``num_batches_tracked``). Raises ``ConfigError`` for a key of no ResNet."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    if key in _STEM:
        return _STEM[key]
    if key.startswith("bn1.") and key[len("bn1.") :] in _BN_PARAMS:
        return "stem.conv1.norm." + key[len("bn1.") :]
    m = _BLOCK.match(key)
    if not m:
        raise ConfigError(f"'{key}' is not a key of a torchvision ResNet state dict.")
    stage, block, layer, param = m.groups()
    prefix = f"res{int(stage) + 1}.{block}."
    if layer.startswith("conv"):
        return prefix + f"{layer}.{param}"
    if layer.startswith("bn"):
        return prefix + f"conv{layer[2:]}.norm.{param}"
    if layer == "downsample.0":
        return prefix + f"shortcut.{param}"
    return prefix + f"shortcut.norm.{param}"  # downsample.1 (BatchNorm)


def load_torchvision_state_dict(path):
    """A ResNet state dict from ``path``: a bare state dict, or one under 'state_dict' / 'model'."""
    if not os.path.isfile(path):
        raise ConfigError(f"Input weights not found: '{path}'.")
    obj = torch_load_tensors(path, "a PyTorch state dict")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise ConfigError(f"'{path}' does not hold a state dict of tensors.")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def detect_depth(state_dict):
    """ResNet depth from the number of blocks per stage and the block type."""
    blocks = Counter()
    for k in state_dict:
        m = _BLOCK.match(k)
        if m:
            blocks[(int(m.group(1)), int(m.group(2)))] += 1
    counts = tuple(len({b for (s, b) in blocks if s == stage}) for stage in range(1, 5))
    bottleneck = any(k.endswith(".conv3.weight") for k in state_dict)
    if counts == (3, 4, 6, 3):
        return 50 if bottleneck else 34
    if counts not in _ARCHS:
        raise ConfigError(f"Blocks per stage {counts} match no ResNet-18/34/50/101/152.")
    return _ARCHS[counts][0]


def convert(state_dict):
    """torchvision ResNet state dict -> (Detectron2 ``{"model": ...}`` dict, depth)."""
    depth = detect_depth(state_dict)
    model = OrderedDict()
    for k, v in state_dict.items():
        new = rename_key(k)
        if new is not None:
            model[new] = v.detach().cpu().numpy()
    return {"model": model, "__author__": "torchvision", "matching_heuristics": True}, depth


def config_overrides(depth, weights_path):
    """The ``KEY VALUE`` overrides a config needs to train from the converted weights."""
    opts = [
        "MODEL.WEIGHTS",
        weights_path,
        "MODEL.RESNETS.DEPTH",
        str(depth),
        "MODEL.RESNETS.STRIDE_IN_1X1",
        "False",
        "INPUT.FORMAT",
        "RGB",
        "MODEL.PIXEL_MEAN",
        "[123.675, 116.28, 103.53]",
        "MODEL.PIXEL_STD",
        "[58.395, 57.12, 57.375]",
    ]
    if depth in (18, 34):
        opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    return opts


def build_parser():
    p = OneLineArgumentParser(
        prog="convert-torchvision-to-d2.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("input", metavar="IN.pth", help="torchvision ResNet state dict")
    p.add_argument("output", metavar="OUT.pkl", help="Detectron2 weights to write")
    return p


@exit_on_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_d2_weights_path(args.output)  # before reading a large input
    converted, depth = convert(load_torchvision_state_dict(args.input))
    write_d2_weights(converted, args.output)
    print(f"Converted ResNet-{depth}: {len(converted['model'])} tensors -> {args.output}")
    opts = config_overrides(depth, args.output)
    print("Config overrides: " + " ".join(f'"{o}"' if " " in o else o for o in opts))
    print(
        "With a DeepLab-stem backbone (NRD configs) add: "
        "MODEL.RESNETS.STEM_TYPE basic MODEL.RESNETS.STEM_OUT_CHANNELS 64"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
