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
"""

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _filter_reused_missing_keys

# The error classes live in nrd_rsp.errors; importable from here too.
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    CorruptCheckpointError,
    DiskFullError,
    UnsafeCheckpointError,
)
from .safe_loading import fetch_weights, read_d2_pkl, unsafe_global_in, unsafe_weights_message

__all__ = [
    "check_d2_weights_path",
    "write_d2_weights",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "SafeCheckpointer",
    "atomic_write",
    "load_weights",
    "torch_load_tensors",
]

logger = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^model_(\d+)\.pth$")
_TMP_SUFFIX = ".tmp"
# Model buffers that Detectron2 fills from the config when a checkpoint lacks them.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
MAX_TABLE_ROWS = 40


def torch_load_tensors(path, what):
    """``torch.load(path, weights_only=True)`` on CPU; any failure becomes a one-line
    ``CheckpointError`` (a file that is not a ``torch.save`` file, is truncated, or holds
    arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if unsafe_global_in(e):
            raise UnsafeCheckpointError(unsafe_weights_message(path, unsafe_global_in(e))) from None
        msg = str(e)
        m = re.search(r"WeightsUnpickler error:\s*(.+?)\n\n", msg, re.S)
        reason = m.group(1).strip() if m else (msg.strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"Cannot read '{path}' as {what}: torch.load(weights_only=True) failed ({reason})."
        ) from e


def check_d2_weights_path(path: str) -> None:
    """``ConfigError`` unless ``path`` ends with ``.pkl``: Detectron2 loads converted weights with
    its name-matching heuristics only from ``.pkl`` files."""
    if not path.endswith(".pkl"):
        raise ConfigError(
            f"OUT must end with .pkl (Detectron2 reads .pkl with matching heuristics): '{path}'."
        )


def write_d2_weights(converted: dict, path: str) -> None:
    """Write converted ImageNet weights (``{"model": {name: ndarray}, ...}``) atomically as the
    Detectron2 ``.pkl`` that the converters in ``tools/`` produce."""
    check_d2_weights_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: pickle.dump(converted, f))


def atomic_write(path: str, write: Callable) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file in the same directory,
    ``fsync`` it and rename it into place, so that ``path`` is always either old or complete."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=_TMP_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _disk_full(e):
            raise DiskFullError(
                f"No space left on the disk of {directory} while writing "
                f"{os.path.basename(path)} ({shutil.disk_usage(directory).free >> 20} MiB free; "
                "the previous version of the file is intact): free space there, or point "
                "OUTPUT_DIR at a larger disk, and rerun (with --resume when training)"
            ) from e
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _disk_full(e: Optional[BaseException]) -> bool:
    """Whether ``e`` or an exception it was raised from is ENOSPC (``torch.save`` re-raises the
    ``OSError`` as a ``RuntimeError``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _shape(v) -> Tuple[int, ...]:
    return tuple(getattr(v, "shape", ()))


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, corrupt-checkpoint fallback at resume and
    checked weight loading (see the module docstring). Drop-in: same constructor."""

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = False  # set by resume_or_load / load_for_eval
        self.resumed_from: Optional[str] = None
        self._path_being_loaded = ""

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
    # loading
    # ------------------------------------------------------------------------------------------
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict:
        self._path_being_loaded = path
        try:
            if path and "://" in path:  # download (Detectron2's cache) and check its sha256
                fetch_weights(urlparse(path)._replace(query="").geturl())
            return super().load(path, checkpointables)
        finally:
            self._path_being_loaded = ""
            self._parsed_url_during_load = None  # DetectionCheckpointer resets it only on success

    def _load_file(self, filename: str):
        try:  # .pkl: restricted unpickler; .pth, .pyth: torch.load(weights_only=True)
            data = (
                read_d2_pkl(filename) if filename.endswith(".pkl") else super()._load_file(filename)
            )
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            if unsafe_global_in(e):
                msg = unsafe_weights_message(filename, unsafe_global_in(e))
                raise UnsafeCheckpointError(msg) from None
            raise CorruptCheckpointError(
                f"cannot read checkpoint '{filename}': {type(e).__name__}: {e}"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CorruptCheckpointError(
                f"'{filename}' is not a checkpoint (no 'model' state dict)"
            )
        for k, v in data["model"].items():  # what Detectron2 can load (else its ValueError)
            if not isinstance(v, (np.ndarray, torch.Tensor)):
                raise CorruptCheckpointError(
                    f"'{filename}' cannot be loaded: its model entry '{k}' is a "
                    f"{type(v).__name__}, not a tensor or numpy array (the only types Detectron2 "
                    "loads); re-save it with tensors or arrays only"
                )
        return data

    def _torch_load(self, f):
        return torch.load(f, map_location="cpu", weights_only=True)

    def _load_model(self, checkpoint):
        ckpt_shapes = {
            (k[len("module.") :] if k.startswith("module.") else k): _shape(v)
            for k, v in checkpoint["model"].items()
        }
        model_shapes = {k: _shape(v) for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        self._check_fit(incompatible, model_shapes, ckpt_shapes)
        return incompatible

    def _check_fit(self, incompatible, model_shapes: Dict, ckpt_shapes: Dict) -> None:
        shape_keys = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [
            k
            for k in _filter_reused_missing_keys(self.model, incompatible.missing_keys)
            if k not in shape_keys
        ]
        # BatchNorm fills a missing num_batches_tracked itself (never reported missing).
        model_keys = [
            k
            for k in model_shapes
            if k not in _CONFIG_BUFFERS and not k.endswith("num_batches_tracked")
        ]
        fitting = set(model_keys) - set(incompatible.missing_keys) - shape_keys
        path = self._path_being_loaded
        if self.strict and (missing or shape_keys):
            problem = (
                f"{len(missing)} of the model's {len(model_keys)} tensors are missing from it and "
                f"{len(shape_keys)} have another shape"
            )
            need = "evaluation and --resume need every model tensor"
        elif not self.strict and model_keys and not fitting:
            problem = (
                f"none of its {len(ckpt_shapes)} tensors fits the model's {len(model_keys)} tensors"
            )
            need = "this is not a checkpoint of this model"
        else:
            return
        table = self.mismatch_table(
            missing,
            incompatible.incorrect_shapes,
            incompatible.unexpected_keys,
            model_shapes,
            ckpt_shapes,
        )
        raise CheckpointMismatchError(
            f"Checkpoint '{path}' does not fit the model: {problem} "
            f"({len(incompatible.unexpected_keys)} of its "
            f"tensors are unused); {need}. "
            "It was probably saved from another architecture or config: use "
            "the config it was trained with (see the table above).",
            table,
        )

    @staticmethod
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

    # ------------------------------------------------------------------------------------------
    # resume
    # ------------------------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """Checkpoints to try at resume, best first: the one in ``last_checkpoint``, then
        ``model_<iter>.pth`` by decreasing iteration, then other ``*.pth`` by decreasing mtime."""
        if not self._local_dir() or not os.path.isdir(self.save_dir):
            return [self.get_checkpoint_file()] if self.has_checkpoint() else []
        files = [
            f for f in os.listdir(self.save_dir) if f.endswith(".pth") and not f.startswith(".")
        ]
        files = [f for f in files if os.path.isfile(os.path.join(self.save_dir, f))]
        numbered = sorted(
            (f for f in files if _NUMBERED.match(f)),
            key=lambda f: -int(_NUMBERED.match(f).group(1)),
        )
        others = sorted(
            (f for f in files if not _NUMBERED.match(f)),
            key=lambda f: -os.path.getmtime(os.path.join(self.save_dir, f)),
        )
        ordered = [os.path.join(self.save_dir, f) for f in numbered + others]
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if tagged:
            ordered = [tagged] + [
                p for p in ordered if os.path.abspath(p) != os.path.abspath(tagged)
            ]
        return ordered

    def _remove_stale_temporaries(self) -> None:
        if not self.save_to_disk or not self._local_dir() or not os.path.isdir(self.save_dir):
            return
        for f in os.listdir(self.save_dir):
            if (
                f.startswith(".")
                and f.endswith(_TMP_SUFFIX)
                and (".pth." in f or f.startswith(".last_checkpoint."))
            ):
                self.logger.info(f"Removing {f}, left by a run killed while saving a checkpoint")
                try:
                    os.remove(os.path.join(self.save_dir, f))
                except OSError:
                    pass

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
            candidates = self.resume_candidates()
            self._remove_stale_temporaries()
            failures = []
            tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
            if self.has_checkpoint() and not os.path.isfile(tagged):
                failures.append(f"{tagged}: missing (named in last_checkpoint)")
                self.logger.warning(f"last_checkpoint names '{tagged}', which does not exist.")
                candidates = [c for c in candidates if c != tagged]
            for candidate in candidates:
                try:
                    self.strict = True
                    ret = self.load(candidate)
                except CorruptCheckpointError as e:
                    failures.append(str(e))
                    self.logger.warning(
                        f"Cannot resume from {candidate}: {e}. Trying an older checkpoint ..."
                    )
                    continue
                finally:
                    self.strict = False
                if failures:
                    self.logger.warning(
                        f"Resumed from {candidate} instead (the newer checkpoints are unreadable)."
                    )
                self.resumed_from = candidate
                return ret
            if failures:
                raise CheckpointError(
                    f"--resume: no readable checkpoint in '{self.save_dir}' "
                    f"({'; '.join(failures)}). Refusing to "
                    "start from scratch: delete the broken files and last_checkpoint "
                    "to start over, or "
                    "train from a good checkpoint with MODEL.WEIGHTS and no --resume."
                )
            self.logger.info(
                f"--resume: no checkpoint in '{self.save_dir}' yet; starting from MODEL.WEIGHTS."
            )
        self.strict = strict
        try:
            return self.load(path, checkpointables=[])
        finally:
            self.strict = False


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
