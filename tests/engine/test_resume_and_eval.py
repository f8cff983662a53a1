"""End to end with train_net.py: a SIGKILLed run resumes to exactly the losses of an
uninterrupted one (also across DATALOADER.NUM_WORKERS), --resume skips a corrupt last checkpoint
and refuses to restart when none is readable, and evaluation gives the same metrics in 1 and 2
processes and with any number of data loader workers. In process: an interrupted run with
aspect-ratio grouping over portrait and landscape images resumes to the same batches and
losses."""

import itertools
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from PIL import Image
from run_helpers import (
    ROOT,
    SEMANTIC_CFG,
    SMALL_SEMANTIC_OPTS,
    assert_same_losses,
    check_ok,
    error_lines,
    popen,
    read_losses,
    run,
)

from nrd_rsp.engine import Trainer, setup_cfg

pytestmark = pytest.mark.slow

MAX_ITER = 6


def _opts(out, workers, test=True):
    return [
        *SMALL_SEMANTIC_OPTS,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "DATALOADER.NUM_WORKERS",
        str(workers),
        *([] if test else ["DATASETS.TEST", "()"]),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with 2 data loader workers, evaluated at the end."""
    out = tmp_path_factory.mktemp("reference")
    check_ok(run(["--config-file", SEMANTIC_CFG, *_opts(out, workers=2)]))
    return out


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A run without workers, SIGKILLed right after its first checkpoint, then resumed."""
    out = tmp_path_factory.mktemp("killed")
    proc = popen(
        ["--config-file", SEMANTIC_CFG, *_opts(out, workers=0, test=False)], out / "killed.log"
    )
    deadline = time.time() + 500
    while not (out / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (out / "killed.log").read_text()[-3000:]
    assert not (out / "model_final.pth").exists()  # killed mid-training
    killed_at = max(read_losses(out))
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    check_ok(r)
    return out, killed_at, r.stdout + r.stderr


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(reference, killed_and_resumed):
    out, killed_at, log = killed_and_resumed
    saved = [
        int(line.split("Starting training from iteration ")[1])
        for line in log.splitlines()
        if "Starting training from iteration" in line
    ]
    assert (
        len(saved) == 1 and 2 <= saved[0] <= killed_at + 1
    )  # resumed after the last saved checkpoint
    # The final iteration count is MAX_ITER.
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (
        torch.load(out / "model_final.pth", weights_only=False)["trainer"]["iteration"]
        == MAX_ITER - 1
    )
    # Iterations run twice (killed after, resumed before) agree too.
    assert_same_losses(reference, out, MAX_ITER)


def test_resume_falls_back_from_corrupt_checkpoint_and_never_restarts_silently(killed_and_resumed):
    out, _, _ = killed_and_resumed
    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # truncated, e.g. disk full
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    check_ok(r)
    log = r.stdout + r.stderr
    assert f"Cannot resume from {final}" in log
    assert f"Resumed from {out / 'model_0000005.pth'} instead" in log
    assert f"Starting training from iteration {MAX_ITER}" in log
    # No readable checkpoint at all: a clear error, not a silent fresh start.
    for f in os.listdir(out):
        if f.endswith(".pth"):
            (out / f).write_bytes(b"\0" * 64)
    r = run(["--config-file", SEMANTIC_CFG, "--resume", *_opts(out, workers=0, test=False)])
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert (
        lines[-1].startswith("ERROR: --resume: no readable checkpoint in")
        and "model_0000005.pth" in lines[-1]
    )
    assert "Starting training" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def _eval(out, weights, flags, opts):
    r = run(
        [
            "--config-file",
            SEMANTIC_CFG,
            "--eval-only",
            *flags,
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(out),
            "MODEL.WEIGHTS",
            str(weights),
            *opts,
        ]
    )
    check_ok(r)
    with open(out / "eval_results.json") as f:
        return json.load(f)


def test_evaluation_is_identical_across_processes_and_workers(reference, tmp_path):
    with open(reference / "eval_results.json") as f:
        during_training = json.load(f)  # 1 process, 2 workers
    one = _eval(
        tmp_path / "one", reference / "model_final.pth", [], ["DATALOADER.NUM_WORKERS", "0"]
    )
    # (Data loader workers of launched processes are spawned, i.e. slow to start: none here.)
    two = _eval(
        tmp_path / "two",
        reference / "model_final.pth",
        ["--num-gpus", "2", "--dist-url", "auto"],
        ["DATALOADER.NUM_WORKERS", "0"],
    )
    sem = during_training["sem_seg"]
    assert 0 < sem["mIoU"] < 100 and len(sem) > 10
    for res in (one, two):
        assert res["sem_seg"].keys() == sem.keys()
        for k, v in sem.items():
            assert res["sem_seg"][k] == pytest.approx(v, abs=1e-9), k


# ----------------------------------------------------------------------------------------------
# Exact resume with aspect-ratio grouping over images of both orientations (in process: the
# dataset is registered here; the SIGKILL path is the test above).
# ----------------------------------------------------------------------------------------------
MIXED = "test_mixed_orientation_train"


@pytest.fixture(scope="module")
def mixed_orientation_dataset(tmp_path_factory):
    """9 images with labels, every third one portrait (64x48), the others landscape (48x64)."""
    root = tmp_path_factory.mktemp("mixed_orientation")
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(9):
        h, w = (64, 48) if i % 3 == 0 else (48, 64)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 8, (h, w), dtype=np.uint8)).save(root / f"{i}_label.png")
        dicts.append(
            {
                "file_name": str(root / f"{i}.png"),
                "height": h,
                "width": w,
                "image_id": i,
                "sem_seg_file_name": str(root / f"{i}_label.png"),
            }
        )
    DatasetCatalog.register(MIXED, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(MIXED).set(stuff_classes=[str(c) for c in range(8)], ignore_label=255)
    yield
    DatasetCatalog.remove(MIXED)
    MetadataCatalog.remove(MIXED)


class _Interrupted(Exception):
    pass


class _InterruptAfter(HookBase):
    """Stop training after ``iteration``, as a kill would (the hooks' after_train still run)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise _Interrupted()


def _grouped_trainer(out, workers, resume=False):
    """A semantic toy model on the mixed-orientation images through Detectron2's DatasetMapper
    (resize keeping the orientation, flip), 2 images per batch, grouped by orientation. Records
    each batch's image sizes (H, W) in ``trainer.batch_sizes``."""
    cfg = setup_cfg(
        os.path.join(ROOT, SEMANTIC_CFG),
        [
            *SMALL_SEMANTIC_OPTS,
            "OUTPUT_DIR",
            str(out),
            "DATASETS.TRAIN",
            f"('{MIXED}',)",
            "DATASETS.TEST",
            "()",
            "INPUT.DATASET_MAPPER_NAME",
            "",
            "INPUT.MIN_SIZE_TRAIN",
            "(48,)",
            "INPUT.MAX_SIZE_TRAIN",
            "64",
            "DATALOADER.ASPECT_RATIO_GROUPING",
            "True",
            "DATALOADER.NUM_WORKERS",
            str(workers),
            "SOLVER.MAX_ITER",
            str(MAX_ITER),
            "SOLVER.CHECKPOINT_PERIOD",
            "3",
        ],
    )
    seed_all_rng(cfg.SEED)  # as train_net's default_setup: the same initial weights
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.batch_sizes = []
    trainer.model.register_forward_pre_hook(
        lambda _, args: trainer.batch_sizes.append([tuple(x["image"].shape[1:]) for x in args[0]])
    )
    return trainer


def _orientations(batch_sizes):
    return [{w > h for h, w in batch} for batch in batch_sizes]


def test_resume_with_aspect_ratio_grouping_reproduces_the_uninterrupted_losses(
    mixed_orientation_dataset, tmp_path
):
    reference = _grouped_trainer(tmp_path / "reference", workers=2)
    reference.train()
    interrupted = _grouped_trainer(tmp_path / "run", workers=0)
    interrupted.register_hooks([_InterruptAfter(3)])  # the last checkpoint: iteration 2
    with pytest.raises(_Interrupted):
        interrupted.train()
    resumed = _grouped_trainer(tmp_path / "run", workers=0, resume=True)
    assert resumed.start_iter == 3  # iteration 3 runs a second time
    # Iteration 3's batch holds a sample of a position before 3 x 2 (it waited in its bucket):
    # resuming the grouping at position 6 would give other batches.
    batches = list(itertools.islice(resumed._trainer.data_loader.sampler.batches(), MAX_ITER))
    assert min(p for p, _ in batches[3]) < 3 * 2
    resumed.train()
    # Every batch has one orientation, and both occur.
    kinds = _orientations(reference.batch_sizes)
    assert len(kinds) == MAX_ITER and all(len(k) == 1 for k in kinds)
    assert set().union(*kinds) == {True, False}
    ref_sizes = reference.batch_sizes
    assert interrupted.batch_sizes + resumed.batch_sizes == ref_sizes[:4] + ref_sizes[3:]
    assert len(read_losses(tmp_path / "run")[3]) == 2
    assert_same_losses(tmp_path / "reference", tmp_path / "run", MAX_ITER)
