"""tools/analyze_model.py and the counting helpers of nrd_rsp.analysis: every config of the
project can be analysed, the component breakdown adds up, uncounted operators are found and
attributed to modules, and none of them is in our own modules."""

import glob
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, TOY_OPTS
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.join(ROOT, "tools"))
import analyze_model  # noqa: E402

from nrd_rsp import analysis as A  # noqa: E402
from nrd_rsp.engine import ConfigError  # noqa: E402

CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)

pytestmark = pytest.mark.slow
# Fewer proposals/detections keep the (random-weight) ROI heads of panoptic configs cheap.
# MODEL.WEIGHTS "": the NRD configs name a local file (pretrained/resnet*_v1c.pkl, converted by
# tools/convert-mmcls-v1c-to-d2.py) that a checkout does not have; URL weights are dropped anyway.
FAST_OPTS = [
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "TEST.DETECTIONS_PER_IMAGE",
    "5",
    "MODEL.WEIGHTS",
    "",
]
PROJECT_CONFIGS = [
    c for c in CONFIGS if "rsp" in os.path.basename(c) or "nrd" in os.path.basename(c)
]
# One config per kind of our modules (RSPSemSegHead, NRDHead, RSPPanopticFPN + RSPHead + NRDHead).
TOY_PROJECT_CONFIGS = [
    "configs/Toy/rsp_R_18_toy.yaml",
    "configs/Toy/nrd_R_18_toy.yaml",
    "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
]


def _input_size(config):
    """64x128, except for Detectron2's DeepLab heads trained on crops: their ASPP pools over
    the crop size, so the input must tile it."""
    cfg = A.setup(config, ["MODEL.WEIGHTS", ""])
    if (
        cfg.MODEL.SEM_SEG_HEAD.NAME in ("DeepLabV3Head", "DeepLabV3PlusHead")
        and cfg.INPUT.CROP.ENABLED
    ):
        return [str(x) for x in cfg.INPUT.CROP.SIZE]
    return ["64", "128"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _main(argv, capsys):
    try:
        rc = analyze_model.main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_project_has_rsp_and_nrd_configs():
    assert set(TOY_PROJECT_CONFIGS) <= set(CONFIGS)
    assert len(PROJECT_CONFIGS) >= 6


@pytest.mark.parametrize(
    "config", CONFIGS, ids=[os.path.splitext(c[len("configs/") :])[0] for c in CONFIGS]
)
def test_flop_and_parameter_of_every_config(config, capsys, tmp_path):
    out_json = tmp_path / "analysis.json"
    rc, out, err = _main(
        [
            "--config-file",
            config,
            "--tasks",
            "parameter",
            "flop",
            "--input-size",
            *_input_size(config),
            "--max-depth",
            "1",
            "--json",
            str(out_json),
            *FAST_OPTS,
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    gflops = float(re.search(r"^Total GFLOPs: ([0-9.eE+-]+) ± ", out, re.M).group(1))
    params = int(re.search(r"^Total parameters: (\d+) ", out, re.M).group(1))
    assert gflops > 0 and params > 0
    assert "| module" in out  # the per-module tables
    res = json.loads(out_json.read_text())
    assert res["flop"]["total"] / 1e9 == pytest.approx(gflops, rel=1e-5)
    assert res["parameter"]["total"] == params
    for task in ("flop", "parameter"):
        parts = res[task]["by_component"]
        assert sum(parts.values()) == pytest.approx(res[task]["total"], rel=1e-9)
        assert parts["backbone"] > 0 and parts["head"] > 0
        assert min(parts.values()) >= -1e-6 * res[task]["total"]
    if config in PROJECT_CONFIGS:
        # RSP (neck) or NRD (head) modules ran and all their operators were counted.
        assert res["flop"]["project_modules_with_unsupported_ops"] == {}
        assert "Project (nrd_rsp) modules with uncounted operators: none" in out


@pytest.mark.parametrize(
    "config", TOY_PROJECT_CONFIGS, ids=[os.path.basename(c) for c in TOY_PROJECT_CONFIGS]
)
def test_no_uncounted_operator_in_our_modules(config):
    cfg = A.setup(config, FAST_OPTS)
    model = A.build_model(cfg)
    own = [n for n in A.project_module_names(model) if n]  # RSE, RSP, RSPHead, NRDHead, ...
    assert own, "the config builds none of our modules"
    with torch.no_grad():
        analysis = A.flop_count_analysis(model, A.synthetic_inference_inputs(64, 128))
        analysis.total()
    counts = A.module_counts(analysis)
    top = [n for n in own if "." not in n or n.count(".") == 1 and n.startswith("sem_seg_head.")]
    assert all(counts[n] > 0 for n in top), {n: counts[n] for n in top}
    uncounted = A.unsupported_ops_by_module(analysis)
    for name in uncounted:
        assert not any(name == o or name.startswith(o + ".") for o in own), (name, uncounted[name])


def test_rsp_panoptic_root_ops_are_those_of_panoptic_fpn():
    """The only uncounted ops at the top level of RSPPanopticFPN (ours) are Detectron2's
    pre/post-processing, exactly those of PanopticFPN."""
    config = "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml"
    roots = []
    for arch in ("RSPPanopticFPN", "PanopticFPN"):
        model = A.build_model(A.setup(config, FAST_OPTS + ["MODEL.META_ARCHITECTURE", arch]))
        assert type(model).__name__ == arch
        with torch.no_grad():
            analysis = A.flop_count_analysis(model, A.synthetic_inference_inputs(64, 128))
        roots.append(set(A.unsupported_ops_by_module(analysis).get("", {})))
    assert roots[0] == roots[1]


class _Inner(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)  # no fvcore handle


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.inner = _Inner()

    def forward(self, x):
        y = self.inner(self.conv(F.pad(x, (1, 1, 1, 1))))  # pad: a zero-cost op of ours
        return torch.cumprod(y, dim=2)


def test_unsupported_ops_are_attributed_to_innermost_module():
    with torch.no_grad():
        analysis = A.flop_count_analysis(_Outer(), torch.rand(1, 3, 8, 8))
    assert A.unsupported_ops_by_module(analysis) == {
        "inner": Counter({"aten::cumsum": 1}),
        "": Counter({"aten::cumprod": 1}),
    }
    assert A.module_counts(analysis)["conv"] == 3 * 4 * 10 * 10  # 1x1 conv on the padded map


def test_component_breakdown_synthetic():
    counts = {
        "": 100,
        "backbone": 60,  # FPN: 5 in its own forward (top-down pathway)
        "backbone.bottom_up": 40,
        "backbone.fpn_lateral2": 15,
        "backbone.top_block": 0,
        "sem_seg_head": 30,  # 5 own (final upsampling)
        "sem_seg_head.rsp": 10,
        "sem_seg_head.rsp.stages": 10,
        "sem_seg_head.predictor": 15,
    }
    assert A.component_breakdown(counts) == {"backbone": 40, "neck": 30, "head": 20, "other": 10}
    # A plain ResNet backbone (no bottom_up) is all backbone.
    assert A.component_breakdown(
        {"": 10, "backbone": 7, "backbone.res5": 4, "sem_seg_head": 3}
    ) == {
        "backbone": 7,
        "neck": 0,
        "head": 3,
        "other": 0,
    }
    assert A.component_of("rsp.stages.p2.rse") == "neck"
    assert A.component_of("backbone.fpn_output3") == "neck"
    assert A.component_of("roi_heads.box_head") == "head"
    assert A.component_of("backbone.res4.0") == "backbone"


def test_component_breakdown_matches_fvcore_modules():
    model = A.build_model(A.setup("configs/Toy/rsp_R_18_toy.yaml"))
    with torch.no_grad():
        analysis = A.flop_count_analysis(model, A.synthetic_inference_inputs(64, 128))
    parts = A.component_breakdown(A.module_counts(analysis))
    assert parts["backbone"] == analysis.total("model.backbone.bottom_up")
    assert parts["neck"] == (
        analysis.total("model.backbone")
        - analysis.total("model.backbone.bottom_up")
        + analysis.total("model.sem_seg_head.rsp")
    )
    assert parts["head"] == analysis.total("model.sem_seg_head") - analysis.total(
        "model.sem_seg_head.rsp"
    )
    assert parts["neck"] > 0 and parts["other"] >= 0
    assert sum(parts.values()) == analysis.total()


def test_inference_parameters_exclude_training_only_aux_head():
    model = A.build_model(A.setup("configs/Toy/nrd_R_18_toy.yaml"))
    with torch.no_grad():
        analysis = A.flop_count_analysis(model, A.synthetic_inference_inputs(64, 128))
    used, unused = A.inference_parameter_count(model, analysis)
    aux = sum(p.numel() for p in model.sem_seg_head.aux_head.parameters())
    assert aux > 0 and unused == aux
    assert used[""] + unused == sum(p.numel() for p in model.parameters())
    assert used["sem_seg_head"] == sum(p.numel() for p in model.sem_seg_head.parameters()) - aux


def test_real_dataset_config_is_adapted_to_one_process():
    cfg = A.setup("configs/Cityscapes-SemanticSegmentation/nrd_R_50_deeplab_stem_84k_bs16.yaml")
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.NRD.NORM == "BN"
    assert cfg.MODEL.WEIGHTS == ""
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS file not found"):
        A.setup("configs/Toy/nrd_R_18_toy.yaml", ["MODEL.WEIGHTS", "/nonexistent/model.pth"])


def test_activation_and_structure_tasks(capsys):
    rc, out, err = _main(
        [
            "--config-file",
            "configs/Toy/rsp_R_18_toy.yaml",
            "--tasks",
            "activation",
            "structure",
            "--input-size",
            "64",
            "96",
            "--max-depth",
            "1",
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    assert float(re.search(r"^Total activations \(M\): ([0-9.eE+-]+)", out, re.M).group(1)) > 0
    assert "RSPSemSegHead(" in out and "(rsp): RSPHead(" in out


def test_averages_over_toy_test_images(capsys):
    rc, out, err = _main(
        [
            "--config-file",
            "configs/Toy/semantic_fpn_R_18_toy.yaml",
            "--tasks",
            "flop",
            "-n",
            "2",
            "--max-depth",
            "1",
            *TOY_OPTS,
        ],
        capsys,
    )
    assert rc == 0, err[-3000:]
    assert "Inputs (2): toy_sem_seg_val:" in out
    m = re.search(
        r"^Total GFLOPs: ([0-9.eE+-]+) ± ([0-9.eE+-]+) \(mean ± std over 2 input\(s\)\)", out, re.M
    )
    assert m and float(m.group(1)) > 0


def test_missing_dataset_is_a_clear_error(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "analyze_model.py"),
            "--config-file",
            "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml",
            "--tasks",
            "flop",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(error) == 1 and str(tmp_path) in error[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_bad_arguments_are_user_errors(capsys):
    rc, _, err = _main(["--config-file", "configs/Toy/missing.yaml"], capsys)
    assert rc == 2 and err.startswith("ERROR: Config file not found")
    rc, _, err = _main(
        ["--config-file", "configs/Toy/nrd_R_18_toy.yaml", "--input-size", "0", "64"], capsys
    )
    assert rc == 2 and "--input-size must be positive" in err
