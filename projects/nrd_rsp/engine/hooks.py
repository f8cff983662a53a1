"""The project's training hooks: per-step reseeding, the raw loss log and the skipped-sample
report. The last two read the run's :class:`~nrd_rsp.training_health.TrainingHealth`, given to
their constructors (written by the loader and the step guard)."""

import json
import logging
import random

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable_sampling import mix_seed
from ..training_health import TrainingHealth

__all__ = ["StepSeedHook", "LossLogHook", "SkippedSamplesHook", "JobLayoutHook"]

logger = logging.getLogger("nrd_rsp")


class StepSeedHook(HookBase):
    """Seed ``random``, ``numpy`` and ``torch`` from ``(seed, iteration, rank)`` before every
    step, so that model-side randomness (RPN/ROI sampling, dropout) is the same in a resumed run
    as in an uninterrupted one. ``seed`` is saved in checkpoints (``state_dict``) and restored at
    resume."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        s = mix_seed(self.seed, self.trainer.iter, comm.get_rank())
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state_dict):
        self.seed = int(state_dict["seed"])


class LossLogHook(HookBase):
    """Append the raw per-iteration losses (every term and their sum, averaged over ranks:
    ``health.last_losses``) to ``path``: one ``{"iteration": i, "total_loss": ..., "loss_*": ...}``
    per line (Detectron2's ``metrics.json`` has 20-iteration medians whose window restarts at
    resume). A fresh run truncates the file; a resumed run appends. Main process only."""

    def __init__(self, path: str, health: TrainingHealth):
        self.path = path
        self.health = health
        self._file = None

    def before_train(self):
        self._file = open(self.path, "a" if self.trainer.start_iter > 0 else "w")

    def after_step(self):
        losses = self.health.last_losses
        if losses.get("iteration") == self.trainer.iter and self._file is not None:
            self._file.write(json.dumps(losses) + "\n")
            self._file.flush()

    def after_train(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class SkippedSamplesHook(HookBase):
    """Report skipped (bad) training samples: ``data/skipped_samples`` in the event storage when
    it changes and a summary at the end of training, totals over ranks (``health.skip_totals``)
    and resumes (``state_dict``)."""

    def __init__(self, health: TrainingHealth):
        self.health = health
        self._offset = (0, 0)  # from the runs before the last resume
        self._last = 0

    def _totals(self):
        skipped, seen = self.health.skip_totals
        return skipped + self._offset[0], seen + self._offset[1]

    def after_step(self):
        skipped, _ = self._totals()
        if skipped != self._last:
            self.trainer.storage.put_scalar("data/skipped_samples", skipped, smoothing_hint=False)
            self._last = skipped

    def after_train(self):
        skipped, seen = self._totals()
        if comm.is_main_process():
            logger.info(
                f"Training data: {skipped} bad sample(s) skipped out of {seen} loaded"
                + (f" ({100.0 * skipped / seen:.2f}%)." if seen else ".")
            )

    def state_dict(self):
        skipped, seen = self._totals()
        return {"skipped": skipped, "seen": seen}

    def load_state_dict(self, state_dict):
        self._offset = (int(state_dict["skipped"]), int(state_dict["seen"]))


class JobLayoutHook(HookBase):
    """Store the job's layout in checkpoints: world size, ``SOLVER.IMS_PER_BATCH`` and whether
    batches are grouped by aspect ratio. At a resume with another layout, say in one line what
    that means for the batches: global batch ``i`` holds stream positions ``i * B ..
    (i + 1) * B - 1`` whatever the world size, so only a changed batch size or grouping (which
    forms batches per rank) makes them differ from the uninterrupted run's."""

    def __init__(self, *, world_size: int, ims_per_batch: int, grouped: bool):
        self.layout = {
            "world_size": int(world_size),
            "ims_per_batch": int(ims_per_batch),
            "aspect_ratio_grouping": bool(grouped),
        }

    def state_dict(self):
        return dict(self.layout)

    def load_state_dict(self, state_dict):
        old, new = state_dict, self.layout
        w0, w1 = old.get("world_size", new["world_size"]), new["world_size"]
        b0, b1 = old.get("ims_per_batch", new["ims_per_batch"]), new["ims_per_batch"]
        if b0 != b1:
            logger.warning(
                f"Resuming with SOLVER.IMS_PER_BATCH {b1} instead of the checkpoint's {b0}: the "
                f"sample stream continues at iteration x {b1}, so the batches after the resume "
                "differ from those of an uninterrupted run."
            )
        elif w0 != w1 and new["aspect_ratio_grouping"]:
            logger.warning(
                f"Resuming a {w0}-process checkpoint on {w1} processes with "
                "DATALOADER.ASPECT_RATIO_GROUPING: batches are grouped per process, so the "
                "batches after the resume differ from those of an uninterrupted run."
            )
        elif w0 != w1:
            logger.info(
                f"Resuming a {w0}-process checkpoint on {w1} processes: every global batch after "
                f"the resume holds the same {b1} samples as in an uninterrupted run."
            )
