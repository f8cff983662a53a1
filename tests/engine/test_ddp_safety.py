"""DDP safety (issue 19): every trainable parameter of every shipped config gets a gradient in
one training step (DistributedDataParallel fails with "Expected to have finished reduction"
otherwise), and a config that would leave RSP stages without one is rejected when the model is
built, with one line naming the keys."""

import glob
import os

import pytest
import torch
from conftest import ROOT, panoptic_batch
from detectron2.utils.events import EventStorage

import nrd_rsp.modeling.rsp as rsp_module
from nrd_rsp.engine import Trainer, setup_cfg
from nrd_rsp.errors import ConfigError

pytestmark = pytest.mark.slow

CONFIGS = sorted(
    os.path.relpath(f, ROOT)
    for f in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(f).startswith("Base-")
)


def _params_without_grad(config, opts=()):
    """Names of the trainable parameters that get no gradient in one training step of
    ``config`` (random weights, CPU) on two small images with semantic and instance labels."""
    torch.manual_seed(0)
    cfg = setup_cfg(os.path.join(ROOT, config), ["MODEL.WEIGHTS", "", *opts], quiet=True)
    model = Trainer.build_model(cfg).train()
    batch = panoptic_batch(n=2, h=128, w=160)
    for x in batch:  # the config's ignore value and class count
        x["sem_seg"] = x["sem_seg"] % cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    return [n for n, p in trainable if p.grad is None]


def test_configs_are_found():
    assert len(CONFIGS) >= 20 and "configs/Toy/nrd_R_18_toy.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_every_trainable_parameter_gets_a_gradient(config):
    assert _params_without_grad(config) == []


def _build_error(config, opts):
    cfg = setup_cfg(os.path.join(ROOT, config), ["MODEL.WEIGHTS", "", *opts], quiet=True)
    with pytest.raises(ConfigError) as e:
        Trainer.build_model(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_rsp_stages_without_gradient_are_rejected_when_built():
    opts = ["MODEL.SEM_SEG_HEAD.RSP_FUSION", "p2", "MODEL.RSP.NUM_STAGES", "2"]
    msg = _build_error("configs/Toy/rsp_R_18_toy.yaml", opts)
    assert "MODEL.RSP.NUM_STAGES 2" in msg and "MODEL.SEM_SEG_HEAD.RSP_FUSION p2" in msg
    assert "refines p4, p3" in msg and "no gradient" in msg
    # Panoptic: the instance heads read the plain FPN, the semantic head not the finest level.
    opts = [
        "MODEL.RSP_PANOPTIC_FPN.INSTANCE_FEATURES",
        "fpn",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES",
        "['p3', 'p4', 'p5']",
    ]
    msg = _build_error("configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml", opts)
    assert "refines p2" in msg and "MODEL.SEM_SEG_HEAD" in msg
    # Enough stages: the same fusion builds.
    _params_without_grad("configs/Toy/rsp_R_18_toy.yaml", ["MODEL.SEM_SEG_HEAD.RSP_FUSION", "p2"])


def test_the_rejected_config_would_leave_parameters_without_gradient(monkeypatch):
    """What the check prevents, measured: without it, the config builds and the RSP stages
    refining p4 and p3 (and the FPN outputs only they read) get no gradient."""
    monkeypatch.setattr(rsp_module, "check_rsp_stages_used", lambda *args: None)
    opts = ["MODEL.SEM_SEG_HEAD.RSP_FUSION", "p2", "MODEL.RSP.NUM_STAGES", "2"]
    missing = _params_without_grad("configs/Toy/rsp_R_18_toy.yaml", opts)
    stages = {n.split(".")[3] for n in missing if n.startswith("sem_seg_head.rsp.stages.")}
    assert stages == {"p3", "p4"}
    assert {n.split(".")[1] for n in missing if n.startswith("backbone.")} == {
        "fpn_output3",
        "fpn_output4",
        "fpn_output5",
    }
