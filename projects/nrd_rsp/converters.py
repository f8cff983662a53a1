"""Helpers of the weights tools in ``tools/``: reading a foreign ``torch.save`` file without
running its code, and writing the Detectron2 ``.pkl`` that ``convert-torchvision-to-d2.py`` and
``convert-mmcls-v1c-to-d2.py`` produce. Their messages speak to the command lines (``OUT``)."""

import os
import pickle
import re

import torch

from .atomic_io import atomic_write
from .errors import CheckpointError, ConfigError, UnsafeCheckpointError
from .safe_loading import unsafe_global_in, unsafe_weights_message

__all__ = ["torch_load_tensors", "check_d2_weights_path", "write_d2_weights"]


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
