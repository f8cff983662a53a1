"""Faults during training: a non-finite loss stops every rank before the optimizer step, bad
training images are skipped (one warning each, counted), too many of them stop training."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from run_helpers import ENV, ROOT, SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, check_ok, error_lines, run

from nrd_rsp.checkpoint import SafeCheckpointer
from nrd_rsp.data.toy.spec import ToyParams, toy_dataset_dir
from nrd_rsp.engine import NAN_INJECTION_ENV, NonFiniteLossError, Trainer, setup_cfg
from nrd_rsp.errors import TooManyBadSamplesError

pytestmark = pytest.mark.slow


def _trainer(out, *opts):
    cfg = setup_cfg(
        os.path.join(ROOT, SEMANTIC_CFG),
        [
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(out),
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
            *opts,
        ],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def test_detectron2_divergence_error_becomes_the_non_finite_error(tmp_path):
    """Detectron2 raises FloatingPointError inside the forward pass ("Predicted boxes or scores
    contain Inf/NaN"); the trainer reports it as the project's NonFiniteLossError (exit 1)."""
    trainer = _trainer(tmp_path, "SOLVER.MAX_ITER", "4")

    def diverged(module, inputs, output):
        if trainer.iter == 1:
            raise FloatingPointError(
                "Predicted boxes or scores contain Inf/NaN. Training has diverged."
            )

    trainer.model.register_forward_hook(diverged)
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    msg = str(e.value)
    assert msg.startswith(
        "Training diverged at iteration 1: Predicted boxes or scores contain Inf/NaN."
    )
    assert "SOLVER.BASE_LR" in msg and isinstance(e.value.__cause__, FloatingPointError)


def test_nan_loss_stops_before_the_optimizer_step(tmp_path, monkeypatch):
    monkeypatch.setenv(NAN_INJECTION_ENV, "2")
    trainer = _trainer(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    msg = str(e.value)
    assert msg.startswith("Non-finite loss at iteration 2: loss_sem_seg=nan.")
    assert "before the optimizer step" in msg
    # Weights not poisoned: the parameters are exactly those of the last checkpoint (saved after
    # iteration 1), which stays loadable. (BatchNorm statistics did move in the forward pass.)
    model = trainer.model
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (
        not (tmp_path / "model_0000003.pth").exists()
        and not (tmp_path / "model_final.pth").exists()
    )
    fresh = Trainer.build_model(trainer.cfg)
    SafeCheckpointer(fresh).resume_or_load(
        str(tmp_path / "model_0000001.pth"), resume=False, strict=True
    )
    fresh_params = dict(fresh.named_parameters())
    for k, p in model.named_parameters():
        assert torch.isfinite(p).all() and torch.equal(p, fresh_params[k]), k


def test_nan_on_one_rank_stops_all_ranks(tmp_path):
    # Rank 1 alone diverges at iteration 1: both processes stop (no hang in a collective), the
    # error is printed once, and the exit status is 1.
    r = run(
        [
            "--config-file",
            SEMANTIC_CFG,
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.MAX_ITER",
            "3",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
        ],
        env={NAN_INJECTION_ENV: "1@1"},
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == [errors[0]] and errors[0].startswith(
        "ERROR: Non-finite loss at iteration 1: rank 1: loss_sem_seg=nan."
    ), r.stderr[-3000:]


@pytest.fixture(scope="module")
def corrupt_toy_root(tmp_path_factory):
    """A copy of the small toy dataset with one corrupt training image."""
    params = ToyParams(num_train=16, num_val=6, image_size=(64, 80), seed=0)
    src = toy_dataset_dir(params)
    if not os.path.isdir(src):  # generate it in the shared test dataset root
        from nrd_rsp.data.toy import ensure_toy_dataset

        ensure_toy_dataset(16, 6, (64, 80), 0)
    root = tmp_path_factory.mktemp("corrupt_datasets")
    dst = toy_dataset_dir(params, str(root))
    shutil.copytree(src, dst)
    images = sorted(os.listdir(os.path.join(dst, "images", "train")))
    bad = os.path.join(dst, "images", "train", images[5])
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a JPEG any more")
    return str(root), bad


def test_bad_training_image_is_skipped_and_counted(tmp_path, corrupt_toy_root):
    root, bad = corrupt_toy_root
    # 2 iterations x 8 images = one epoch of the 16 images: the corrupt one is drawn exactly once.
    r = run(
        [
            "--config-file",
            SEMANTIC_CFG,
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "8",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "DATALOADER.NUM_WORKERS",
            "2",
            "DATASETS.TEST",
            "()",
        ],
        env={"DETECTRON2_DATASETS": root},
    )
    check_ok(r)
    log = r.stdout + r.stderr
    warnings = [line for line in log.splitlines() if "Skipping a bad training sample" in line]
    assert len(warnings) == 1 and bad in warnings[0] and "cannot read image" in warnings[0]
    assert "Training data: 1 bad sample(s) skipped out of 17 loaded (5.88%)." in log
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_too_many_bad_samples_stop_training(tmp_path, corrupt_toy_root, monkeypatch):
    root, bad = corrupt_toy_root
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    trainer = _trainer(
        tmp_path,
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "8",
        "DATALOADER.MAX_SKIPPED_FRACTION",
        "0.01",
        "DATALOADER.SKIP_CHECK_MIN_SAMPLES",
        "8",
    )
    with pytest.raises(TooManyBadSamplesError) as e:
        trainer.train()
    msg = str(e.value)
    assert (
        "1 of the " in msg
        and "DATALOADER.MAX_SKIPPED_FRACTION 0.01" in msg
        and os.path.basename(bad) in msg
    )
    assert error_lines(msg) == [msg]  # one line


def test_full_disk_at_the_final_checkpoint_is_one_line(tmp_path):
    # train_net.py with a torch.save that fails the way it does on a full disk.
    script = textwrap.dedent("""
        import errno, runpy, sys, torch
        def full_disk_save(obj, f):
            f.write(b"part")
            raise RuntimeError("unexpected pos") from OSError(errno.ENOSPC, "No space left")
        torch.save = full_disk_save
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    args = ["--config-file", SEMANTIC_CFG, *SMALL_SEMANTIC_OPTS, "SOLVER.MAX_ITER", "2"]
    args += ["DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    r = subprocess.run(
        [sys.executable, "-c", script, os.path.join(ROOT, "train_net.py"), *args],
        cwd=ROOT,
        env=dict(os.environ, **ENV),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [line for line in error_lines(r.stderr) if "Traceback" in line or "ERROR" in line]
    assert len(lines) == 1 and lines[0].startswith("ERROR:"), r.stderr[-3000:]
    assert "No space left" in lines[0] and "model_final.pth" in lines[0]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".pth") or ".tmp" in f]
