"""Training mappers: dataset dict -> model input.

* ``SemanticSegDatasetMapper``: random keep-ratio resize over a scale range of a base size
  (``RandomResizeKeepRatio``), absolute crop with a cap on the area of a single category, flip,
  photometric distortion, padding to a size divisibility. Used for Cityscapes / ADE20K /
  PASCAL Context / toy semantic data.
* ``PanopticFPNDatasetMapper``: Detectron2's ``DatasetMapper`` (semantic "stuff" PNG + instance
  annotations, the Panoptic FPN format) with optional photometric distortion.
* ``CheckedDatasetMapper``: Detectron2's ``DatasetMapper`` with checked reading; the test mapper.

The semantic training mapper resizes and crops on the crop window only, and the other two apply
a leading ``ResizeShortestEdge`` to the image as PIL reads it (``nrd_rsp.data.crop_resize``):
same random draws and labels, images within one grey level (semantic) or equal (the others).

All of them read and augment through ``nrd_rsp.data.checked_reading``: an unreadable/corrupt
image or label, an image whose size differs from the dataset dict's, a label whose size differs
from its image, or an image so elongated that a resize would leave it no pixel row or column
raises ``BadSampleError`` naming the file (skipped in training by ``ResumableMapDataset``).
Grayscale, RGBA and palette images are converted by PIL to ``INPUT.FORMAT`` (alpha dropped,
palette looked up); palette label PNGs give their indices.

``build_train_mapper(cfg)`` picks one from ``INPUT.DATASET_MAPPER_NAME``.

Photometric distortion (``build_photometric_augmentations``, ``INPUT.COLOR_AUG_TYPE``) gives the
same result for RGB and BGR input up to channel order: ``FormatAwareSaturation`` weighs the
channels by luminance in the image's own order (Detectron2's ``RandomSaturation`` assumes RGB),
and ``PhotoMetricDistortion`` (mmseg's, the NRD authors') converts to HSV from the image's order.
"""

import copy
import logging
from typing import Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from torch.nn import functional as F

from ..errors import BadSampleError
from .checked_reading import (
    apply_augmentations_checked,
    check_image_size_or_skip,
    read_image_checked,
    read_label_checked,
)
from .crop_resize import (
    RandomResizeKeepRatio,
    crop_window_augmentations,
    map_crop_window,
    map_resize_first,
    resize_first_augmentations,
)

__all__ = [
    "FormatAwareSaturation",
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "RandomResizeKeepRatio",
    "SemanticSegDatasetMapper",
    "CheckedDatasetMapper",
    "PanopticFPNDatasetMapper",
    "build_photometric_augmentations",
    "build_train_mapper",
    "build_test_mapper",
]


# ITU-R BT.601 luma weights of R, G, B (Detectron2's RandomSaturation, PIL's ImageEnhance.Color).
_LUMA_RGB = (0.299, 0.587, 0.114)
_HSV_CODES = {
    "RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
    "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR),
}


def _check_color_format(image_format: str) -> str:
    if image_format not in _HSV_CODES:
        raise ValueError(
            f"Photometric distortion needs INPUT.FORMAT 'RGB' or 'BGR', got '{image_format}' "
            "(or set INPUT.COLOR_AUG False)."
        )
    return image_format


class FormatAwareSaturation(T.Augmentation):
    """Detectron2's ``RandomSaturation`` for RGB or BGR images.

    Blends the image with its luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (weights taken in the
    image's channel order): ``out = w * image + (1 - w) * Y``, ``w ~ U(intensity_min,
    intensity_max)``. Detectron2's version always weighs channel 0 by 0.299, i.e. takes blue for
    red on BGR images. Draws the same single random number as Detectron2's.
    """

    def __init__(self, intensity_min: float, intensity_max: float, *, image_format: str):
        super().__init__()
        weights = np.asarray(_LUMA_RGB)
        if _check_color_format(image_format) == "BGR":
            weights = weights[::-1].copy()
        self._init(locals())  # intensity_min, intensity_max, image_format, weights

    def get_transform(self, image):
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        luma = image.dot(self.weights)[:, :, np.newaxis]
        return T.BlendTransform(src_image=luma, src_weight=1 - w, dst_weight=w)


def _scale_shift_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(alpha * x + beta, 0, 255)`` in float32, truncated to uint8 (mmseg's ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricTransform(T.Transform):
    """One draw of mmseg's ``PhotoMetricDistortion`` applied to a uint8 RGB/BGR image.

    Steps, each skipped when its parameter is ``None`` (mmseg 0.x
    ``mmseg/datasets/pipelines/transforms.py``): brightness ``x + beta``; contrast ``alpha x``
    here if ``contrast_first``; saturation: HSV ``S * s``; hue: HSV ``(H + d) mod 180`` (OpenCV
    8-bit hue, 2 degrees per unit); contrast here otherwise. Every step clips to [0, 255] and
    truncates to uint8 as mmseg does. HSV conversions use the image's channel order, so RGB and
    BGR inputs give the same result up to channel order. Labels and coordinates are unchanged.
    """

    def __init__(
        self,
        *,
        image_format: str,
        brightness: Optional[float] = None,
        contrast: Optional[float] = None,
        contrast_first: bool = False,
        saturation: Optional[float] = None,
        hue: Optional[int] = None,
    ):
        super().__init__()
        _check_color_format(image_format)
        self._set_attributes(locals())

    def _in_hsv(self, image: np.ndarray, edit) -> np.ndarray:
        to_hsv, from_hsv = _HSV_CODES[self.image_format]
        hsv = cv2.cvtColor(np.ascontiguousarray(image), to_hsv)
        edit(hsv)
        return cv2.cvtColor(hsv, from_hsv)

    def _scale_saturation(self, hsv: np.ndarray) -> None:
        hsv[..., 1] = _scale_shift_uint8(hsv[..., 1], alpha=self.saturation)

    def _rotate_hue(self, hsv: np.ndarray) -> None:
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.hue) % 180

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"PhotoMetricTransform needs uint8 HxWx3, got {img.dtype} {img.shape}."
            )
        if self.brightness is not None:
            img = _scale_shift_uint8(img, beta=self.brightness)
        if self.contrast is not None and self.contrast_first:
            img = _scale_shift_uint8(img, alpha=self.contrast)
        if self.saturation is not None:
            img = self._in_hsv(img, self._scale_saturation)
        if self.hue is not None:
            img = self._in_hsv(img, self._rotate_hue)
        if self.contrast is not None and not self.contrast_first:
            img = _scale_shift_uint8(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class PhotoMetricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion`` (the NRD authors' training pipeline) as a Detectron2
    augmentation: draws a :class:`PhotoMetricTransform`.

    Draws from NumPy's global generator in mmseg's order: brightness on/off (p = 0.5) and
    ``beta ~ U(-brightness_delta, brightness_delta)``; contrast first or last (p = 0.5); then for
    contrast, saturation and hue in the order they run: on/off (p = 0.5) and
    ``alpha ~ U(contrast_range)``, ``s ~ U(saturation_range)``, integer
    ``d ~ U{-hue_delta, ..., hue_delta - 1}`` (``numpy.random.randint``).
    """

    def __init__(
        self,
        *,
        image_format: str,
        brightness_delta: float = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        _check_color_format(image_format)
        self._init(locals())

    @staticmethod
    def _maybe_uniform(low: float, high: float) -> Optional[float]:
        return float(np.random.uniform(low, high)) if np.random.randint(2) else None

    def get_transform(self, image):
        d = self.brightness_delta
        brightness = self._maybe_uniform(-d, d)
        contrast_first = bool(np.random.randint(2))
        contrast = self._maybe_uniform(*self.contrast_range) if contrast_first else None
        saturation = self._maybe_uniform(*self.saturation_range)
        hue = None
        if np.random.randint(2):
            hue = int(np.random.randint(-self.hue_delta, self.hue_delta))
        if not contrast_first:
            contrast = self._maybe_uniform(*self.contrast_range)
        return PhotoMetricTransform(
            image_format=self.image_format,
            brightness=brightness,
            contrast=contrast,
            contrast_first=contrast_first,
            saturation=saturation,
            hue=hue,
        )


def build_photometric_augmentations(cfg):
    """Training photometric distortion: none without ``INPUT.COLOR_AUG``; for
    ``INPUT.COLOR_AUG_TYPE`` "detectron2", brightness, contrast and saturation factors in
    0.8-1.2, each with p = 0.5; for "mmseg", :class:`PhotoMetricDistortion` (the NRD authors')."""
    if not cfg.INPUT.COLOR_AUG:
        return []
    kind, fmt = cfg.INPUT.COLOR_AUG_TYPE, cfg.INPUT.FORMAT
    if kind == "mmseg":
        return [PhotoMetricDistortion(image_format=fmt)]
    if kind == "detectron2":
        return [
            T.RandomApply(T.RandomBrightness(0.8, 1.2), prob=0.5),
            T.RandomApply(T.RandomContrast(0.8, 1.2), prob=0.5),
            T.RandomApply(FormatAwareSaturation(0.8, 1.2, image_format=fmt), prob=0.5),
        ]
    raise ValueError(f"Unknown INPUT.COLOR_AUG_TYPE '{kind}'; expected 'detectron2' or 'mmseg'.")


def _pad_to_divisibility(image, sem_seg, divisibility, ignore_value):
    """Pad CHW ``image`` with 0 and HW ``sem_seg`` with ``ignore_value`` (bottom/right)."""
    h, w = image.shape[-2:]
    pad_h = (-h) % divisibility
    pad_w = (-w) % divisibility
    if pad_h == 0 and pad_w == 0:
        return image, sem_seg
    padding = [0, pad_w, 0, pad_h]
    image = F.pad(image, padding, value=0)
    if sem_seg is not None:
        sem_seg = F.pad(sem_seg, padding, value=ignore_value)
    return image, sem_seg


class SemanticSegDatasetMapper:
    """Map a semantic segmentation dataset dict (``file_name``, ``sem_seg_file_name``) to
    ``{"image": uint8 Tensor[3, H, W], "sem_seg": int64 Tensor[H, W], "height", "width", ...}``.

    When the augmentations start with a ``RandomResizeKeepRatio`` (and a
    ``RandomCrop_CategoryAreaConstraint``), as the training ones do, and ``crop_window_resize`` is
    True, those two are computed on the crop window only (``nrd_rsp.data.crop_resize``): the
    same random draws and labels as resizing the whole image and then cropping, images within
    one grey level. Otherwise (and with ``crop_window_resize=False``, the reference path) the
    whole image is augmented by Detectron2's ``AugmentationList``, with uint8 labels kept uint8
    (resized by PIL, nearest; other label types as float64, resized by ``F.interpolate``).
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        augmentations,
        image_format,
        ignore_label,
        size_divisibility=-1,
        crop_window_resize=True,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        window = crop_window_augmentations(augmentations) if crop_window_resize else None
        if window is not None and image_format in ("RGB", "BGR"):
            self._window = (*window[:2], T.AugmentationList(window[2]))
        else:
            self._window = None
        mode = "train" if is_train else "test"
        logging.getLogger(__name__).info(
            f"[SemanticSegDatasetMapper] {mode} augmentations: {augmentations}"
            + (" (resize and crop on the crop window)" if self._window else "")
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if is_train:
            lo, hi = cfg.INPUT.RESIZE_SCALE_RANGE
            base = tuple(cfg.INPUT.RESIZE_BASE_SIZE)
            augs = [RandomResizeKeepRatio(min_scale=lo, max_scale=hi, base_size=base)]
            if cfg.INPUT.CROP.ENABLED:
                augs.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    )
                )
            augs.append(T.RandomFlip())
            augs.extend(build_photometric_augmentations(cfg))
            size_divisibility = cfg.INPUT.SIZE_DIVISIBILITY
        else:
            augs = [
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
            ]
            size_divisibility = -1
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": size_divisibility,
        }

    def _read_and_augment(self, dataset_dict):
        """Image (HWC) and label (HW or None) after all augmentations."""
        file_name = dataset_dict["file_name"]
        if self._window is not None and "sem_seg_file_name" in dataset_dict:
            resize, crop, rest = self._window
            image, sem_seg = map_crop_window(dataset_dict, self.image_format, resize, crop)
            augmentations = rest
        else:
            image = read_image_checked(file_name, self.image_format)
            check_image_size_or_skip(dataset_dict, image)
            sem_seg = None
            if "sem_seg_file_name" in dataset_dict:
                label_file = dataset_dict.pop("sem_seg_file_name")
                sem_seg = read_label_checked(label_file, image.shape[:2])
                if sem_seg.dtype != np.uint8:  # Detectron2 resizes only uint8 with PIL
                    sem_seg = sem_seg.astype("double")
            elif self.is_train:
                msg = f"training sample '{file_name}' has no 'sem_seg_file_name'"
                raise BadSampleError(msg, file_name)
            augmentations = self.augmentations
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        apply_augmentations_checked(augmentations, aug_input, file_name)
        return aug_input.image, aug_input.sem_seg

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg = self._read_and_augment(dataset_dict)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg = torch.as_tensor(sem_seg.astype("long"))
        if self.size_divisibility > 0:
            image, sem_seg = _pad_to_divisibility(
                image, sem_seg, self.size_divisibility, self.ignore_label
            )

        dataset_dict["image"] = image
        if sem_seg is not None:
            dataset_dict["sem_seg"] = sem_seg
        dataset_dict.pop("annotations", None)  # semantic models need no instance annotations
        return dataset_dict


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` whose image and semantic label are read with
    ``read_image_checked`` / ``read_label_checked`` (``BadSampleError`` naming the file instead
    of a PIL error deep in a worker, or a silently misaligned label). Label PNGs are read as
    stored (Detectron2 converts them to luminance ``L``, which turns palette indices into grey
    levels); otherwise ``__call__`` follows ``DatasetMapper.__call__``."""

    def _read_and_augment(self, dataset_dict):
        """Image, label (or None) and transforms; a leading ``ResizeShortestEdge`` is applied to
        the image as read by PIL (``crop_resize.map_resize_first``: the same pixels)."""
        first = resize_first_augmentations(self.augmentations.augs, self.image_format)
        if first is not None:
            return map_resize_first(dataset_dict, self.image_format, *first)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        check_image_size_or_skip(dataset_dict, image)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = read_label_checked(dataset_dict.pop("sem_seg_file_name"), image.shape[:2])
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        file_name = dataset_dict["file_name"]
        transforms = apply_augmentations_checked(self.augmentations, aug_input, file_name)
        return aug_input.image, aug_input.sem_seg, transforms

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg_gt, transforms = self._read_and_augment(dataset_dict)

        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


class PanopticFPNDatasetMapper(CheckedDatasetMapper):
    """Detectron2's ``DatasetMapper`` for the Panoptic FPN format (semantic "stuff" PNG where 0
    marks thing pixels, plus instance annotations with masks), with photometric distortion
    (``build_photometric_augmentations``) on top of its resize/flip/crop augmentations, and
    checked reading (``CheckedDatasetMapper``)."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = list(ret["augmentations"]) + build_photometric_augmentations(cfg)
        return ret


def build_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME`` (None: Detectron2's default)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "sem_seg":
        return SemanticSegDatasetMapper(cfg, True)
    if name == "panoptic_fpn":
        return PanopticFPNDatasetMapper(cfg, True)
    if name in ("", "default"):
        return None
    raise ValueError(
        f"Unknown INPUT.DATASET_MAPPER_NAME '{name}'; expected 'sem_seg', 'panoptic_fpn' or ''."
    )


def build_test_mapper(cfg):
    """The evaluation mapper: Detectron2's test-time ``DatasetMapper`` with checked reading, so a
    corrupt test image stops evaluation with a ``BadSampleError`` naming the file."""
    return CheckedDatasetMapper(cfg, False)
