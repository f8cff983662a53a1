"""Registration of the built-in toy data (generated on first use by :mod:`nrd_rsp.data.toy`
under ``$DETECTRON2_DATASETS/toy/<tag>``, default ``./datasets/toy/<tag>``):

* ``toy_panoptic_{train,val}``: standard COCO panoptic format (like ``coco_2017_val_panoptic``),
  the PQ ground truth;
* ``toy_panoptic_{train,val}_separated``: the Panoptic FPN format (like
  ``coco_2017_val_panoptic_separated``): COCO instances + stuff semantic PNGs, plus
  ``pan_seg_file_name`` / ``segments_info``;
* ``toy_sem_seg_{train,val}``: 8-class semantic segmentation.

The :class:`ToyParams` and the datasets root a name is registered with travel in the loader
functions and in its metadata (``toy_params``, ``toy_root``, ``make_available``); Detectron2's
catalogs are the only record of them. Registered at import with ``ToyParams()``.
"""

import functools
import json
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json, merge_to_panoptic

from ...errors import ConfigError
from ..catalog import unregister
from ..toy.spec import (
    TOY_CATEGORIES,
    TOY_DATASET_NAMES,
    TOY_SEM_SEG_CLASSES,
    TOY_THIN_CLASSES,
    ToyParams,
    toy_dataset_dir,
    toy_split_paths,
)
from ..toy.write import ensure_toy_dataset

__all__ = [
    "register_toy_datasets",
    "configure_toy_datasets_from_cfg",
    "toy_params_from_cfg",
    "make_toy_available",
]

_TOY_THINGS_COLOR = [82, 18, 128]  # same as Detectron2's COCO "things" colour


def _toy_standard_meta() -> dict:
    """Like ``_get_builtin_metadata("coco_panoptic_standard")``: contiguous id = listing index."""
    return {
        "thing_classes": [c["name"] for c in TOY_CATEGORIES],
        "thing_colors": [c["color"] for c in TOY_CATEGORIES],
        "stuff_classes": [c["name"] for c in TOY_CATEGORIES],
        "stuff_colors": [c["color"] for c in TOY_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(TOY_CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(TOY_CATEGORIES) if not c["isthing"]
        },
    }


def _toy_separated_meta() -> dict:
    """Like ``_get_coco_panoptic_separated_meta``: things 0..2, stuff 1..5 with 0 = "things"."""
    things = sorted((c for c in TOY_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
    stuff = [c for c in TOY_CATEGORIES if not c["isthing"]]
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [_TOY_THINGS_COLOR] + [c["color"] for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }


def _toy_sem_seg_meta() -> dict:
    return {
        "stuff_classes": list(TOY_SEM_SEG_CLASSES),
        "stuff_colors": [c["color"] for c in TOY_CATEGORIES],
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(TOY_CATEGORIES)},
    }


def register_toy_datasets(*args, root: Optional[str] = None, **fields) -> str:
    """(Re-)register the six toy names for these generation parameters.

    Nothing is generated here: the data is generated on the first ``DatasetCatalog.get`` of any
    toy name (or by ``check_dataset_available`` / :func:`make_toy_available`). Old catalog
    entries are removed first. A no-op when nothing changed.

    Args:
        args, fields: a :class:`ToyParams`, or its fields (``num_train, num_val, image_size,
            seed``; the missing ones take ToyParams' defaults).
        root: datasets root; None follows ``$DETECTRON2_DATASETS`` (re-read whenever a toy
            dataset is loaded, so that metadata and files always agree).
    Returns:
        the dataset directory ``<root>/toy/<tag>``.
    """
    params = ToyParams.of(*args, **fields)
    dataset_dir = toy_dataset_dir(params, root)
    if _is_registered(params, root, dataset_dir):
        return dataset_dir
    for name in TOY_DATASET_NAMES:
        unregister(name)
    for split in ("train", "val"):
        _register_split(split, params, root, dataset_dir)
    return dataset_dir


def _is_registered(params: ToyParams, root: Optional[str], dataset_dir: str) -> bool:
    """Whether every toy name is registered with ``params`` and ``root`` and its metadata points
    into ``dataset_dir`` (it does not when ``$DETECTRON2_DATASETS`` moved since)."""
    for name in TOY_DATASET_NAMES:
        if name not in DatasetCatalog.list() or name not in MetadataCatalog.list():
            return False
        meta = MetadataCatalog.get(name)
        split = "train" if "_train" in name else "val"
        expected = (params, root, toy_split_paths(dataset_dir, split)["image_root"])
        if (meta.get("toy_params"), meta.get("toy_root"), meta.get("image_root")) != expected:
            return False
    return True


def _register_split(split: str, params: ToyParams, root: Optional[str], dataset_dir: str):
    """Register the three toy names of ``split`` with their loaders and metadata."""
    p = toy_split_paths(dataset_dir, split)
    common = {
        "ignore_label": 255,
        "thin_classes": list(TOY_THIN_CLASSES),
        "toy_params": params,
        "toy_root": root,
        "make_available": functools.partial(make_toy_available, params, root),
    }
    panoptic = {
        "image_root": p["image_root"],
        "panoptic_root": p["panoptic_root"],
        "panoptic_json": p["panoptic_json"],
        "json_file": p["instances_json"],
        "evaluator_type": "coco_panoptic_seg",
    }
    sem_seg = {
        "image_root": p["image_root"],
        "sem_seg_root": p["sem_seg_root"],
        "evaluator_type": "sem_seg",
    }
    loaders_and_meta = {
        f"toy_panoptic_{split}": (
            _load_toy_panoptic,
            dict(panoptic, label_divisor=1000, **_toy_standard_meta()),
        ),
        f"toy_panoptic_{split}_separated": (
            _load_toy_separated,
            dict(panoptic, sem_seg_root=p["sem_seg_stuff_root"], **_toy_separated_meta()),
        ),
        f"toy_sem_seg_{split}": (_load_toy_sem_seg, dict(sem_seg, **_toy_sem_seg_meta())),
    }
    for name, (load, meta) in loaders_and_meta.items():
        DatasetCatalog.register(name, functools.partial(load, split, params, root))
        MetadataCatalog.get(name).set(**meta, **common)


def toy_params_from_cfg(cfg) -> ToyParams:
    """``cfg.DATASETS.TOY`` as :class:`ToyParams`.

    Raises:
        ConfigError: a value ToyParams rejects, naming ``DATASETS.TOY``.
    """
    toy = cfg.DATASETS.TOY
    try:
        return ToyParams(
            toy.NUM_TRAIN,
            toy.NUM_VAL,
            tuple(toy.IMAGE_SIZE),
            toy.SEED,
            max_pole_width=toy.MAX_POLE_WIDTH,
            context_stuff=toy.CONTEXT_STUFF,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"DATASETS.TOY: {e}") from e


def configure_toy_datasets_from_cfg(cfg) -> str:
    """Register the toy names with ``cfg.DATASETS.TOY`` (:func:`toy_params_from_cfg`). Call after
    loading the config; a no-op when the parameters did not change. Returns the dataset dir."""
    return register_toy_datasets(toy_params_from_cfg(cfg))


def make_toy_available(params: ToyParams, root: Optional[str] = None) -> str:
    """Re-register if ``$DETECTRON2_DATASETS`` moved since registration (``root`` None), then
    generate the data unless it is there. Returns the dataset directory."""
    register_toy_datasets(params, root=root)
    return ensure_toy_dataset(params, root=root)


def _load_toy_panoptic(split: str, params: ToyParams, root: Optional[str]) -> List[dict]:
    p = toy_split_paths(make_toy_available(params, root), split)
    dicts = load_coco_panoptic_json(
        p["panoptic_json"], p["image_root"], p["panoptic_root"], _toy_standard_meta()
    )
    return _add_image_sizes(dicts, p["panoptic_json"])


def _load_toy_separated(split: str, params: ToyParams, root: Optional[str]) -> List[dict]:
    p = toy_split_paths(make_toy_available(params, root), split)
    name = f"toy_panoptic_{split}_separated"
    dicts = merge_to_panoptic(
        load_coco_json(p["instances_json"], p["image_root"], name),
        load_sem_seg(p["sem_seg_stuff_root"], p["image_root"], gt_ext="png", image_ext="jpg"),
    )
    panoptic = load_coco_panoptic_json(
        p["panoptic_json"], p["image_root"], p["panoptic_root"], _toy_separated_meta()
    )
    return merge_to_panoptic(dicts, panoptic)


def _load_toy_sem_seg(split: str, params: ToyParams, root: Optional[str]) -> List[dict]:
    p = toy_split_paths(make_toy_available(params, root), split)
    dicts = load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="jpg")
    for d in dicts:  # Detectron2's mappers check the images against height / width
        d["height"], d["width"] = params.image_size
    return dicts


def _add_image_sizes(dicts: List[dict], panoptic_json: str) -> List[dict]:
    """Add ``height``/``width`` (which Detectron2's mappers check images against)."""
    with open(panoptic_json) as f:
        sizes = {img["id"]: (img["height"], img["width"]) for img in json.load(f)["images"]}
    for d in dicts:
        d["height"], d["width"] = sizes[d["image_id"]]
    return dicts


register_toy_datasets()
