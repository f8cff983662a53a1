"""Checked reading and augmenting of one training or test sample.

Detectron2's readers fail on a bad file with whatever PIL raises (or a bare ``ValueError`` from
a resize deep inside an augmentation), naming nothing. These wrappers raise
:class:`~nrd_rsp.errors.BadSampleError` naming the file for a *data fault*: an unreadable,
corrupt or truncated image or label, a colour label map, a label whose size differs from its
image, an image whose size differs from the dataset dict's, or an image so elongated that a
resize would leave it no pixel row or column. The training loader
(:mod:`nrd_rsp.data.resumable_loader`) skips such samples; at test time they stop with one line.
"""

from typing import Optional, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..errors import BadSampleError

__all__ = [
    "read_image_checked",
    "read_label_checked",
    "check_image_size_or_skip",
    "apply_augmentations_checked",
]


def read_image_checked(file_name: str, fmt: Optional[str], what: str = "image") -> np.ndarray:
    """Detectron2's ``read_image`` (EXIF orientation; grayscale ``L``, ``RGBA``, palette ``P`` ...
    converted by PIL to ``fmt``: alpha dropped, palette looked up, gray replicated), raising
    :class:`BadSampleError` naming the file for a missing, unreadable or truncated file.

    Returns:
        HWC uint8 array for ``fmt`` in (RGB, BGR, L), (H, W) or (H, W, C) for ``fmt=None``.
    """
    try:
        return utils.read_image(file_name, format=fmt)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt files
        msg = f"cannot read {what} '{file_name}': {type(e).__name__}: {e}"
        raise BadSampleError(msg, file_name) from e


def read_label_checked(
    file_name: str, image_hw: Tuple[int, int], what: str = "label"
) -> np.ndarray:
    """Read a label map as stored (palette PNGs give their indices, not colours) and check it.

    Args:
        file_name: the label PNG.
        image_hw: (H, W) of the image it annotates.
    Returns:
        (H, W) array of label ids.
    Raises:
        BadSampleError: unreadable file, a colour (RGB with different channels) label, or a size
            different from the image's.
    """
    label = read_image_checked(file_name, None, what)
    if label.ndim == 3:
        first = label[:, :, 0]
        grey = label.shape[2] < 3 or all(np.array_equal(first, label[:, :, c]) for c in (1, 2))
        if not grey:
            raise BadSampleError(
                f"{what} '{file_name}' is a colour image; expected a single-channel map of class "
                "ids",
                file_name,
            )
        label = first
    if tuple(label.shape) != tuple(image_hw):
        raise BadSampleError(
            f"{what} '{file_name}' has size {tuple(label.shape)} (H, W) but its image has size "
            f"{tuple(image_hw)}",
            file_name,
        )
    return label


def check_image_size_or_skip(dataset_dict: dict, image: np.ndarray) -> None:
    """Detectron2's ``check_image_size`` (image vs. ``height``/``width`` of the dict), raising
    :class:`BadSampleError` instead of ``SizeMismatchError``."""
    try:
        utils.check_image_size(dataset_dict, image)
    except utils.SizeMismatchError as e:
        raise BadSampleError(str(e), dataset_dict.get("file_name")) from e


def _check_output_size(tfm, image_hw: Tuple[int, int], file_name: str) -> None:
    """Raise :class:`BadSampleError` when a transform of ``tfm`` would give an empty image."""
    for t in tfm.transforms if isinstance(tfm, T.TransformList) else [tfm]:
        new_h, new_w = getattr(t, "new_h", 1), getattr(t, "new_w", 1)  # ResizeTransform
        if new_h < 1 or new_w < 1:
            raise BadSampleError(
                f"image '{file_name}' of size {tuple(image_hw)} (H, W) would be resized to "
                f"({new_h}, {new_w}) by {type(t).__name__}: too elongated for the training resize",
                file_name,
            )


class _SizeCheckedInput:
    """An ``AugInput`` proxy whose ``transform`` first checks the output size
    (:func:`_check_output_size`); every other attribute is the wrapped input's."""

    def __init__(self, aug_input: T.AugInput, file_name: str):
        self._aug_input = aug_input
        self._file_name = file_name

    def __getattr__(self, name):
        return getattr(self._aug_input, name)

    def transform(self, tfm) -> None:
        _check_output_size(tfm, self._aug_input.image.shape[:2], self._file_name)
        self._aug_input.transform(tfm)


def apply_augmentations_checked(
    augmentations: T.Augmentation, aug_input: T.AugInput, file_name: str
) -> T.Transform:
    """``augmentations(aug_input)`` (in place, returns the transforms), raising
    :class:`BadSampleError` naming ``file_name`` before a resize would leave the image without a
    pixel row or column (e.g. a 1 x 600 image whose short side rounds to 0), a data fault that
    PIL would report as a bare ``ValueError``. Each augmentation runs its own ``__call__``, with
    the same random draws as unchecked."""
    return augmentations(_SizeCheckedInput(aug_input, file_name))
