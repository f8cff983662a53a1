"""Writing a toy dataset: every split in the real formats, safely for concurrent processes.

Everything is written in the real formats (see ``datasets/README.md`` for the tree):

* ``images/<split>/*.jpg`` (RGB, JPEG quality 95, no chroma subsampling);
* COCO panoptic: ``panoptic/<split>/*.png`` (segment id = R + 256 G + 256^2 B) and
  ``annotations/panoptic_<split>.json``;
* the Panoptic FPN "separated" files: ``panoptic_stuff/<split>/*.png`` (0 = things, stuff 1..5,
  255 = void), converted from the panoptic PNGs by
  :func:`nrd_rsp.data.panoptic_separated.panoptic_to_stuff_semantic` (the same function
  ``datasets/prepare_panoptic_fpn.py`` uses for COCO), and ``annotations/instances_<split>.json``
  (COCO instances with polygons: the full shape outlines, which may overlap, as in COCO; the
  panoptic PNG resolves overlaps by drawing order);
* ``sem_seg/<split>/*.png``: 8 classes [road, grass, wall, sky, pole, disk, box, triangle].

Image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng((seed, s, i))`` only, so the
output is a pure function of the parameters (and the first images do not depend on the counts).
``params.json`` is written last: a directory holding it with the same parameters is complete.
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from typing import List

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..panoptic_separated import panoptic_to_stuff_semantic, stuff_id_map
from .render import render_toy_image
from .spec import GENERATOR_VERSION, TOY_CATEGORIES, ToyParams, toy_dataset_dir, toy_split_paths

__all__ = [
    "ensure_toy_dataset",
    "generate_toy_dataset",
    "generate_toy_dataset_once",
    "is_toy_dataset_complete",
]

logger = logging.getLogger(__name__)

_SPLITS = (("train", 0), ("val", 1))
_STUFF_ID_MAP = stuff_id_map(TOY_CATEGORIES)
_CLS_OF_DATASET_ID = {c["id"]: i for i, c in enumerate(TOY_CATEGORIES)}


def generate_toy_dataset(output_dir: str, params: ToyParams, progress: bool = True) -> None:
    """Write the toy dataset with ``params`` into ``output_dir`` (created; must be empty).
    ``params.json`` is written last."""
    os.makedirs(os.path.join(output_dir, "annotations"), exist_ok=True)
    total = params.num_train + params.num_val
    bar = tqdm(total=total, desc="Generating toy dataset", unit="img", disable=not progress)
    for split, split_code in _SPLITS:
        _write_split(output_dir, split, split_code, params, bar)
    bar.close()
    _write_json(os.path.join(output_dir, "params.json"), params.to_json())


def _write_split(output_dir: str, split: str, split_code: int, params: ToyParams, bar) -> None:
    """Render and write the images of one split, then its two JSON files."""
    paths = toy_split_paths(output_dir, split)
    for key in ("image_root", "panoptic_root", "sem_seg_stuff_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    h, w = params.image_size
    images, pan_anns, inst_anns = [], [], []
    n = params.num_train if split == "train" else params.num_val
    for idx in range(n):
        rng = np.random.default_rng([params.seed, split_code, idx])
        image, pan, instances = render_toy_image(
            rng, (h, w), max_pole_width=params.max_pole_width, context_stuff=params.context_stuff
        )
        stem = f"{idx:06d}"
        images.append({"id": idx, "file_name": stem + ".jpg", "height": h, "width": w})
        pan_anns.append(_write_sample(paths, stem, idx, image, pan))
        inst_anns += _instance_annotations(instances, idx, first_id=len(inst_anns) + 1)
        bar.update(1)
    info = {
        "description": "nrd_rsp toy data",
        "version": str(GENERATOR_VERSION),
        **params.to_json(),
    }
    categories = [dict(c) for c in TOY_CATEGORIES]
    _write_json(
        paths["panoptic_json"],
        {"info": info, "images": images, "annotations": pan_anns, "categories": categories},
    )
    thing_cats = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    _write_json(
        paths["instances_json"],
        {"info": info, "images": images, "annotations": inst_anns, "categories": thing_cats},
    )


def _write_sample(paths: dict, stem: str, idx: int, image: np.ndarray, pan: np.ndarray) -> dict:
    """Write the image and its three label PNGs (panoptic, separated stuff, 8-class semantic);
    returns its COCO panoptic annotation."""
    from panopticapi.utils import id2rgb

    Image.fromarray(image).save(
        os.path.join(paths["image_root"], stem + ".jpg"), quality=95, subsampling=0
    )
    segments = [_segment_info(pan, seg_id) for seg_id in np.unique(pan).tolist()]
    pan_rgb = id2rgb(pan)
    Image.fromarray(pan_rgb).save(os.path.join(paths["panoptic_root"], stem + ".png"))
    stuff = panoptic_to_stuff_semantic(pan_rgb, segments, _STUFF_ID_MAP)
    Image.fromarray(stuff).save(os.path.join(paths["sem_seg_stuff_root"], stem + ".png"))
    sem = np.zeros(pan.shape, np.uint8)
    for seg in segments:
        sem[pan == seg["id"]] = _CLS_OF_DATASET_ID[seg["category_id"]]
    Image.fromarray(sem).save(os.path.join(paths["sem_seg_root"], stem + ".png"))
    return {"image_id": idx, "file_name": stem + ".png", "segments_info": segments}


def _segment_info(pan: np.ndarray, seg_id: int) -> dict:
    m = pan == seg_id
    return {
        "id": int(seg_id),
        "category_id": int(seg_id // 1000),
        "area": int(m.sum()),
        "bbox": _bbox_xywh(m),
        "iscrowd": 0,
    }


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _instance_annotations(instances: List[dict], image_id: int, first_id: int) -> List[dict]:
    """COCO instance annotations (polygons of the full shapes) numbered from ``first_id``."""
    anns = []
    for k, inst in enumerate(instances):
        rle = mask_util.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": inst["category_id"],
                "segmentation": [inst["poly"]],
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def is_toy_dataset_complete(dataset_dir: str, params: ToyParams) -> bool:
    """Whether ``dataset_dir`` holds the whole toy dataset of ``params`` (its ``params.json``)."""
    try:
        with open(os.path.join(dataset_dir, "params.json")) as f:
            return json.load(f) == params.to_json()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive fcntl lock on ``path`` (blocking). Where the filesystem does not support
    locks it proceeds unlocked: the atomic rename still keeps the result consistent."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            logger.warning(f"Could not lock {path} ({e}); generating without a lock.")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)


def _generate_atomically(dataset_dir: str, params: ToyParams, progress: bool = True) -> None:
    """Generate into a temp dir next to ``dataset_dir`` and rename it into place."""
    parent = os.path.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dataset_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        generate_toy_dataset(tmp, params, progress=progress)
        if os.path.lexists(dataset_dir) and not is_toy_dataset_complete(dataset_dir, params):
            logger.warning(f"Removing incomplete or mismatching toy data at {dataset_dir}")
            shutil.rmtree(dataset_dir)
        try:
            os.rename(tmp, dataset_dir)
        except OSError as e:  # another process (without a working lock) was faster
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not is_toy_dataset_complete(
                dataset_dir, params
            ):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_toy_dataset_once(dataset_dir: str, params: ToyParams) -> None:
    """Generate the toy dataset of ``params`` into ``dataset_dir`` unless it is complete there.

    Safe for concurrent processes: under the file lock ``<dataset_dir>.lock`` (left in place),
    generated into a temp dir next to it and atomically renamed.
    """
    os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
    with _file_lock(dataset_dir + ".lock"):
        if not is_toy_dataset_complete(dataset_dir, params):
            logger.info(f"Generating the toy dataset {params.tag} into {dataset_dir} ...")
            _generate_atomically(dataset_dir, params)


def ensure_toy_dataset(*args, root=None, **fields) -> str:
    """Generate the toy dataset under ``<root>/toy/<tag>`` unless it is already there
    (:func:`generate_toy_dataset_once`: safe for concurrent processes).

    Args:
        args, fields: a :class:`ToyParams`, or its fields (``num_train, num_val, image_size,
            seed``; the missing ones take ToyParams' defaults).
        root: datasets root; None reads ``$DETECTRON2_DATASETS`` now.
    Returns:
        the dataset directory.
    """
    params = ToyParams.of(*args, **fields)
    dataset_dir = toy_dataset_dir(params, root)
    if not is_toy_dataset_complete(dataset_dir, params):
        generate_toy_dataset_once(dataset_dir, params)
    return dataset_dir
