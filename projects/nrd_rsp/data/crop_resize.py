"""Random keep-ratio resize, and the mappers' fast paths for their first augmentations.

* :class:`RandomResizeKeepRatio`: mmseg's random keep-ratio resize as a Detectron2 augmentation.
* :func:`map_resize_first`: a leading ``ResizeShortestEdge`` (Panoptic FPN and test mappers)
  applied to the PIL image as read, the same PIL resize as Detectron2's, without its copies
  (numpy, BGR flip, back to PIL): the same pixels.
* :func:`map_crop_window`: the first two training augmentations of
  ``SemanticSegDatasetMapper``, a :class:`RandomResizeKeepRatio` and a
  ``RandomCrop_CategoryAreaConstraint``, computed on the crop window only. Resizing the whole
  image and then cropping, as Detectron2's ``AugmentationList`` does, resamples up to 16x more
  pixels than the crop keeps at a ratio of 2 (Cityscapes: 2048x4096 for a 512x1024 crop). Here,
  with the same random numbers drawn in the same order:

  - the ratio is drawn by the resize augmentation itself, and the crop by :func:`draw_crop`,
    the loop of ``RandomCrop_CategoryAreaConstraint.get_transform`` with its crop size and
    position draws, on a stand-in of the resized label (:class:`ResizedLabelWindows`, which
    resizes only the windows that the category-area check looks at, at most 10), counting the
    categories with ``np.bincount`` for uint8 labels;
  - the label stays in its stored integer type and is resized with index maps taken from
    PIL's nearest-neighbour resize (:func:`nearest_source_indices`), which picks the source pixel
    under each output pixel's centre along each axis independently: the label is exactly that
    of resizing the whole label with PIL (what Detectron2's ``ResizeTransform`` does to a uint8
    label) and then cropping;
  - the image is resized with PIL's ``Image.resize(size, resample, box)`` over the rows of the
    window (:func:`resize_window`): the same filter as the whole-image resize, within one grey
    level (a fraction of a percent of the pixels differ by one).

Photometric distortion and flips come after the crop in the augmentation list, so they already
run on the crop.

Labels before this path existed were carried as float64, which Detectron2's ``ResizeTransform``
resizes with ``F.interpolate`` (mode "nearest", source ``floor(i * in / out)``): that picks a
source pixel up to one pixel up-left of the one under the output pixel's centre, where the
bilinear image samples. The random draws are unchanged; labels now follow PIL's rule.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..errors import BadSampleError
from .checked_reading import (
    apply_augmentations_checked,
    check_image_size_or_skip,
    read_label_checked,
)

__all__ = [
    "RandomResizeKeepRatio",
    "ResizedLabelWindows",
    "crop_window_augmentations",
    "draw_crop",
    "map_crop_window",
    "map_resize_first",
    "nearest_source_indices",
    "resize_first_augmentations",
    "resize_window",
]


class RandomResizeKeepRatio(T.Augmentation):
    """Random keep-ratio resize of mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    Draws ``r ~ U(min_scale, max_scale)`` and rescales an ``h x w`` image by
    ``f = r * min(max(base_size) / max(h, w), min(base_size) / min(h, w))`` (``mmcv.rescale_size``
    of the scale ``r * base_size``): the largest size whose long side is at most
    ``r * max(base_size)`` and short side at most ``r * min(base_size)``, for portrait and
    landscape images alike. Output size ``(int(h f + 0.5), int(w f + 0.5))``. mmseg truncates
    ``r * base_size`` to integers first: its ``f`` is smaller by less than
    ``1 / (r min(base_size))`` relative (0.4% for ADE20K), a difference of no consequence that
    keeps the toy data stream of Detectron2's ``ResizeScale`` for landscape images.
    Detectron2's ``ResizeScale`` fits the image into ``r * (target_height, target_width)``
    instead, which shrinks portrait images by up to ``min(base_size) / max(base_size)`` more
    (4x for ADE20K's (512, 2048)).
    """

    def __init__(
        self,
        *,
        min_scale: float,
        max_scale: float,
        base_size: Sequence[int],
        interp: int = Image.BILINEAR,
    ):
        super().__init__()
        if len(base_size) != 2 or min(base_size) <= 0 or not 0 < min_scale <= max_scale:
            raise ValueError(
                f"Bad resize: INPUT.RESIZE_BASE_SIZE {tuple(base_size)} must be two positive "
                f"sizes and INPUT.RESIZE_SCALE_RANGE ({min_scale}, {max_scale}) 0 < min <= max."
            )
        self._init(locals())

    def resize_for(self, size: Tuple[int, int], ratio: float) -> T.ResizeTransform:
        """The resize of an ``(h, w)`` image for the drawn ratio ``r``."""
        h, w = size
        long_side, short_side = max(self.base_size), min(self.base_size)
        factor = ratio * min(long_side / max(h, w), short_side / min(h, w))
        out_h, out_w = int(h * factor + 0.5), int(w * factor + 0.5)
        return T.ResizeTransform(h, w, out_h, out_w, self.interp)

    def get_transform(self, image):
        ratio = np.random.uniform(self.min_scale, self.max_scale)
        return self.resize_for(image.shape[:2], ratio)


def crop_window_augmentations(augmentations) -> Optional[tuple]:
    """``(resize, crop, rest)`` when ``augmentations`` start with a :class:`RandomResizeKeepRatio`,
    optionally followed by a ``RandomCrop_CategoryAreaConstraint`` (``crop`` is None without
    one); None when the crop-window path does not apply."""
    augs = list(augmentations)
    if not augs or type(augs[0]) is not RandomResizeKeepRatio:
        return None
    crop = augs[1] if len(augs) > 1 else None
    if type(crop) is not T.RandomCrop_CategoryAreaConstraint:
        return augs[0], None, augs[1:]
    return augs[0], crop, augs[2:]


def nearest_source_indices(n_in: int, n_out: int) -> np.ndarray:
    """For each of ``n_out`` positions, the source index that PIL's ``Image.NEAREST`` resize from
    ``n_in`` picks along one axis (both axes use the same rule, each independently of the
    other): taken from PIL itself, by resizing a one-row image of the indices."""
    line = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :])  # mode "I"
    return np.asarray(line.resize((n_out, 1), Image.NEAREST))[0].astype(np.intp)


class ResizedLabelWindows:
    """A label map as if resized (nearest) to ``out_hw``; slicing ``[y0:y1, x0:x1]`` computes only
    that window. ``shape`` is the resized shape."""

    def __init__(self, label: np.ndarray, out_hw: Tuple[int, int]):
        self.label = label
        self.shape = tuple(out_hw)
        self.rows = nearest_source_indices(label.shape[0], out_hw[0])
        self.cols = nearest_source_indices(label.shape[1], out_hw[1])

    def __getitem__(self, key):
        ys, xs = key
        return self.label.take(self.rows[ys], axis=0).take(self.cols[xs], axis=1)


class _Shape:
    """Stands for an array of which only ``shape`` is read."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def read_rgb_checked(file_name: str) -> Image.Image:
    """The image as Detectron2's ``read_image(file_name, "RGB")`` reads it (EXIF orientation,
    ``convert("RGB")``), as a loaded PIL image; :class:`BadSampleError` naming the file for a
    missing, unreadable or truncated file (``read_image_checked``'s message)."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = utils._apply_exif_orientation(Image.open(f))
            image = image if image.mode == "RGB" else image.convert("RGB")
            image.load()
            return image
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt files
        msg = f"cannot read image '{file_name}': {type(e).__name__}: {e}"
        raise BadSampleError(msg, file_name) from e


def _check_resize(resize: T.ResizeTransform, file_name: str) -> None:
    """``apply_augmentations_checked``'s check, for the resize done here."""
    if resize.new_h < 1 or resize.new_w < 1:
        raise BadSampleError(
            f"image '{file_name}' of size {(resize.h, resize.w)} (H, W) would be resized to "
            f"({resize.new_h}, {resize.new_w}) by ResizeTransform: too elongated for the "
            "training resize",
            file_name,
        )


def _category_counts(window: np.ndarray, ignored) -> np.ndarray:
    """Pixel counts of the categories present in ``window``, ``ignored`` left out (the counts
    ``RandomCrop_CategoryAreaConstraint`` takes from ``np.unique``; ``np.bincount`` for uint8)."""
    if window.dtype != np.uint8:
        values, counts = np.unique(window, return_counts=True)
        return counts if ignored is None else counts[values != ignored]
    counts = np.bincount(window.ravel(), minlength=256)
    if ignored is not None and 0 <= ignored < 256 and ignored == int(ignored):
        counts[int(ignored)] = 0
    return counts[counts > 0]


def draw_crop(crop_aug: T.RandomCrop_CategoryAreaConstraint, labels: ResizedLabelWindows):
    """``(x0, y0, w, h)`` and the label window of the crop that ``crop_aug.get_transform`` would
    draw on the resized label, with the same random numbers: up to 10 draws until no category
    (``ignored_category`` aside) covers ``single_category_max_area`` of the crop or more."""
    h, w = labels.shape
    if crop_aug.single_category_max_area >= 1.0:
        t = crop_aug.crop_aug.get_transform(_Shape((h, w, 3)))
        return (t.x0, t.y0, t.w, t.h), labels[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w]
    for _ in range(10):
        ch, cw = crop_aug.crop_aug.get_crop_size((h, w))
        y0 = np.random.randint(h - ch + 1)
        x0 = np.random.randint(w - cw + 1)
        window = labels[y0 : y0 + ch, x0 : x0 + cw]
        counts = _category_counts(window, crop_aug.ignored_category)
        if len(counts) > 1 and np.max(counts) < np.sum(counts) * crop_aug.single_category_max_area:
            break
    return (x0, y0, cw, ch), window


def resize_window(image: Image.Image, resize: T.ResizeTransform, window) -> np.ndarray:
    """The ``(x0, y0, w, h)`` window of ``image`` resized by ``resize`` (HWC uint8), within one
    grey level of resizing the whole image and cropping.

    PIL resamples in two passes, horizontal then vertical, each rounded to uint8, with filter
    positions computed from the box, which it takes as float32. The box here spans the whole
    width, so the horizontal pass has the positions of the whole-image resize and gives the same
    values, on the source rows that the window needs only; the vertical pass covers the
    window's rows, at positions that differ from the whole-image ones by float32 rounding, which
    can move an output pixel across a rounding boundary: one grey level at most. The columns
    outside the window are then dropped (resizing the columns on the window too would be about
    twice as fast at ratio 2 but can differ by two levels, one per pass)."""
    x0, y0, cw, ch = window
    w, h = image.size
    if window == (0, 0, resize.new_w, resize.new_h):
        return np.asarray(image.resize((cw, ch), resize.interp))  # as resize-then-crop
    sy = h / resize.new_h
    box = (0.0, y0 * sy, float(w), (y0 + ch) * sy)
    band = image.resize((resize.new_w, ch), resize.interp, box=box)
    return np.asarray(band.crop((x0, 0, x0 + cw, ch)))


def map_crop_window(dataset_dict: dict, image_format: str, resize_aug, crop_aug):
    """Read the image and label of ``dataset_dict`` (popping ``sem_seg_file_name``), check them as
    the generic path does, and return the image (HWC uint8 in ``image_format``, RGB or BGR) and
    label (its stored type) as ``resize_aug`` then ``crop_aug`` would make them, with the same
    random draws. Both are resized on the crop window only."""
    file_name = dataset_dict["file_name"]
    image = read_rgb_checked(file_name)
    w, h = image.size
    check_image_size_or_skip(dataset_dict, _Shape((h, w, 3)))
    label = read_label_checked(dataset_dict.pop("sem_seg_file_name"), (h, w))

    resize = resize_aug.get_transform(_Shape((h, w, 3)))
    _check_resize(resize, file_name)
    labels = ResizedLabelWindows(label, (resize.new_h, resize.new_w))
    if crop_aug is None:
        window, label = (0, 0, resize.new_w, resize.new_h), labels[:, :]
    else:
        window, label = draw_crop(crop_aug, labels)
    image = resize_window(image, resize, window)
    return (image[:, :, ::-1] if image_format == "BGR" else image), label


def resize_first_augmentations(augmentations, image_format: str) -> Optional[tuple]:
    """``(resize, rest)`` when ``augmentations`` start with a ``ResizeShortestEdge`` and images are
    RGB or BGR (the Panoptic FPN and test mappers): :func:`map_resize_first` applies."""
    augs = list(augmentations)
    if augs and type(augs[0]) is T.ResizeShortestEdge and image_format in ("RGB", "BGR"):
        return augs[0], T.AugmentationList(augs[1:])
    return None


def map_resize_first(dataset_dict: dict, image_format: str, resize_aug, rest):
    """Read and augment like ``CheckedDatasetMapper``, with the first augmentation, a
    ``ResizeShortestEdge``, applied to the PIL image as read: the same PIL resize as Detectron2's
    ``ResizeTransform``, on RGB instead of a copy flipped to BGR. The same pixels and draws,
    without the copies. Returns the image (HWC), the label (or None) and the transforms."""
    file_name = dataset_dict["file_name"]
    image = read_rgb_checked(file_name)
    w, h = image.size
    check_image_size_or_skip(dataset_dict, _Shape((h, w, 3)))
    sem_seg = None
    if "sem_seg_file_name" in dataset_dict:
        sem_seg = read_label_checked(dataset_dict.pop("sem_seg_file_name"), (h, w))
    resize = resize_aug.get_transform(_Shape((h, w, 3)))
    if isinstance(resize, T.ResizeTransform):
        _check_resize(resize, file_name)
        image = image.resize((resize.new_w, resize.new_h), resize.interp)
        sem_seg = None if sem_seg is None else resize.apply_segmentation(sem_seg)
    image = np.asarray(image)
    aug_input = T.AugInput(image[:, :, ::-1] if image_format == "BGR" else image, sem_seg=sem_seg)
    others = apply_augmentations_checked(rest, aug_input, file_name)
    return aug_input.image, aug_input.sem_seg, T.TransformList([resize, *others.transforms])
