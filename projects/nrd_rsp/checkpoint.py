"""``SafeCheckpointer``: Detectron2's ``DetectionCheckpointer`` that never leaves a half-written
checkpoint behind, survives a corrupt one at ``--resume``, and refuses weights of another model.

* **Atomic saves.** A checkpoint is written to a temporary file in the same directory, flushed,
  ``fsync``-ed and renamed into place (``os.replace``); ``last_checkpoint`` is updated only after
  that, the same way. A process killed while saving leaves the previous checkpoint and
  ``last_checkpoint`` intact (plus a hidden ``.model_*.pth.*.tmp`` file, removed at the next
  ``--resume``).
* **Resume with fallback.** ``resume_or_load(resume=True)`` tries the checkpoint named by
  ``last_checkpoint``, then every ``model_<iter>.pth`` by decreasing iteration, then the other
  ``*.pth`` by decreasing modification time. An unreadable one is reported by name and skipped.
  If checkpoints exist but none is readable it raises :class:`CheckpointError` instead of
  silently starting from scratch (Detectron2's behaviour when ``last_checkpoint`` is missing).
* **Checked loading.** Resuming and evaluation (``strict``) need every model tensor, with its
  shape, in the checkpoint; loading ``MODEL.WEIGHTS`` for training needs at least one tensor to
  fit (else it is clearly another architecture); other mismatches get Detectron2's warnings.
  A violation raises :class:`CheckpointMismatchError` with a table of the mismatched keys.
* **No code from a weights file** (:mod:`nrd_rsp.safe_loading`). ``.pkl`` files are read with a
  restricted unpickler, everything else with ``torch.load(weights_only=True)``; a file that would
  call anything else raises :class:`UnsafeCheckpointError` (not skipped at ``--resume``). A
  weights URL is checked against the sha256 its name or the model zoo records. Model entries
  other than tensors and numpy arrays are one :class:`CorruptCheckpointError`.

Loading is three plain steps, each given what it needs as arguments: find a readable checkpoint
(:func:`resume_candidates`, :meth:`SafeCheckpointer.find_readable`), read and load it
(:meth:`SafeCheckpointer.read`, :meth:`SafeCheckpointer.load_checkpoint`), check the fit
(:func:`check_fit`, with the path and the strictness). Atomic writing is :mod:`nrd_rsp.atomic_io`.
"""

import logging
import os
import re
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _filter_reused_missing_keys

from .atomic_io import atomic_write, temporary_target

# The error classes live in nrd_rsp.errors; importable from here too.
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .safe_loading import fetch_weights, read_d2_pkl, unsafe_global_in, unsafe_weights_message

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "SafeCheckpointer",
    "resume_candidates",
    "check_fit",
    "mismatch_table",
    "load_weights",
]

logger = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^model_(\d+)\.pth$")
# Model buffers that Detectron2 fills from the config when a checkpoint lacks them.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
MAX_TABLE_ROWS = 40


def _shape(v) -> Tuple[int, ...]:
    return tuple(getattr(v, "shape", ()))


# ----------------------------------------------------------------------------------------------
# find a readable checkpoint
# ----------------------------------------------------------------------------------------------
def resume_candidates(save_dir: str, tagged: str = "") -> List[str]:
    """Checkpoints of the local directory ``save_dir`` to try at resume, best first: ``tagged``
    (the one ``last_checkpoint`` names; ``""``: none), then ``model_<iter>.pth`` by decreasing
    iteration, then the other ``*.pth`` by decreasing mtime. Hidden files are not checkpoints."""
    if not os.path.isdir(save_dir):
        return [tagged] if tagged else []
    files = [f for f in os.listdir(save_dir) if f.endswith(".pth") and not f.startswith(".")]
    files = [f for f in files if os.path.isfile(os.path.join(save_dir, f))]
    numbered = sorted(
        (f for f in files if _NUMBERED.match(f)),
        key=lambda f: -int(_NUMBERED.match(f).group(1)),
    )
    others = sorted(
        (f for f in files if not _NUMBERED.match(f)),
        key=lambda f: -os.path.getmtime(os.path.join(save_dir, f)),
    )
    ordered = [os.path.join(save_dir, f) for f in numbered + others]
    if tagged:
        ordered = [tagged] + [p for p in ordered if os.path.abspath(p) != os.path.abspath(tagged)]
    return ordered


def remove_stale_temporaries(save_dir: str) -> None:
    """Remove the temporaries that a process killed while saving a checkpoint (or
    ``last_checkpoint``) left in the local directory ``save_dir``."""
    if not os.path.isdir(save_dir):
        return
    for f in os.listdir(save_dir):
        target = temporary_target(f)
        if target and (target.endswith(".pth") or target == "last_checkpoint"):
            logger.info(f"Removing {f}, left by a run killed while saving a checkpoint")
            try:
                os.remove(os.path.join(save_dir, f))
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# read
# ----------------------------------------------------------------------------------------------
def _read_torch_file(path: str, query: str) -> Dict:
    """A ``torch.save`` checkpoint as ``DetectionCheckpointer`` reads it (a bare state dict becomes
    ``{"model": ...}``; ``?matching_heuristics=True`` turns the heuristics on), but with
    ``torch.load(weights_only=True)``."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in loaded:
        loaded = {"model": loaded}
    queries = parse_qs(query)
    if queries.pop("matching_heuristics", "False") == ["True"]:
        loaded["matching_heuristics"] = True
    if queries:
        raise ValueError(f"Unsupported query remaining: {queries}, original filename: {path}")
    return loaded


def check_model_entries(data, filename: str) -> None:
    """``CorruptCheckpointError`` unless ``data`` has a ``"model"`` dict of tensors and numpy
    arrays only (what Detectron2 can load; anything else is its ``ValueError``)."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CorruptCheckpointError(f"'{filename}' is not a checkpoint (no 'model' state dict)")
    for k, v in data["model"].items():
        if not isinstance(v, (np.ndarray, torch.Tensor)):
            raise CorruptCheckpointError(
                f"'{filename}' cannot be loaded: its model entry '{k}' is a "
                f"{type(v).__name__}, not a tensor or numpy array (the only types Detectron2 "
                "loads); re-save it with tensors or arrays only"
            )


# ----------------------------------------------------------------------------------------------
# check the fit
# ----------------------------------------------------------------------------------------------
def check_fit(
    model, incompatible, model_shapes: Dict, ckpt_shapes: Dict, *, path: str, strict: bool
) -> None:
    """``CheckpointMismatchError`` (with a table) if the checkpoint ``path`` does not fit
    ``model``: with ``strict``, a model tensor missing from it or of another shape; without,
    no model tensor fitting at all. ``incompatible``: what ``_load_model`` reported;
    ``model_shapes`` / ``ckpt_shapes``: ``{key: shape}`` of the model and the checkpoint."""
    shape_keys = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [
        k
        for k in _filter_reused_missing_keys(model, incompatible.missing_keys)
        if k not in shape_keys
    ]
    # BatchNorm fills a missing num_batches_tracked itself (never reported missing).
    model_keys = [
        k
        for k in model_shapes
        if k not in _CONFIG_BUFFERS and not k.endswith("num_batches_tracked")
    ]
    fitting = set(model_keys) - set(incompatible.missing_keys) - shape_keys
    if strict and (missing or shape_keys):
        problem = (
            f"{len(missing)} of the model's {len(model_keys)} tensors are missing from it and "
            f"{len(shape_keys)} have another shape"
        )
        need = "evaluation and --resume need every model tensor"
    elif not strict and model_keys and not fitting:
        problem = (
            f"none of its {len(ckpt_shapes)} tensors fits the model's {len(model_keys)} tensors"
        )
        need = "this is not a checkpoint of this model"
    else:
        return
    unexpected = incompatible.unexpected_keys
    table = mismatch_table(
        missing, incompatible.incorrect_shapes, unexpected, model_shapes, ckpt_shapes
    )
    raise CheckpointMismatchError(
        f"Checkpoint '{path}' does not fit the model: {problem} "
        f"({len(unexpected)} of its tensors are unused); {need}. "
        "It was probably saved from another architecture or config: use "
        "the config it was trained with (see the table above).",
        table,
    )


def mismatch_table(missing, incorrect_shapes, unexpected, model_shapes, ckpt_shapes) -> str:
    """A fixed-width table: problem | key | shape in checkpoint | shape in model."""
    rows = [("missing", k, "-", str(model_shapes.get(k, "?"))) for k in missing]
    rows += [("shape", k, str(tuple(c)), str(tuple(m))) for k, c, m in incorrect_shapes]
    rows += [("unused", k, str(ckpt_shapes.get(k, "?")), "-") for k in unexpected]
    more = len(rows) - MAX_TABLE_ROWS
    rows = [("problem", "key", "checkpoint", "model")] + rows[:MAX_TABLE_ROWS]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if more > 0:
        lines.append(f"... and {more} more")
    return "\n".join(lines)


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, corrupt-checkpoint fallback at resume and
    checked weight loading (see the module docstring). Drop-in: same constructor; ``load`` and
    ``resume_or_load`` take the strictness as an argument."""

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.resumed_from: Optional[str] = None  # set by resume_or_load

    # ------------------------------------------------------------------------------------------
    # saving
    # ------------------------------------------------------------------------------------------
    def _local_dir(self) -> bool:
        return bool(self.save_dir) and "://" not in self.save_dir

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local_dir():
            return super().save(name, **kwargs)  # remote storage: PathManager, not atomic
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    # ------------------------------------------------------------------------------------------
    # finding, reading and loading
    # ------------------------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """Checkpoints to try at resume, best first (:func:`resume_candidates`; remote storage:
        the one in ``last_checkpoint``)."""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if not self._local_dir():
            return [tagged] if tagged else []
        return resume_candidates(self.save_dir, tagged)

    def find_readable(self) -> Optional[Tuple[str, Dict]]:
        """The first readable checkpoint of :meth:`resume_candidates` and its content, or None
        when there is no checkpoint; unreadable ones are reported by name and skipped. Removes
        the temporaries of saves that were killed.

        Raises:
            CheckpointError: checkpoints exist but none is readable.
        """
        candidates = self.resume_candidates()
        if self.save_to_disk and self._local_dir():
            remove_stale_temporaries(self.save_dir)
        failures = []
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if self.has_checkpoint() and not os.path.isfile(tagged):
            failures.append(f"{tagged}: missing (named in last_checkpoint)")
            self.logger.warning(f"last_checkpoint names '{tagged}', which does not exist.")
            candidates = [c for c in candidates if c != tagged]
        for candidate in candidates:
            try:
                checkpoint = self.read(candidate)
            except CorruptCheckpointError as e:
                failures.append(str(e))
                self.logger.warning(
                    f"Cannot resume from {candidate}: {e}. Trying an older checkpoint ..."
                )
                continue
            if failures:
                self.logger.warning(
                    f"Resumed from {candidate} instead (the newer checkpoints are unreadable)."
                )
            return candidate, checkpoint
        if failures:
            raise CheckpointError(
                f"--resume: no readable checkpoint in '{self.save_dir}' "
                f"({'; '.join(failures)}). Refusing to "
                "start from scratch: delete the broken files and last_checkpoint "
                "to start over, or "
                "train from a good checkpoint with MODEL.WEIGHTS and no --resume."
            )
        return None

    def read(self, path: str) -> Dict:
        """The checkpoint at ``path`` (a file, or a URL: fetched into Detectron2's cache and its
        sha256 checked), read without running code from it: ``.pkl`` with the restricted
        unpickler, ``.pyth`` as Detectron2 reads pycls files, others with
        ``torch.load(weights_only=True)``.

        Raises:
            UnsafeCheckpointError: the file would call a global a weights file never needs.
            CorruptCheckpointError: unreadable, or not a checkpoint that Detectron2 can load.
        """
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        url = urlparse(path)
        plain = url._replace(query="").geturl()
        filename = fetch_weights(plain) if "://" in path else PathManager.get_local_path(plain)
        try:
            if not os.path.isfile(filename):
                raise FileNotFoundError(f"no such file: '{filename}'")
            if filename.endswith(".pkl"):
                data = read_d2_pkl(filename)
            elif filename.endswith(".pyth"):
                data = super()._load_file(filename)
            else:
                data = _read_torch_file(filename, url.query)
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            if unsafe_global_in(e):
                msg = unsafe_weights_message(filename, unsafe_global_in(e))
                raise UnsafeCheckpointError(msg) from None
            raise CorruptCheckpointError(
                f"cannot read checkpoint '{filename}': {type(e).__name__}: {e}"
            ) from e
        check_model_entries(data, filename)
        return data

    def load_checkpoint(
        self, checkpoint: Dict, path: str, checkpointables=None, *, strict: bool = False
    ) -> Dict:
        """Load the ``checkpoint`` read from ``path``: the model (Detectron2's ``_load_model``,
        matching heuristics included), its fit checked (:func:`check_fit` with ``strict``), then
        ``checkpointables`` (names; None: all). Returns the checkpoint's other entries."""
        ckpt_shapes = {
            (k[len("module.") :] if k.startswith("module.") else k): _shape(v)
            for k, v in checkpoint["model"].items()
        }
        model_shapes = {k: _shape(v) for k, v in self.model.state_dict().items()}
        incompatible = self._load_model(checkpoint)
        check_fit(self.model, incompatible, model_shapes, ckpt_shapes, path=path, strict=strict)
        self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def load(self, path: str, checkpointables=None, *, strict: bool = False) -> Dict:
        """:meth:`read` ``path`` and :meth:`load_checkpoint` it (``strict``: every model tensor
        must fit; else at least one). ``""``: nothing to load (``{}``)."""
        if not path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        return self.load_checkpoint(self.read(path), path, checkpointables, strict=strict)

    def resume_or_load(self, path: str, *, resume: bool = True, strict: bool = False) -> Dict:
        """Resume from the newest readable checkpoint in ``save_dir`` (model and all
        checkpointables, every model tensor required) if ``resume`` and any exists; otherwise
        load the model weights of ``path`` (checked with ``strict``; ``""``: none).

        Sets ``resumed_from`` to the checkpoint resumed from (None when not resuming).
        Raises:
            CheckpointError: checkpoints exist but none is readable.
            CheckpointMismatchError: the weights do not fit the model.
        """
        self.resumed_from = None
        if resume:
            found = self.find_readable()
            if found is not None:
                self.resumed_from, checkpoint = found
                return self.load_checkpoint(checkpoint, self.resumed_from, strict=True)
            self.logger.info(
                f"--resume: no checkpoint in '{self.save_dir}' yet; starting from MODEL.WEIGHTS."
            )
        return self.load(path, checkpointables=[], strict=strict)


def load_weights(model, path: str, *, strict: bool = True, resume_dir: str = "") -> Dict:
    """The one checked way to load weights into ``model`` (:class:`SafeCheckpointer`).

    Args:
        path: checkpoint file or URL (``""``: nothing to load).
        strict: every model tensor must be in the checkpoint with its shape (evaluation,
            inference, a published model); else at least one must fit (e.g. ImageNet weights
            for the backbone alone).
        resume_dir: with a directory, the newest readable checkpoint in it is loaded instead of
            ``path`` (strictly) when there is one (``--eval-only --resume``).
    Raises:
        CheckpointError / CheckpointMismatchError: unreadable weights, or weights that do not
            fit (with a table of the mismatched keys).
    """
    checkpointer = SafeCheckpointer(model, save_dir=resume_dir)
    return checkpointer.resume_or_load(path, resume=bool(resume_dir), strict=strict)
