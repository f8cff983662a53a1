"""tools/export_model.py on the panoptic models (RSPPanopticFPN, SemSegFPNHead and NRD branches):
the TorchScript and ONNX exports of a toy checkpoint whose detector fires (it overfits 4 toy
images, eager PQ things > 0) evaluate (--run-eval) to the eager PQ, mIoU and AP with the same
detections (class, score, box, and mask IoU >= 0.99 each), every output tensor matches the eager
model on an image of another size than the traced one, ROIAlign / NMS are ONNX ops, demo.py
--onnx draws from the export, and what cannot be exported fails in one line."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import ROOT, TOY_OPTS, run_train_net
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from nrd_rsp.engine import load_model_for_eval, setup_cfg
from nrd_rsp.export import PANOPTIC_OUTPUTS, ExportedModel, panoptic_tracing_adapter

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, "configs", "Toy", "rsp_panoptic_fpn_R_18_toy.yaml")
NRD_CONFIG = os.path.join(ROOT, "configs", "Toy", "nrd_rsp_panoptic_fpn_R_18_toy.yaml")
OPTS = ["MODEL.DEVICE", "cpu", *TOY_OPTS]
# The parity of the detections means something only once the detector fires: the checkpoint
# overfits a few toy images with the toy recipe and is evaluated on those same images.
DATASET = "toy_panoptic_train_separated"
FIT_OPTS = [*OPTS, "DATASETS.TOY.NUM_TRAIN", "4", "DATASETS.TEST", f"('{DATASET}',)"]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


export_model = _load("export_model", ("tools", "export_model.py"))
demo = _load("demo_for_export", ("demo", "demo.py"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained by train_net.py on 4 toy images until its detector fires on them
    (eager PQ things > 0), and its eager evaluation on those images."""
    out = tmp_path_factory.mktemp("train")
    r = run_train_net(
        ["--config-file", CONFIG, "OUTPUT_DIR", str(out), *FIT_OPTS, "SOLVER.IMS_PER_BATCH", "2"]
        + ["SOLVER.MAX_ITER", "100", "SOLVER.CHECKPOINT_PERIOD", "1000"]
        + ["DATALOADER.NUM_WORKERS", "0", "TEST.NUM_VIS_IMAGES", "0"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "eval_results.json") as f:
        results = json.load(f)
    assert results["panoptic_seg"]["PQ_th"] > 0, results  # the detector fires
    return str(out / "model_final.pth"), results, out / "inference" / DATASET


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """format -> (format, path, --run-eval results, its inference folder) of the CLI run
    in-process on the trained checkpoint."""
    found = {}
    for fmt in ("torchscript", "onnx"):
        out = tmp_path_factory.mktemp(fmt)
        argv = ["--config-file", CONFIG, "--format", fmt, "--output", str(out), "--run-eval"]
        assert export_model.main([*argv, *FIT_OPTS, "MODEL.WEIGHTS", trained[0]]) == 0
        path = str(out / ("model.ts" if fmt == "torchscript" else "model.onnx"))
        with open(out / "eval_results.json") as f:
            found[fmt] = fmt, path, json.load(f), out / "inference" / DATASET
    return found


@pytest.fixture(params=["torchscript", "onnx"])
def exported(request, exports):
    return exports[request.param]


def _detections(folder):
    with open(folder / "coco_instances_results.json") as f:
        return json.load(f)


def test_run_eval_matches_eager(trained, exported):
    _, eager, eager_dir = trained
    _, _, got, got_dir = exported
    for task, key in [("panoptic_seg", "PQ"), ("sem_seg", "mIoU"), ("segm", "AP"), ("bbox", "AP")]:
        assert got[task][key] == pytest.approx(eager[task][key], abs=0.1), (task, key)
    assert eager["segm"]["AP"] > 1 and eager["panoptic_seg"]["PQ_th"] > 0  # not degenerate
    # every detection of the test set, its mask included (pycocotools' IoU of the two RLEs)
    ref, dets = _detections(eager_dir), _detections(got_dir)
    assert len(ref) == len(dets) > 4
    for r, d in zip(ref, dets):
        assert (r["image_id"], r["category_id"]) == (d["image_id"], d["category_id"])
        assert abs(r["score"] - d["score"]) <= 1e-3
        assert np.abs(np.subtract(r["bbox"], d["bbox"])).max() <= 1e-2
        if mask_util.area(r["segmentation"]) or mask_util.area(d["segmentation"]):
            assert mask_util.iou([d["segmentation"]], [r["segmentation"]], [0])[0, 0] >= 0.99
    assert sum(mask_util.area(r["segmentation"]) > 0 for r in ref) >= len(ref) / 2


def _outputs_match(model, path, image):
    """Every raw output and the combined panoptic output equal the eager model's on image."""
    with torch.no_grad():
        expected = panoptic_tracing_adapter(model, image)(image)
    exp_model = ExportedModel(path)
    got = exp_model.run(image)
    assert len(got) == len(expected) == len(PANOPTIC_OUTPUTS)
    assert len(expected[0]) > 0, "degenerate test: no detections"
    for name, e, g in zip(PANOPTIC_OUTPUTS, expected, got):
        assert tuple(g.shape) == tuple(e.shape), name
        assert np.abs(g.double().numpy() - e.double().numpy()).max() <= 1e-3, name
    h, w = image.shape[-2:]
    with torch.no_grad():
        ref = model([{"image": image[0], "height": h + 7, "width": w + 9}])[0]
    res = exp_model([{"image": image[0], "height": h + 7, "width": w + 9}])[0]
    assert torch.equal(ref["panoptic_seg"][0], res["panoptic_seg"][0])

    def without_score(segments):
        return [{k: v for k, v in s.items() if k != "score"} for s in segments]

    assert without_score(ref["panoptic_seg"][1]) == without_score(res["panoptic_seg"][1])
    for r, g in zip(ref["panoptic_seg"][1], res["panoptic_seg"][1]):  # instances: float scores
        assert abs(r.get("score", 0) - g.get("score", 0)) <= 1e-3
    assert (ref["sem_seg"] - res["sem_seg"]).abs().max() <= 1e-3


def test_every_output_matches_on_another_size(trained, exported):
    weights = trained[0]
    path = exported[1]
    out = os.path.dirname(path)
    cfg = setup_cfg(CONFIG, [*FIT_OPTS, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out])
    model = load_model_for_eval(cfg).eval()
    # traced on the first toy test image (128 x 160); a toy image the detector fits, resized to
    # 100 x 150 (not even a multiple of the FPN's 32), so that it holds detections
    rgb = read_image(DatasetCatalog.get(DATASET)[0]["file_name"], format="RGB")
    image = torch.as_tensor(rgb.astype("float32")).permute(2, 0, 1)[None]
    image = torch.nn.functional.interpolate(image, size=(100, 150), mode="bilinear")
    _outputs_match(model, path, image)


def test_onnx_graph_holds_roialign_and_nms(exports):
    path = exports["onnx"][1]
    m = onnx.load(path)
    ops, todo = set(), list(m.graph.node)
    while todo:  # NMS sits in the subgraphs of If nodes (empty-input guards)
        node = todo.pop()
        ops.add(node.op_type)
        todo += [n for a in node.attribute if a.g is not None for n in a.g.node]
    assert {"RoiAlign", "NonMaxSuppression"} <= ops
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 16


def test_demo_draws_from_onnx(exports, tmp_path):
    path = exports["onnx"][1]
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), (np.random.default_rng(0).random((90, 120, 3)) * 255).astype("uint8"))
    out = tmp_path / "vis"
    args = ["--config-file", CONFIG, "--onnx", path, "--input", str(image), "--output", str(out)]
    assert demo.main([*args, *TOY_OPTS]) == 0
    drawn = cv2.imread(str(out / "img.png"))
    assert drawn is not None and drawn.shape == (90, 120, 3)


def test_nrd_branch_exports(tmp_path):
    """The NRD semantic branch (random weights): ONNX outputs match eager on a new size."""
    torch.manual_seed(0)
    cfg = setup_cfg(NRD_CONFIG, [*OPTS, "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)])
    info = export_model.export(cfg, "onnx", str(tmp_path), input_size=(128, 160))
    assert info["kind"] == "panoptic" and info["max_abs_diff_vs_eager"] <= 1e-3
    torch.manual_seed(0)  # the same random weights as the exported model
    model = export_model.load_export_model(cfg)[0]
    image = torch.rand(1, 3, 96, 224, generator=torch.Generator().manual_seed(1)) * 255
    _outputs_match(model, info["path"], image)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.MASK_ON", "False"], "MODEL.MASK_ON False"),
        (["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "GeneralizedRCNN is not exportable"),
        (["TEST.AUG.ENABLED", "True"], "TEST.AUG.ENABLED"),
    ],
)
def test_unsupported_fails_in_one_line(opts, message, capsys, tmp_path):
    argv = ["--config-file", CONFIG, "--format", "onnx", "--output", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        export_model.main([*argv, *OPTS, *opts])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err
    assert not (tmp_path / "model.onnx").exists()


def test_image_without_detections(trained, exports, tmp_path):
    """The graph traced with detections runs on an image with none (empty outputs). The image: the
    first uniform one on which the eager model detects nothing (which grey levels a toy detector
    fires on, weakly, depends on its training run)."""
    cfg = setup_cfg(CONFIG, [*OPTS, "MODEL.WEIGHTS", trained[0], "OUTPUT_DIR", str(tmp_path)])
    model = load_model_for_eval(cfg).eval()
    with torch.no_grad():
        for level in (255.0, 0.0, 128.0):
            image = torch.full((3, 64, 96), level)
            ref = model([{"image": image}])[0]
            if len(ref["instances"]) == 0:
                break
    for fmt in ("torchscript", "onnx"):
        got = ExportedModel(exports[fmt][1])([{"image": image}])[0]
        assert len(got["instances"]) == len(ref["instances"]) == 0, fmt
        assert torch.equal(got["panoptic_seg"][0], ref["panoptic_seg"][0]), fmt


def test_demo_onnx_missing_file_one_line(capsys, tmp_path):
    image = os.path.join(ROOT, "demo", "demo.py")  # any existing file: the --onnx check fails first
    argv = ["--config-file", CONFIG, "--onnx", "/no/such.onnx", "--input", image]
    with pytest.raises(SystemExit) as e:
        demo.main([*argv, "--output", str(tmp_path), *TOY_OPTS])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and "/no/such.onnx" in err and "\n" not in err


def test_onnx_runner_runs_no_pytorch_module(exports, monkeypatch):
    """With onnxruntime, no torch.nn.Module runs: only Detectron2's post-processing functions."""
    exported = ExportedModel(exports["onnx"][1])
    called = []
    original = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        called.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    image = torch.rand(3, 112, 144, generator=torch.Generator().manual_seed(2)) * 255
    out = exported([{"image": image}])[0]
    assert called == ["ExportedModel"]
    assert set(out) == {"sem_seg", "instances", "panoptic_seg"}


def test_run_eval_without_the_test_set_is_one_line(tmp_path):
    """--run-eval checks the test set before exporting: a missing dataset is one line, exit 2."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "export_model.py"),
        "--config-file",
        os.path.join(ROOT, "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml"),
        "--format",
        "onnx",
        "--output",
        str(tmp_path / "out"),
        "--run-eval",
        "DATASETS.TEST",
        "('coco_2017_val_panoptic_separated',)",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "empty"))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: Dataset 'coco_2017_val_panoptic_separated' is not available")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
