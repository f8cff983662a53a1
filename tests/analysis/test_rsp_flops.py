"""FLOPs of the RSP semantic models on one 1024x2048 image (19 classes, inference), counted by
fvcore through Detectron2's FlopCountAnalysis (one fused multiply-add = one flop).

Each model is traced once per session (module-scoped fixtures). Models run in channels-last
memory layout only to make the CPU forward faster; fvcore counts from the logical shapes.
"""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count

from nrd_rsp import add_nrd_rsp_config

pytestmark = pytest.mark.slow

SIZE = (1024, 2048)
RSP_R50_CFG = "configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml"
RSP_R101_CFG = "configs/Cityscapes-SemanticSegmentation/rsp_R_101_FPN_90k_bs16.yaml"

# Pinned so that any change of the architecture or its defaults is deliberate.
RSP_R50_FLOPS = 266_287_185_920
RSP_R50_PARAMS = 26_267_011
# Detectron2 DeepLabV3 R-101, output stride 8, as measured by the lead engineer.
DEEPLAB_R101_OS8_FLOPS = 1971e9


def _cfg(path=None, opts=()):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    if path:
        cfg.merge_from_file(path)
    # SyncBN needs a process group; single-process CPU: plain BN (same FLOPs and parameters).
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", *opts]
    )
    return cfg


def deeplab_v3_r101_os8_cfg():
    """Detectron2's DeepLabV3 (detectron2.projects.deeplab) R-101, deep stem, output stride 8
    (res4/res5 dilation 2/4, multi-grid 1-2-4), ASPP dilations 12/24/36, 19 classes."""
    return _cfg(
        opts=[
            "MODEL.META_ARCHITECTURE",
            "SemanticSegmentor",
            "MODEL.BACKBONE.NAME",
            "build_resnet_deeplab_backbone",
            "MODEL.RESNETS.DEPTH",
            101,
            "MODEL.RESNETS.OUT_FEATURES",
            ["res5"],
            "MODEL.RESNETS.STEM_TYPE",
            "deeplab",
            "MODEL.RESNETS.STEM_OUT_CHANNELS",
            128,
            "MODEL.RESNETS.STRIDE_IN_1X1",
            False,
            "MODEL.RESNETS.RES4_DILATION",
            2,
            "MODEL.RESNETS.RES5_DILATION",
            4,
            "MODEL.RESNETS.RES5_MULTI_GRID",
            [1, 2, 4],
            "MODEL.SEM_SEG_HEAD.NAME",
            "DeepLabV3Head",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES",
            ["res5"],
            "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
            256,
            "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS",
            [12, 24, 36],
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            256,
            "MODEL.SEM_SEG_HEAD.COMMON_STRIDE",
            8,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            19,
            "MODEL.SEM_SEG_HEAD.NORM",
            "BN",
            "INPUT.CROP.ENABLED",
            False,  # ASPP image pooling = global average pooling
        ]
    )


def _analyze(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval().to(memory_format=torch.channels_last)
    image = torch.zeros(3, *SIZE)
    with torch.no_grad():
        flops = FlopCountAnalysis(model, [{"image": image}])
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        flops.total()  # runs the traced forward once; the rest reads the cached results
    return cfg, model, flops


@pytest.fixture(scope="module")
def deeplab():
    return _analyze(deeplab_v3_r101_os8_cfg())


@pytest.fixture(scope="module")
def rsp_r101():
    return _analyze(_cfg(RSP_R101_CFG))


@pytest.fixture(scope="module")
def rsp_r50():
    return _analyze(_cfg(RSP_R50_CFG))


def test_deeplab_baseline_matches_reference(deeplab):
    _, model, flops = deeplab
    assert type(model.sem_seg_head).__name__ == "DeepLabV3Head"
    assert model.backbone.stages[-1][1].conv2.dilation == (8, 8)  # res5 block 2: 4 x grid 2
    assert flops.total() == pytest.approx(DEEPLAB_R101_OS8_FLOPS, rel=0.03)


def test_rsp_r101_at_most_a_quarter_of_deeplab(deeplab, rsp_r101):
    base = deeplab[-1]
    ours = rsp_r101[-1]
    ratio = ours.total() / base.total()
    assert ratio <= 0.25, f"RSP R-101 {ours.total() / 1e9:.1f} GFLOPs = {ratio:.1%} of DeepLabV3"
    # FPN + RSP + semantic decoder on top of the ResNet-101: below 160 GFLOPs.
    by_module = ours.by_module()
    head = by_module["model"] - by_module["model.backbone.bottom_up"]
    assert head < 160e9


def _rsp_analytic_flops(cfg, fpn_shapes):
    """Multiply-adds of the RSP head, docs/RSP.md Eq. 1-5 (FPN levels exactly 2x apart)."""
    c_f, c_r, kk = cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RSP.CHANNELS, cfg.MODEL.RSP.WINDOW_SIZE**2
    total = 0
    for fine in ("p2", "p3", "p4"):  # the three fine levels of P5->P4->P3->P2
        pixels = fpn_shapes[fine][0] * fpn_shapes[fine][1]
        total += pixels * (
            c_f * c_r  # W_q
            + 2 * c_f * c_r // 4  # W_k, W_v at the coarse level
            + 2 * c_r * kk  # logits (Eq. 2) and aggregation (Eq. 3): two bmm
            + c_r * c_f  # W_o
            + 9 * c_f * c_f  # 3x3 conv
            + 5 * c_f  # GroupNorm, as fvcore counts it
        )
    return total


def test_fvcore_counts_every_rsp_op(rsp_r101, rsp_r50):
    fpn_shapes = {f"p{k}": (SIZE[0] // 2**k, SIZE[1] // 2**k) for k in (2, 3, 4)}
    for cfg, _, flops in (rsp_r101, rsp_r50):
        # Only the reductions of RSE's spelled-out softmax are left uncounted, as fvcore leaves
        # aten::softmax itself; every multiply-add is in the analytic count below.
        assert set(flops.unsupported_ops("model.sem_seg_head")) <= {"aten::amax", "aten::sum"}
        assert flops.by_operator()["bmm"] > 0
        assert flops.by_module()["model.sem_seg_head.rsp"] == _rsp_analytic_flops(cfg, fpn_shapes)


def test_rsp_r50_flops_and_params_pinned(rsp_r50):
    _, model, flops = rsp_r50
    assert flops.total() == RSP_R50_FLOPS
    assert parameter_count(model)[""] == RSP_R50_PARAMS
