"""``TEST.PANOPTIC_EVAL``: the hotcoco backend gives panopticapi's PQ, SQ and RQ, panopticapi gives
the same with any worker cap, and ``PanopticEvaluator`` keeps Detectron2's results dict.

Ground truth: the synthetic COCO-style scenes of ``benchmarks/panoptic_eval.py`` (133 categories,
void, crowd regions) and the COCO stand-in of ``tests/standins.py``; predictions: their
``perturb`` (segments dropped, relabelled, shifted; crowds split; spurious segments)."""

import contextlib
import io
import json
import multiprocessing
import os
import sys
from unittest import mock

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import panoptic_eval as bench  # noqa: E402
import standins  # noqa: E402

from nrd_rsp import panoptic_evaluation as module  # noqa: E402
from nrd_rsp.errors import ConfigError  # noqa: E402
from nrd_rsp.panoptic_evaluation import (  # noqa: E402
    PanopticEvaluator,
    build_panoptic_evaluator,
    pq_compute,
)

TOL = 1e-6
SPLITS = ("All", "Things", "Stuff")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """name -> (gt json, pred json, gt folder, pred folder)."""
    root = tmp_path_factory.mktemp("panoptic_eval")
    out = {}
    gt_json, gt_dir = bench.write_ground_truth(str(root / "synthetic"), 40, (48, 64), seed=3)
    pred_json, pred_dir = bench.write_predictions(gt_json, gt_dir, str(root / "synthetic"), 4)
    out["synthetic"] = (gt_json, pred_json, gt_dir, pred_dir)
    standins.write_coco_panoptic(str(root))
    for split in ("train", "val"):
        gt_json = str(root / "coco" / "annotations" / f"panoptic_{split}2017.json")
        gt_dir = str(root / "coco" / f"panoptic_{split}2017")
        pred_json, pred_dir = bench.write_predictions(gt_json, gt_dir, str(root / split), 5)
        out[f"coco_{split}"] = (gt_json, pred_json, gt_dir, pred_dir)
    return out


def _quiet_pq(paths, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(*paths, **kwargs)


def _assert_same(a, b):
    for split in SPLITS:
        assert a[split]["n"] == b[split]["n"], split
        for k in ("pq", "sq", "rq"):
            assert abs(a[split][k] - b[split][k]) <= TOL, (split, k, a[split][k], b[split][k])


@pytest.mark.parametrize("name", ["synthetic", "coco_train", "coco_val"])
def test_backends_and_worker_counts_agree(datasets, name):
    ref = _quiet_pq(datasets[name], backend="panopticapi", workers=1)
    assert 0.1 < ref["All"]["pq"] < 0.95 and ref["All"]["rq"] < 1  # imperfect, not hopeless
    assert ref["Things"]["n"] > 0 and ref["Stuff"]["n"] > 0
    _assert_same(_quiet_pq(datasets[name], backend="panopticapi", workers=2), ref)
    hot = _quiet_pq(datasets[name], backend="hotcoco")
    _assert_same(hot, ref)
    # Per category too: hotcoco reports -1 where panopticapi reports 0, for a category with no
    # segment on either side.
    for cat, scores in ref["per_class"].items():
        counts = hot["per_class"][cat]
        empty = counts["tp"] + counts["fp"] + counts["fn"] == 0
        for k in ("pq", "sq", "rq"):
            assert abs(counts[k] - (-1.0 if empty else scores[k])) <= TOL, (cat, k)
            assert not (empty and scores[k]), (cat, k)


def test_toy_predictions_cover_void_crowd_and_errors(datasets):
    gt_json, _, gt_dir, _ = datasets["synthetic"]
    with open(gt_json) as f:
        gt = json.load(f)
    assert len(gt["categories"]) == 133
    assert any(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"])
    first = gt["annotations"][0]["file_name"]
    assert (bench._read_png(os.path.join(gt_dir, first)) == 0).any()  # void pixels
    per_class = _quiet_pq(datasets["synthetic"], backend="hotcoco")["per_class"].values()
    assert all(sum(c[k] for c in per_class) > 0 for k in ("tp", "fp", "fn"))


def test_worker_cap_sets_pool_size(datasets):
    for workers, expected in ((1, 1), (2, 2), (0, multiprocessing.cpu_count())):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            pq_compute(*datasets["synthetic"], workers=workers)
        assert f"Number of cores: {expected}," in out.getvalue()
        assert not multiprocessing.active_children()  # the pool was joined


def _register(gt_json, gt_dir, name):
    from detectron2.data import MetadataCatalog

    with open(gt_json) as f:
        cats = json.load(f)["categories"]
    things = [c["id"] for c in cats if c["isthing"]]
    stuff = [c["id"] for c in cats if not c["isthing"]]
    MetadataCatalog.get(name).set(
        panoptic_json=gt_json, panoptic_root=gt_dir,
        thing_dataset_id_to_contiguous_id={d: i for i, d in enumerate(things)},
        stuff_dataset_id_to_contiguous_id={d: i for i, d in enumerate(stuff)},
    )  # fmt: skip
    return set(things)


def _model_outputs(pred_json, pred_dir, things):
    """(inputs, outputs) as a model gives them: contiguous ids and ``isthing``."""
    import torch

    with open(pred_json) as f:
        data = json.load(f)
    contiguous = {}
    for kind in (True, False):
        ids = [c["id"] for c in data["categories"] if (c["id"] in things) == kind]
        contiguous.update({d: i for i, d in enumerate(ids)})
    pairs = []
    for ann in data["annotations"]:
        ids = bench._read_png(os.path.join(pred_dir, ann["file_name"])).astype(np.int32)
        infos = [{"id": s["id"], "category_id": contiguous[s["category_id"]],
                  "isthing": s["category_id"] in things} for s in ann["segments_info"]]  # fmt: skip
        image = {"file_name": ann["file_name"].replace(".png", ".jpg"), "image_id": ann["image_id"]}
        pairs.append((image, {"panoptic_seg": (torch.from_numpy(ids), infos)}))
    return pairs


def _evaluate(evaluator, pairs):
    evaluator.reset()
    for image, output in pairs:
        evaluator.process([image], [output])
    return evaluator.evaluate()


def test_evaluator_end_to_end_same_dict_for_both_backends(datasets, tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOPanopticEvaluator

    gt_json, pred_json, gt_dir, pred_dir = datasets["synthetic"]
    name = "nrd_rsp_test_panoptic_eval"
    things = _register(gt_json, gt_dir, name)
    try:
        results = {}
        for backend in ("panopticapi", "hotcoco"):
            ev = PanopticEvaluator(name, str(tmp_path / backend), backend=backend, workers=1)
            with mock.patch.object(module, "pq_compute", wraps=module.pq_compute) as spy:
                results[backend] = _evaluate(ev, _model_outputs(pred_json, pred_dir, things))
            assert spy.call_args.kwargs == {"backend": backend, "workers": 1}
            assert os.path.isfile(tmp_path / backend / "predictions.json")
        reference = COCOPanopticEvaluator(name, str(tmp_path / "detectron2"))
        results["detectron2"] = _evaluate(reference, _model_outputs(pred_json, pred_dir, things))
    finally:
        MetadataCatalog.remove(name)
    assert results["panopticapi"] == results["detectron2"]
    direct = _quiet_pq(datasets["synthetic"])
    assert results["panopticapi"]["panoptic_seg"]["PQ_th"] == pytest.approx(
        100 * direct["Things"]["pq"], abs=TOL
    )
    ref = results["panopticapi"]["panoptic_seg"]
    assert list(results["hotcoco"]) == ["panoptic_seg"] and list(ref) == [
        "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st",
    ]  # fmt: skip
    assert results["hotcoco"]["panoptic_seg"] == pytest.approx(ref, abs=100 * TOL)


def test_build_panoptic_evaluator_reads_config(tmp_path):
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    cfg.TEST.pop("PANOPTIC_EVAL", None)  # as before the keys exist
    ev = build_panoptic_evaluator(cfg, "coco_2017_val_panoptic", str(tmp_path))
    assert (ev._backend, ev._workers) == ("panopticapi", 0)
    cfg.TEST.PANOPTIC_EVAL = CfgNode({"BACKEND": "hotcoco", "WORKERS": 3})
    ev = build_panoptic_evaluator(cfg, "coco_2017_val_panoptic", str(tmp_path))
    assert (ev._backend, ev._workers) == ("hotcoco", 3)


def test_missing_hotcoco_is_one_config_error(datasets):
    with mock.patch.dict(sys.modules, {"hotcoco": None, "hotcoco.panoptic": None}):
        with pytest.raises(ConfigError, match="pip install hotcoco"):
            PanopticEvaluator("coco_2017_val_panoptic", backend="hotcoco")
        with pytest.raises(ConfigError, match="pip install hotcoco"):
            pq_compute(*datasets["coco_val"], backend="hotcoco")
        PanopticEvaluator("coco_2017_val_panoptic")  # the default backend needs no hotcoco


@pytest.mark.parametrize(
    "backend, workers, match",
    [("pycocotools", 0, "BACKEND must be one of"), ("panopticapi", -1, "WORKERS must be"),
     ("panopticapi", 1.5, "WORKERS must be"), ("hotcoco", True, "WORKERS must be")],
)  # fmt: skip
def test_bad_backend_or_workers_is_config_error(backend, workers, match):
    with pytest.raises(ConfigError, match=match):
        PanopticEvaluator("coco_2017_val_panoptic", backend=backend, workers=workers)
