"""tools/publish_model.py: a training checkpoint loses optimizer/trainer/iteration state, becomes
model_final_<sha256[:6]>.pth with a metrics.json sidecar, loads with DetectionCheckpointer in a
fresh process (train_net.py --eval-only), and evaluates to exactly the metrics measured before
publishing."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TOY_OPTS, load_script, run_train_net
from detectron2.checkpoint import DetectionCheckpointer

from nrd_rsp.engine import Trainer, setup_cfg

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "tools", "publish_model.py")
SEM_CFG = "configs/Toy/semantic_fpn_R_18_toy.yaml"


publish_model = load_script("tools/publish_model.py")


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _opts(out):
    return [
        "OUTPUT_DIR",
        str(out),
        *TOY_OPTS,
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.NUM_VIS_IMAGES",
        "0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    r = run_train_net(["--config-file", SEM_CFG, *_opts(out)])
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return out


def test_publish_then_eval_gives_same_metrics(trained, tmp_path):
    release = tmp_path / "release"
    r = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            str(trained / "model_final.pth"),
            "--metrics",
            str(trained / "eval_results.json"),
            "--output-dir",
            str(release),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    published = r.stdout.strip().splitlines()[-1]
    name = os.path.basename(published)
    assert re.fullmatch(r"model_final_[0-9a-f]{6}\.pth", name)
    digest = _sha256(published)
    assert name == f"model_final_{digest[:6]}.pth"
    assert sorted(os.listdir(release)) == sorted([name, "metrics.json"])

    before = json.loads((trained / "eval_results.json").read_text())
    sidecar = json.loads((release / "metrics.json").read_text())
    assert sidecar["checkpoint"] == name and sidecar["sha256"] == digest
    assert sidecar["metrics"] == before
    assert sidecar["source"]["checkpoint"] == str(trained / "model_final.pth")
    assert sidecar["source"]["checkpoint_sha256"] == _sha256(trained / "model_final.pth")
    assert sidecar["source"]["iteration"] == 1 and "trainer" in sidecar["source"]["dropped_keys"]

    original = torch.load(trained / "model_final.pth", map_location="cpu", weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(original)
    stripped = torch.load(published, map_location="cpu", weights_only=True)
    assert set(stripped) == {"model"}
    assert stripped["model"].keys() == original["model"].keys()
    assert all(torch.equal(stripped["model"][k], v) for k, v in original["model"].items())

    # DetectionCheckpointer loads it into the config's model, every key used and nothing left.
    class Checkpointer(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    model = Trainer.build_model(setup_cfg(os.path.join(ROOT, SEM_CFG), _opts(tmp_path)))
    c = Checkpointer(model)
    assert c.load(published) == {}
    bad = c.incompatible
    assert not bad.missing_keys and not bad.unexpected_keys and not bad.incorrect_shapes
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in original["model"].items())

    # Evaluating the published file in a fresh process (train_net.py --eval-only loads it with
    # a strict DetectionCheckpointer) reproduces the metrics measured at the end of training.
    eval_dir = tmp_path / "eval"
    r = run_train_net(
        ["--config-file", SEM_CFG, "--eval-only", *_opts(eval_dir), "MODEL.WEIGHTS", published]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    after = json.loads((eval_dir / "eval_results.json").read_text())
    assert after["sem_seg"]["mIoU"] == before["sem_seg"]["mIoU"]
    assert after == before


# --- in-process unit tests on synthetic checkpoints ---------------------------------------------


def _fake_checkpoint(path, prefix=""):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(
        {
            "model": state,
            "optimizer": opt.state_dict(),
            "scheduler": {"last_epoch": 3},
            "iteration": 3,
            "__author__": "me",
        },
        path,
    )
    return model.state_dict()


def test_publish_strips_state_and_prefix(tmp_path):
    weights = _fake_checkpoint(tmp_path / "model_0000003.pth", prefix="module.")
    (tmp_path / "eval_results.json").write_text(json.dumps({"sem_seg": {"mIoU": 12.5}}))
    out, sidecar = publish_model.publish(str(tmp_path / "model_0000003.pth"))  # defaults
    assert os.path.dirname(out) == str(tmp_path / "published")
    assert os.path.basename(out) == f"model_final_{_sha256(out)[:6]}.pth"
    data = torch.load(out, weights_only=True)
    assert set(data) == {"model", "__author__"} and data["__author__"] == "me"
    assert data["model"].keys() == weights.keys()  # "module." removed
    assert all(torch.equal(data["model"][k], v) for k, v in weights.items())
    assert sidecar["metrics"] == {"sem_seg": {"mIoU": 12.5}}
    assert sidecar["source"]["dropped_keys"] == ["iteration", "optimizer", "scheduler"]
    assert sidecar["source"]["iteration"] == 3
    assert sidecar["state_dict_numel"] == sum(
        v.numel() for v in weights.values() if v.is_floating_point()
    )
    assert json.loads((tmp_path / "published" / "metrics.json").read_text()) == sidecar
    # publishing the same weights again gives the same file name (content-addressed)
    out2, _ = publish_model.publish(str(tmp_path / "model_0000003.pth"))
    assert out2 == out


def test_refuses_to_overwrite_training_log(tmp_path):
    _fake_checkpoint(tmp_path / "model_final.pth")
    (tmp_path / "metrics.json").write_text(
        '{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1}\n'
    )
    with pytest.raises(publish_model.ConfigError, match="not a publish_model.py sidecar"):
        publish_model.publish(str(tmp_path / "model_final.pth"), output_dir=str(tmp_path))
    assert not any(p.startswith("model_final_") for p in os.listdir(tmp_path))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "Checkpoint not found"),
        ("text", "Cannot read"),
        ("no_model", "non-tensor entries"),
        ("missing_metrics", "Metrics file not found"),
        ("no_args", "the following arguments are required"),
    ],
)
def test_errors_are_one_line(case, message, tmp_path, capsys):
    ckpt = tmp_path / "model_final.pth"
    argv = [str(ckpt), "--output-dir", str(tmp_path / "out")]
    if case == "text":
        ckpt.write_text("hello")
    elif case == "no_model":
        torch.save({"iteration": 3, "optimizer": {"lr": 0.1}}, ckpt)
    elif case == "missing_metrics":
        _fake_checkpoint(ckpt)
        argv += ["--metrics", str(tmp_path / "nope.json")]
    elif case == "no_args":
        argv = []
    with pytest.raises(SystemExit) as e:
        publish_model.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err
