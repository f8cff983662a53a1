"""The no-network route to ImageNet weights (GETTING_STARTED.md, "ImageNet weights"): a
torchvision ResNet, converted with tools/convert-torchvision-to-d2.py, fills the whole ResNet of
every shipped real config. (A randomly initialised torchvision ResNet stands in for the ImageNet
one; the key layout is the same.)"""

import os
import pickle

import pytest
import test_ade20k_pascal_context_runs
import test_cityscapes_runs
import test_coco_runs
import torch
from conftest import ROOT
from detectron2.checkpoint import DetectionCheckpointer
from standin_runs import ConvertedWeights

from nrd_rsp.engine import Trainer, setup_cfg

pytestmark = pytest.mark.slow

CONFIGS = (
    test_cityscapes_runs.CONFIGS + test_coco_runs.CONFIGS + test_ade20k_pascal_context_runs.CONFIGS
)
# The deep-stem (DeepLab / ResNetV1c) backbones have no torchvision counterpart; the converter's
# documented overrides give them torchvision's 7x7 stem.
BASIC_STEM = ["MODEL.RESNETS.STEM_TYPE", "basic", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return ConvertedWeights(tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_converted_torchvision_weights_fill_the_backbone(config, weights):
    cfg = setup_cfg(
        os.path.join(ROOT, config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], quiet=True
    )
    opts = BASIC_STEM if cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone" else []
    cfg = setup_cfg(
        os.path.join(ROOT, config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts], quiet=True
    )
    model = Trainer.build_model(cfg)
    resnet = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone
    prefix = "backbone.bottom_up." if hasattr(model.backbone, "bottom_up") else "backbone."
    path = weights[cfg.MODEL.RESNETS.DEPTH]
    ckpt = DetectionCheckpointer(model)
    incompatible = ckpt._load_model(ckpt._load_file(path))
    assert not [k for k in incompatible.missing_keys if k.startswith(prefix)]
    assert not incompatible.incorrect_shapes and not incompatible.unexpected_keys
    # every ResNet tensor holds the file's value
    with open(path, "rb") as f:
        converted = pickle.load(f)["model"]
    state = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(state) == sorted(converted)
    wrong = [k for k, v in state.items() if not torch.equal(v, torch.as_tensor(converted[k]))]
    assert not wrong, wrong[:5]
