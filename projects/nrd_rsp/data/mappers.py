"""Training mappers: dataset dict -> model input.

* ``SemanticSegDatasetMapper``: random resize over a scale range of a base size, absolute crop with
  a cap on the area of a single category, flip, photometric distortion, padding to a size
  divisibility. Used for Cityscapes / ADE20K / PASCAL Context / toy semantic data.
* ``PanopticFPNDatasetMapper``: Detectron2's ``DatasetMapper`` (semantic "stuff" PNG + instance
  annotations, the Panoptic FPN format) with optional photometric distortion.
* ``CheckedDatasetMapper``: Detectron2's ``DatasetMapper`` with checked reading; the test mapper.

All of them read through ``nrd_rsp.data.robust``: an unreadable/corrupt image or label, an image
whose size differs from the dataset dict's, or a label whose size differs from its image raises
``BadSampleError`` naming the file (skipped in training by ``ResumableMapDataset``). Grayscale,
RGBA and palette images are converted by PIL to ``INPUT.FORMAT`` (alpha dropped, palette looked
up); palette label PNGs give their indices.

``build_train_mapper(cfg)`` picks one from ``INPUT.DATASET_MAPPER_NAME``.
"""
import copy
import logging

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .robust import BadSampleError, check_image_size_or_skip, read_image_checked, read_label_checked

__all__ = [
    "SemanticSegDatasetMapper",
    "CheckedDatasetMapper",
    "PanopticFPNDatasetMapper",
    "build_photometric_augmentations",
    "build_train_mapper",
    "build_test_mapper",
]


def build_photometric_augmentations(cfg):
    """Brightness, contrast and saturation jitter (each applied with probability 0.5)."""
    if not cfg.INPUT.COLOR_AUG:
        return []
    return [
        T.RandomApply(T.RandomBrightness(0.8, 1.2), prob=0.5),
        T.RandomApply(T.RandomContrast(0.8, 1.2), prob=0.5),
        T.RandomApply(T.RandomSaturation(0.8, 1.2), prob=0.5),
    ]


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
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility=-1):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logging.getLogger(__name__).info(
            f"[SemanticSegDatasetMapper] {'train' if is_train else 'test'} augmentations: {augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if is_train:
            lo, hi = cfg.INPUT.RESIZE_SCALE_RANGE
            base_h, base_w = cfg.INPUT.RESIZE_BASE_SIZE
            augs = [T.ResizeScale(min_scale=lo, max_scale=hi, target_height=base_h, target_width=base_w)]
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
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
            size_divisibility = -1
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": size_divisibility,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        check_image_size_or_skip(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            label_file = dataset_dict.pop("sem_seg_file_name")
            sem_seg = read_label_checked(label_file, image.shape[:2]).astype("double")
        elif self.is_train:
            raise BadSampleError(
                f"training sample '{dataset_dict['file_name']}' has no 'sem_seg_file_name'", dataset_dict["file_name"]
            )

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg

        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg = torch.as_tensor(sem_seg.astype("long"))
        if self.size_divisibility > 0:
            image, sem_seg = _pad_to_divisibility(image, sem_seg, self.size_divisibility, self.ignore_label)

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

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        check_image_size_or_skip(dataset_dict, image)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = read_label_checked(dataset_dict.pop("sem_seg_file_name"), image.shape[:2])

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg

        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


class PanopticFPNDatasetMapper(CheckedDatasetMapper):
    """Detectron2's ``DatasetMapper`` for the Panoptic FPN format (semantic "stuff" PNG where 0 marks
    thing pixels, plus instance annotations with masks), with photometric distortion on top of its
    resize/flip/crop augmentations, and checked reading (``CheckedDatasetMapper``)."""

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
