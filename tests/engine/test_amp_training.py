"""Mixed-precision training on CPU (issue 19): SOLVER.AMP.PRECISION, bfloat16 autocast through
train_net.py, float16 with a GradScaler (CPU autocast, set after the CPU adaptation), exact
resume in both precisions, and checkpoints that resume with AMP switched on or off."""

import math
import os

import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.utils.env import seed_all_rng
from run_helpers import (
    ROOT,
    SEMANTIC_CFG,
    SMALL_SEMANTIC_OPTS,
    assert_same_losses,
    check_ok,
    read_losses,
    run,
)

from nrd_rsp.engine import Trainer, setup_cfg
from nrd_rsp.errors import ConfigError

pytestmark = pytest.mark.slow

MAX_ITER = 4


def _trainer(out, amp, precision="bfloat16", resume=False, init_scale=None):
    """A small semantic toy run (checkpoints after iterations 1 and 3). ``precision`` is set after
    ``setup_cfg``, so float16 stays float16 on CPU (GradScaler on CPU). ``init_scale``: a
    GradScaler whose scale halves on the first steps (float16 overflows at 2**24) and grows
    every step, so that its state matters at resume."""
    cfg = setup_cfg(
        os.path.join(ROOT, SEMANTIC_CFG),
        [
            *SMALL_SEMANTIC_OPTS,
            *("OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"),
            *("SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "2"),
        ],
        freeze=False,
    )
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.AMP.PRECISION = precision
    cfg.freeze()
    seed_all_rng(cfg.SEED)  # as train_net's default_setup: the same initial weights
    trainer = Trainer(cfg)
    if init_scale is not None:
        trainer._trainer.grad_scaler = torch.amp.GradScaler(
            "cpu", init_scale=init_scale, growth_interval=1
        )
    trainer.resume_or_load(resume=resume)
    return trainer


class _Interrupted(Exception):
    pass


def _interrupt_after(trainer, iteration):
    from detectron2.engine import HookBase

    class Stop(HookBase):
        def after_step(self):
            if self.trainer.iter == iteration:
                raise _Interrupted()

    trainer.register_hooks([Stop()])


def _assert_same_losses(ref_dir, got_dir):
    assert_same_losses(ref_dir, got_dir, MAX_ITER)


@pytest.mark.parametrize(
    "precision,init_scale", [("bfloat16", None), ("float16", 2.0**24)], ids=["bf16", "fp16"]
)
def test_amp_run_resumes_exactly(tmp_path, precision, init_scale):
    reference = _trainer(tmp_path / "ref", True, precision, init_scale=init_scale)
    reference.train()
    run_ = _trainer(tmp_path / "run", True, precision, init_scale=init_scale)
    _interrupt_after(run_, 2)  # last checkpoint: iteration 1
    with pytest.raises(_Interrupted):
        run_.train()
    resumed = _trainer(tmp_path / "run", True, precision, resume=True, init_scale=init_scale)
    assert resumed.start_iter == 2
    scaler = resumed._trainer.grad_scaler
    if precision == "float16":
        saved = torch.load(tmp_path / "run" / "model_0000001.pth", weights_only=False)
        saved_scale = saved["trainer"]["_trainer"]["grad_scaler"]["scale"]
        assert saved_scale < 2.0**24  # the scale moved before the checkpoint ...
        assert scaler.get_scale() == saved_scale  # ... and is restored
    else:
        assert not scaler.is_enabled()  # bfloat16: no loss scaling
    resumed.train()
    _assert_same_losses(tmp_path / "ref", tmp_path / "run")
    ref_scaler = reference._trainer.grad_scaler
    assert scaler.state_dict() == ref_scaler.state_dict()


def test_checkpoints_resume_with_amp_switched_on_or_off(tmp_path):
    plain = _trainer(tmp_path / "plain", amp=False)
    _interrupt_after(plain, 2)
    with pytest.raises(_Interrupted):
        plain.train()
    state = torch.load(tmp_path / "plain" / "model_0000001.pth", weights_only=False)
    state = state["trainer"]["_trainer"]
    # Detectron2's AMPTrainer cannot resume this checkpoint:
    with pytest.raises(KeyError, match="grad_scaler"):
        AMPTrainer.load_state_dict(_trainer(tmp_path / "d2", True, "float16")._trainer, state)
    for precision in ("float16", "bfloat16"):  # AMP on, from a checkpoint without AMP
        out = tmp_path / f"amp_{precision}"
        out.mkdir()
        for f in ("model_0000001.pth", "last_checkpoint"):
            (out / f).write_bytes((tmp_path / "plain" / f).read_bytes())
        (out / "last_checkpoint").write_text("model_0000001.pth")
        resumed = _trainer(out, True, precision, resume=True)
        assert resumed.start_iter == 2
        assert resumed._trainer.grad_scaler.get_scale() == (
            65536.0 if precision == "float16" else 1.0
        )
        resumed.train()
        assert sorted(read_losses(out)) == [2, 3]
    # AMP off, from an AMP (float16) checkpoint.
    out = tmp_path / "off"
    out.mkdir()
    for f in ("model_final.pth", "last_checkpoint"):
        (out / f).write_bytes((tmp_path / "amp_float16" / f).read_bytes())
    assert (
        "grad_scaler"
        in torch.load(out / "model_final.pth", weights_only=False)["trainer"]["_trainer"]
    )
    resumed = _trainer(out, amp=False, resume=True)
    assert resumed.start_iter == MAX_ITER


def test_bfloat16_training_through_train_net_names_its_precision(tmp_path):
    # The command, with a short schedule and the small toy settings.
    args = ["--config-file", "configs/Toy/nrd_R_18_toy.yaml", "SOLVER.AMP.ENABLED", "True"]
    small = [*SMALL_SEMANTIC_OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"]
    r = run([*args, "SOLVER.AMP.PRECISION", "bfloat16", *small, "OUTPUT_DIR", str(tmp_path / "b")])
    check_ok(r)
    log = r.stdout + r.stderr
    assert "Training precision: mixed, bfloat16 autocast on cpu without GradScaler" in log
    assert "float16 -> bfloat16" not in log
    losses = read_losses(tmp_path / "b")
    assert sorted(losses) == [0, 1] and all(math.isfinite(v) for v in losses[1][0].values())
    # float16 on CPU trains in bfloat16, said in one line.
    r = run([*args, "SOLVER.AMP.PRECISION", "float16", *small, "OUTPUT_DIR", str(tmp_path / "h")])
    check_ok(r)
    log = r.stdout + r.stderr
    assert log.count("On CPU, SOLVER.AMP.PRECISION float16 -> bfloat16") == 1
    assert "Training precision: mixed, bfloat16 autocast on cpu" in log


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.AMP.PRECISION must be one of float16, bfloat16"):
        setup_cfg(
            os.path.join(ROOT, SEMANTIC_CFG),
            ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "fp8"],
            quiet=True,
        )
