"""End to end: train_net.py trains on toy data, evaluates with Detectron2's evaluators,
re-evaluates a saved checkpoint with --eval-only, resumes, and runs as 2 Gloo processes."""

import json
import os

import pytest
from conftest import TOY_OPTS, run_train_net

pytestmark = pytest.mark.slow

PANOPTIC_CFG = "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml"
SEMANTIC_CFG = "configs/Toy/semantic_fpn_R_18_toy.yaml"


def _opts(out, max_iter=4):
    return [
        "OUTPUT_DIR",
        str(out),
        *TOY_OPTS,
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.NUM_VIS_IMAGES",
        "2",
    ]


def _check_ok(r):
    assert r.returncode == 0, f"train_net.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def _load_results(out):
    with open(os.path.join(out, "eval_results.json")) as f:
        return json.load(f)


def _assert_panoptic_results(res):
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert 0.0 <= res["panoptic_seg"][key] <= 100.0
    assert 0.0 <= res["sem_seg"]["mIoU"] <= 100.0
    assert "AP" in res["bbox"] and "AP" in res["segm"]


# Toy configs that tests/engine/test_degenerate_inputs.py does not train (DeepLabV3+'s fixed
# ASPP pooling kernel cannot take its unresized images): trained here through train_net.py.
TOY_RUNS = ["deeplabv3plus_R_18_toy"]


@pytest.mark.parametrize("name", TOY_RUNS)
def test_toy_config_trains_and_evaluates(name, tmp_path):
    r = run_train_net(["--config-file", f"configs/Toy/{name}.yaml", *_opts(tmp_path, max_iter=2)])
    _check_ok(r)
    assert 0.0 <= _load_results(tmp_path)["sem_seg"]["mIoU"] <= 100.0


@pytest.fixture(scope="module")
def panoptic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("panoptic_run")
    r = run_train_net(["--config-file", PANOPTIC_CFG, *_opts(out)])
    _check_ok(r)
    return out, r


def test_train_then_evaluate_panoptic(panoptic_run):
    out, r = panoptic_run
    assert os.path.isfile(out / "model_final.pth")
    assert os.path.isfile(
        out / "model_0000001.pth"
    )  # CHECKPOINT_PERIOD 2 -> saved after iteration 1
    _assert_panoptic_results(_load_results(out))
    pngs = sorted(os.listdir(out / "vis"))
    assert len(pngs) == 2 and all(p.endswith(".png") for p in pngs)


def test_eval_only_from_checkpoint(panoptic_run, tmp_path):
    out, _ = panoptic_run
    r = run_train_net(
        [
            "--config-file",
            PANOPTIC_CFG,
            "--eval-only",
            *_opts(tmp_path),
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
        ]
    )
    _check_ok(r)
    res = _load_results(tmp_path)
    _assert_panoptic_results(res)
    # The same weights give the same metrics as the evaluation at the end of training.
    assert res["panoptic_seg"]["PQ"] == pytest.approx(
        _load_results(out)["panoptic_seg"]["PQ"], abs=1e-6
    )
    assert res["sem_seg"]["mIoU"] == pytest.approx(_load_results(out)["sem_seg"]["mIoU"], abs=1e-6)


def test_resume_continues_from_last_checkpoint(panoptic_run):
    out, _ = panoptic_run
    r = run_train_net(["--config-file", PANOPTIC_CFG, "--resume", *_opts(out, max_iter=6)])
    _check_ok(r)
    log = r.stdout + r.stderr
    assert "Starting training from iteration 4" in log
    with open(out / "last_checkpoint") as f:
        assert f.read().strip() == "model_final.pth"
    entries = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(d["iteration"] for d in entries if "total_loss" in d) == 5  # iterations 4 and 5 ran


def test_semantic_train_and_tta_eval(tmp_path):
    # TTA with the test scale alone and no flip must reproduce the plain evaluation exactly.
    r = run_train_net(
        [
            "--config-file",
            SEMANTIC_CFG,
            *_opts(tmp_path, max_iter=2),
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(128,)",
            "TEST.AUG.FLIP",
            "False",
        ]
    )
    _check_ok(r)
    res = _load_results(tmp_path)
    assert 0.0 <= res["sem_seg"]["mIoU"] <= 100.0
    assert set(res["sem_seg"]) >= {"mIoU", "fwIoU", "pACC", "IoU-pole"}
    assert res["sem_seg_TTA"]["mIoU"] == pytest.approx(res["sem_seg"]["mIoU"], abs=1e-4)


def test_distributed_two_cpu_processes(tmp_path):
    r = run_train_net(
        ["--config-file", PANOPTIC_CFG, "--num-gpus", "2", *_opts(tmp_path, max_iter=2)]
    )
    _check_ok(r)
    assert os.path.isfile(tmp_path / "model_final.pth")
    _assert_panoptic_results(_load_results(tmp_path))
