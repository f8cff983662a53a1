"""FLOPs and parameters of NRD at Cityscapes resolution (one 1024x2048 image, K = 19, eval mode),
counted with Detectron2's fvcore-based ``FlopCountAnalysis`` (1 multiply-add = 1 flop), against
Detectron2's own DeepLabV3+ decoder (R-50, output stride 16). docs/NRD.md quotes these numbers.

Each 1024x2048 forward runs once per session (module-scoped fixtures, no_grad)."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model, build_sem_seg_head
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count

from nrd_rsp import add_nrd_rsp_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NRD_R50_CFG = os.path.join(ROOT, "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml")
H, W = 1024, 2048

# Pinned for nrd_R_50_84k_bs16.yaml (ResNetV1c-50, stem 32/32/64) at 1024x2048 (docs/NRD.md).
NRD_R50_TOTAL_FLOPS = 235_561_026_560
NRD_R50_BACKBONE_FLOPS = 181_837_758_464
NRD_R50_DECODER_FLOPS = 53_563_884_544
NRD_R50_PARAMS = 45_938_058  # including the training-only auxiliary head
NRD_R50_AUX_PARAMS = 2_364_691
DEEPLABV3PLUS_DECODER_FLOPS = 295e9  # measured by the lead engineer


def _cfg(path=None, *opts):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    if path:
        cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


class _HeadOnly(torch.nn.Module):
    """Runs a semantic head alone on backbone-shaped tensors (inference logits)."""

    def __init__(self, head, names):
        super().__init__()
        self.head = head
        self.names = names

    def forward(self, *tensors):
        return self.head(dict(zip(self.names, tensors)))[0]


@pytest.fixture(scope="module")
def nrd_r50():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = build_model(_cfg(NRD_R50_CFG)).eval()
    image = torch.randint(0, 256, (3, H, W)).float()
    with torch.no_grad():
        flops = FlopCountAnalysis(model, [{"image": image}])
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops.total()  # runs the trace once; later queries reuse it
    return model, flops


@pytest.fixture(scope="module")
def deeplabv3plus_decoder_flops():
    """Detectron2's DeepLabV3PlusHead as in its Cityscapes config (R-50 deep stem, OS 16)."""
    cfg = _cfg(
        None,
        "MODEL.BACKBONE.NAME",
        "build_resnet_deeplab_backbone",
        "MODEL.RESNETS.DEPTH",
        "50",
        "MODEL.RESNETS.NORM",
        "BN",
        "MODEL.RESNETS.OUT_FEATURES",
        '["res2", "res5"]',
        "MODEL.RESNETS.STEM_TYPE",
        "deeplab",
        "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "128",
        "MODEL.RESNETS.STRIDE_IN_1X1",
        "False",
        "MODEL.RESNETS.RES5_DILATION",
        "2",
        "MODEL.RESNETS.RES5_MULTI_GRID",
        "[1, 2, 4]",
        "MODEL.SEM_SEG_HEAD.NAME",
        "DeepLabV3PlusHead",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES",
        '["res2", "res5"]',
        "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES",
        '["res2"]',
        "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
        "[48]",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
        "256",
        "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS",
        "[6, 12, 18]",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        "256",
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE",
        "4",
        "MODEL.SEM_SEG_HEAD.NORM",
        "BN",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "19",
        "INPUT.CROP.ENABLED",
        "False",  # global image pooling
    )
    shapes = build_backbone(cfg).output_shape()
    assert shapes["res5"].stride == 16 and shapes["res2"].stride == 4
    head = build_sem_seg_head(cfg, shapes).eval()
    names = ["res2", "res5"]
    feats = [
        torch.randn(1, shapes[n].channels, H // shapes[n].stride, W // shapes[n].stride)
        for n in names
    ]
    with torch.no_grad():
        flops = FlopCountAnalysis(_HeadOnly(head, names), tuple(feats))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return flops.total()


def test_deeplabv3plus_baseline_is_the_measured_one(deeplabv3plus_decoder_flops):
    assert deeplabv3plus_decoder_flops == pytest.approx(DEEPLABV3PLUS_DECODER_FLOPS, rel=0.03)


def test_nrd_decoder_at_most_20_percent_of_deeplabv3plus(nrd_r50, deeplabv3plus_decoder_flops):
    _, flops = nrd_r50
    decoder = flops.by_module()["model.sem_seg_head"]
    assert decoder <= 0.20 * deeplabv3plus_decoder_flops
    # Roughly 53 GMACs, as the reference design.
    assert 50e9 < decoder < 56e9


def test_pinned_flops_and_params_of_nrd_r50(nrd_r50):
    model, flops = nrd_r50
    by_module = flops.by_module()
    assert flops.total() == NRD_R50_TOTAL_FLOPS
    assert by_module["model.backbone"] == NRD_R50_BACKBONE_FLOPS
    assert by_module["model.sem_seg_head"] == NRD_R50_DECODER_FLOPS
    params = parameter_count(model)
    assert params[""] == NRD_R50_PARAMS
    assert params["sem_seg_head.aux_head"] == NRD_R50_AUX_PARAMS


def test_dynamic_mlp_is_counted(nrd_r50):
    model, flops = nrd_r50
    head = model.sem_seg_head
    n, h, w, r = 1, H // 32, W // 32, head.patch_size
    c_in, hidden, k = head.mlp.channels[0], head.mlp.channels[1], head.mlp.channels[-1]
    assert (c_in, hidden, k) == (18, 16, 19)
    expected = n * h * w * r * r * (c_in * hidden + hidden * hidden + hidden * k)
    assert flops.by_module()["model.sem_seg_head.mlp"] == expected == 111_149_056
    assert flops.by_module_and_operator()["model.sem_seg_head.mlp"] == {"matmul": expected}
    # Every op of the head is counted or deliberately ignored.
    assert sum(flops.unsupported_ops("model.sem_seg_head").values()) == 0
    # The training-only auxiliary head costs nothing at inference.
    assert flops.by_module()["model.sem_seg_head.aux_head"] == 0
    assert "model.sem_seg_head.aux_head" in flops.uncalled_modules()
    # The head's parts add up to the decoder (inference: the resize to the input size included).
    parts = ["aspp", "controller", "guidance", "input_norm", "mlp"]
    by_module = flops.by_module()
    upsample = 4 * k * H * W  # bilinear, 4 flops per output element
    total_parts = sum(by_module[f"model.sem_seg_head.{p}"] for p in parts) + upsample
    assert total_parts == by_module["model.sem_seg_head"]
