"""tools/export_model.py: TorchScript and ONNX exports of the semantic models compute the same
logits as the eager model (max |diff| <= 1e-3, fp32), also on an input they were not traced with;
the CLI writes a working model.onnx + export_info.json and refuses what it cannot export."""

import copy
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, TOY_OPTS, load_script
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from nrd_rsp.engine import setup_cfg

pytestmark = pytest.mark.slow

TOL = 1e-3
CPU_BN = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"]
NRD_BN = ["MODEL.NRD.NORM", "BN", "MODEL.NRD.INPUT_NORM", "BN", "MODEL.NRD.POOLING_NORM", "BN"]
CASES = {
    # config -> (extra opts, input size)
    "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml": (CPU_BN, (96, 192)),
    "Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml": (CPU_BN + NRD_BN, (96, 192)),
    # 100 x 150 is not a multiple of the FPN's 32: the padding and the crop back are traced too.
    "Toy/semantic_fpn_R_18_toy.yaml": (CPU_BN + TOY_OPTS, (100, 150)),
}


export_model = load_script("tools/export_model.py")


def _eager(model, image):
    """Logits of the eager SemanticSegmentor for one raw image [1, 3, H, W] -> [1, K, H, W]."""
    with torch.no_grad():
        return model([{"image": image[0]}])[0]["sem_seg"][None].numpy()


@pytest.fixture(scope="module", params=sorted(CASES), ids=lambda c: os.path.basename(c)[:-5])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = request.param
    opts, (h, w) = CASES[config]
    out = tmp_path_factory.mktemp("export")
    cfg = setup_cfg(os.path.join(ROOT, "configs", config), opts + ["OUTPUT_DIR", str(out)])
    wrapper = export_model.build_export_model(cfg)
    g = torch.Generator().manual_seed(1)
    traced_with = torch.rand(1, 3, h, w, generator=g) * 255
    other = torch.rand(1, 3, h, w, generator=g) * 255
    traced = export_model.trace(wrapper, traced_with)
    ts = export_model.export_torchscript(traced, str(out / "model.ts"))
    onnx_path = export_model.export_onnx(traced, traced_with, str(out / "model.onnx"))
    expected = [_eager(wrapper.model, x) for x in (traced_with, other)]
    return cfg, (traced_with, other), expected, ts, onnx_path


def _check(expected, got, num_classes, size):
    assert got.shape == expected.shape == (1, num_classes, *size)
    assert expected.std() > 1e-3, "degenerate test: the eager logits are constant"
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() <= TOL


def test_torchscript_matches_eager(exported):
    cfg, inputs, expected, ts, _ = exported
    loaded = torch.jit.load(ts, map_location="cpu")
    for image, ref in zip(inputs, expected):
        with torch.no_grad():
            got = loaded(image).numpy()
        _check(ref, got, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, image.shape[-2:])


def test_onnx_matches_eager(exported):
    cfg, inputs, expected, _, onnx_path = exported
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for image, ref in zip(inputs, expected):
        got = sess.run(["logits"], {"image": image.numpy()})[0]
        _check(ref, got, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, image.shape[-2:])


def test_syncbn_model_exports_and_matches_eager(tmp_path, monkeypatch):
    """Real-dataset configs use SyncBN. A model that holds real ``nn.SyncBatchNorm`` layers (built
    from the config directly: setup_cfg would turn them into naiveSyncBN on CPU), with non-trivial
    running statistics, exports as FrozenBatchNorm2d with the eager model's logits."""
    cfg = setup_cfg(
        os.path.join(ROOT, "configs", "Toy/semantic_fpn_R_18_toy.yaml"),
        CPU_BN + TOY_OPTS + ["OUTPUT_DIR", str(tmp_path)],
    )
    cfg.defrost()
    cfg.MODEL.RESNETS.NORM = "SyncBN"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sync = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(sync) > 10, "the test model holds no SyncBatchNorm"
    g = torch.Generator().manual_seed(2)
    for m in sync:  # running statistics and affine parameters far from the identity
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    image = torch.rand(1, 3, 64, 96, generator=g) * 255
    expected = _eager(model, image)
    monkeypatch.setattr(export_model, "load_model_for_eval", lambda cfg: copy.deepcopy(model))
    wrapper = export_model.build_export_model(cfg)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in wrapper.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in wrapper.modules())
    traced = export_model.trace(wrapper, image)
    onnx_path = export_model.export_onnx(traced, image, str(tmp_path / "model.onnx"))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        _check(expected, traced(image).numpy(), 8, (64, 96))
    _check(expected, sess.run(["logits"], {"image": image.numpy()})[0], 8, (64, 96))


def test_cli_onnx_export_with_weights(tmp_path, capsys):
    """The command line (run in-process): weights from a file, export_info.json, parity of the
    written model.onnx with an eager model loaded here from the same weights."""
    config = os.path.join(ROOT, "configs", "Toy/semantic_fpn_R_18_toy.yaml")
    opts = ["MODEL.DEVICE", "cpu", *TOY_OPTS]
    cfg = setup_cfg(config, opts + ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)])
    torch.manual_seed(3)
    model = export_model.build_export_model(cfg).model
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "onnx"
    rc = export_model.main(
        [
            "--config-file",
            config,
            "--format",
            "onnx",
            "--output",
            str(out),
            "--input-size",
            "96",
            "128",
            *opts,
            "MODEL.WEIGHTS",
            str(weights),
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "model.onnx")
    info = json.loads((out / "export_info.json").read_text())
    assert info["input"]["shape"] == [1, 3, 96, 128] and info["input"]["channel_order"] == "RGB"
    assert info["output"]["shape"] == [1, 8, 96, 128]
    assert info["classes"][:5] == ["road", "grass", "wall", "sky", "pole"]
    assert 0 <= info["max_abs_diff_vs_eager"] <= TOL
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(5)) * 255
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": image.numpy()})[0]
    _check(_eager(model.eval(), image), got, 8, (96, 128))


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "--config-file",
                f"{ROOT}/configs/Toy/panoptic_fpn_R_18_toy.yaml",
                "--format",
                "onnx",
                "MODEL.META_ARCHITECTURE",
                "GeneralizedRCNN",
            ],
            "GeneralizedRCNN is not exportable",
        ),
        (
            ["--config-file", f"{ROOT}/configs/Toy/nope.yaml", "--format", "onnx"],
            "Config file not found",
        ),
        (
            [
                "--config-file",
                f"{ROOT}/configs/Toy/semantic_fpn_R_18_toy.yaml",
                "--format",
                "tflite",
            ],
            "invalid choice",
        ),
        (
            [
                "--config-file",
                f"{ROOT}/configs/Toy/semantic_fpn_R_18_toy.yaml",
                "--format",
                "onnx",
                "MODEL.WEIGHTS",
                "/nonexistent/w.pth",
            ],
            "MODEL.WEIGHTS file not found",
        ),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        export_model.main(
            [*argv[:2], *argv[2:4], "--output", str(tmp_path), *argv[4:], "MODEL.DEVICE", "cpu"]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err
    assert not (tmp_path / "model.onnx").exists()
