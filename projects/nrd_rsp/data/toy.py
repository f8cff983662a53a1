"""The built-in toy data: a deterministic generator of small street-like scenes.

Each image has textured stuff regions (sky band, brick walls, grass, a road band or trapezoid),
thin poles / arms / wires 1-3 px wide (the thin class ``pole``, present in every image), and a
few thing instances (disk, box, triangle) of 6 to ~34 px, some overlapping. Colours are
distinctive per class but jittered per image and per instance, with texture, lighting and noise;
30% of the things wear another thing class's colour and 30% of the poles are grey, so that shape
and context matter (per-pixel colour alone gives ~75% mIoU) while a ResNet-18 trained from
scratch for a few hundred iterations still learns the data.

Everything is written in the real formats (see ``datasets/README.md`` for the tree):

* ``images/<split>/*.jpg`` (RGB, JPEG quality 95, no chroma subsampling);
* COCO panoptic: ``panoptic/<split>/*.png`` (segment id = R + 256 G + 256^2 B) and
  ``annotations/panoptic_<split>.json``;
* the Panoptic FPN "separated" files: ``panoptic_stuff/<split>/*.png`` (0 = things, stuff 1..5,
  255 = void), converted from the panoptic PNGs by
  :func:`nrd_rsp.data.datasets.panoptic_to_stuff_semantic` (the same function
  ``datasets/prepare_panoptic_fpn.py`` uses for COCO), and ``annotations/instances_<split>.json``
  (COCO instances with polygons: the full shape outlines, which may overlap, as in COCO; the
  panoptic PNG resolves overlaps by drawing order);
* ``sem_seg/<split>/*.png``: 8 classes [road, grass, wall, sky, pole, disk, box, triangle].

Image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng((seed, s, i))`` only, so the
output is a pure function of the parameters (and the first images do not depend on the counts).

CLI::

    python -m nrd_rsp.data.toy --output DIR --num-train 200 --num-val 40 --image-size 128 160 --seed 0
"""

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from .datasets import (
    TOY_CATEGORIES,
    TOY_DEFAULTS,
    TOY_GENERATOR_VERSION,
    ToyParams,
    configure_toy_datasets_from_cfg,
    panoptic_to_stuff_semantic,
    register_toy_datasets,
    stuff_id_map,
    toy_dataset_dir,
    toy_split_paths,
)

__all__ = [
    "ensure_toy_dataset",
    "generate_toy_dataset",
    "render_toy_image",
    "GENERATOR_VERSION",
    # registration lives in nrd_rsp.data.datasets; re-exported for convenience
    "register_toy_datasets",
    "configure_toy_datasets_from_cfg",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = TOY_GENERATOR_VERSION
_SPLITS = (("train", 0), ("val", 1))

# contiguous ids of the 8-class labels (= order of TOY_CATEGORIES)
_CLS = {c["name"]: i for i, c in enumerate(TOY_CATEGORIES)}
_DATASET_ID = {c["name"]: c["id"] for c in TOY_CATEGORIES}
_THINGS = ("disk", "box", "triangle")

# base rendering colours (RGB); jittered per image (stuff) or per instance (things)
_BASE_RGB = {
    "road": (105, 105, 112),
    "grass": (70, 150, 55),
    "wall": (170, 88, 66),
    "sky": (130, 180, 238),
    "pole": (236, 214, 40),
    "disk": (212, 48, 178),
    "box": (36, 196, 186),
    "triangle": (246, 132, 22),
}
_POLE_GREY_RGB = (226, 226, 214)


# ----------------------------------------------------------------------------------------------
# Rendering of one image
# ----------------------------------------------------------------------------------------------
def _jitter(rng, rgb, amount):
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, size=3).astype(np.float32)


def _draw_layout(rng, h: int, w: int) -> Tuple[np.ndarray, int]:
    """Stuff layout (H, W) int64 of contiguous ids: sky above a horizon, grass below, brick
    walls standing on the horizon, a road (band or perspective trapezoid)."""
    sem = np.full((h, w), _CLS["grass"], dtype=np.int64)
    horizon = int(rng.integers(int(0.3 * h), int(0.55 * h)))
    sem[:horizon] = _CLS["sky"]
    if rng.random() < 0.5:  # perspective road to a vanishing point on the horizon
        xv = rng.uniform(0.3 * w, 0.7 * w)
        xl, xr = rng.uniform(-0.3 * w, 0.3 * w), rng.uniform(0.7 * w, 1.3 * w)
        half_top = rng.uniform(1.0, 0.08 * w)
        pts = np.array([[xv - half_top, horizon], [xv + half_top, horizon], [xr, h], [xl, h]])
        road = np.zeros((h, w), np.uint8)
        cv2.fillPoly(road, [np.round(pts).astype(np.int32)], 1)
        sem[road > 0] = _CLS["road"]
    else:  # horizontal band
        band_h = int(rng.integers(max(6, h // 10), max(7, int(0.35 * h))))
        y0 = int(rng.integers(horizon + 3, max(horizon + 4, h - band_h + 1)))
        sem[y0 : y0 + band_h] = _CLS["road"]
    for _ in range(int(rng.integers(1, 4))):
        ww = int(rng.integers(max(8, w // 10), max(9, w // 2)))
        x0 = int(rng.integers(0, w - ww + 1))
        top = int(rng.integers(int(0.08 * h), max(int(0.08 * h) + 1, horizon - 6)))
        bottom = horizon + int(rng.integers(0, 6))
        sem[top:bottom, x0 : x0 + ww] = _CLS["wall"]
    return sem, horizon


def _draw_poles(rng, h: int, w: int, horizon: int) -> List[Tuple[np.ndarray, int]]:
    """Thin structures: 1-3 vertical poles (1-3 px wide) with optional arms (1-2 px) and 1 px
    wires. Returns [(bool mask (H, W), pole index)] one per pole incl. its arm / wire."""
    n = int(rng.integers(1, 4))
    xs: List[int] = []
    for _ in range(50):  # poles at least 8 px apart
        if len(xs) == n:
            break
        x = int(rng.integers(3, w - 6))
        if all(abs(x - o) >= 8 for o in xs):
            xs.append(x)
    poles = []
    tops = []
    for x in xs:
        m = np.zeros((h, w), np.uint8)
        width = int(rng.integers(1, 4))
        top = int(rng.integers(3, max(4, horizon - 4)))
        bottom = int(rng.integers(min(h - 1, horizon + 4), h))
        m[top:bottom, x : x + width] = 1
        if rng.random() < 0.5:  # arm at the top
            length = int(rng.integers(4, 13)) * (1 if rng.random() < 0.5 else -1)
            xm, x1 = x + width // 2, int(np.clip(x + width // 2 + length, 0, w - 1))
            m[top, min(xm, x1) : max(xm, x1) + 1] = 1
            if rng.random() < 0.5:
                m[top + 1, min(xm, x1) : max(xm, x1) + 1] = 1  # 2 px arm
        poles.append(m)
        tops.append((x + width // 2, top))
    if len(tops) >= 2 and rng.random() < 0.6:  # a sagging 1 px wire between two pole tops
        (xa, ya), (xb, yb) = tops[0], tops[1]
        sag = int(rng.integers(2, 8))
        mid = ((xa + xb) // 2, min(h - 1, max(ya, yb) + sag))
        cv2.line(poles[0], (xa, ya), mid, 1, 1)
        cv2.line(poles[0], mid, (xb, yb), 1, 1)
    union = np.clip(sum(poles), 0, 1).astype(np.uint8)
    if cv2.erode(union, np.ones((4, 4), np.uint8)).any():  # keep the class strictly thin
        return _draw_poles(rng, h, w, horizon)
    return [(p.astype(bool), i) for i, p in enumerate(poles)]


def _shape_polygon(rng, kind: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Polygon (K, 2) in pixel coordinates (x, y) for a disk / box / triangle of ``size``."""
    if kind == "disk":
        r = size / 2
        k = max(12, int(2 * np.pi * r / 1.5))
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if kind == "box":
        bw, bh = size * rng.uniform(0.6, 1.0), size * rng.uniform(0.6, 1.0)
        a = np.deg2rad(rng.uniform(-30, 30)) if rng.random() < 0.5 else 0.0
        corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return corners @ rot.T + [cx, cy]
    t = rng.uniform(0, 2 * np.pi) + np.deg2rad([0, 120, 240] + rng.uniform(-20, 20, 3))
    r = size / 2 * rng.uniform(0.85, 1.1, 3)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rasterize(poly_flat: List[float], h: int, w: int) -> np.ndarray:
    """Rasterise a COCO polygon exactly as Detectron2 does (pycocotools); bool (H, W)."""
    rle = mask_util.merge(mask_util.frPyObjects([poly_flat], h, w))
    return mask_util.decode(rle).astype(bool)


def _place_things(rng, h: int, w: int, pole_union: np.ndarray) -> List[dict]:
    """Sample 3-6 things, drawn in order (later on top). Each keeps >= 50% of its pixels
    visible and the poles keep >= 50% of theirs. Returns dicts with kind, poly, full mask."""
    things: List[dict] = []
    pole_area = pole_union.sum()
    covered = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(3, 7))):
        kind = _THINGS[int(rng.integers(0, 3))]
        for _attempt in range(20):
            scale = max(1.0, min(h, w) / 128)  # default 128x160: 12-34 px large things
            size = (
                rng.uniform(6, 10)
                if rng.random() < 0.3
                else rng.uniform(12 * scale, min(34 * scale, 0.3 * min(h, w)))
            )
            if things and rng.random() < 0.35:  # overlap a previous instance on purpose
                ref = things[int(rng.integers(0, len(things)))]["center"]
                dist, angle = rng.uniform(0.4, 0.8) * size, rng.uniform(0, 2 * np.pi)
                cx, cy = ref[0] + dist * np.cos(angle), ref[1] + dist * np.sin(angle)
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            poly = _shape_polygon(rng, kind, cx, cy, size)
            lo, hi = poly.min(0), poly.max(0)
            if lo[0] < 0.5 or lo[1] < 0.5 or hi[0] > w - 0.5 or hi[1] > h - 0.5:
                continue
            flat = [round(float(v), 2) for v in poly.reshape(-1)]
            mask = _rasterize(flat, h, w)
            if mask.sum() < 12:
                continue
            ok = all((t["visible"] & ~mask).sum() >= max(10, 0.5 * t["mask"].sum()) for t in things)
            ok = ok and (pole_union & ~(covered | mask)).sum() >= 0.5 * pole_area
            if ok:
                for t in things:
                    t["visible"] &= ~mask
                covered |= mask
                things.append(
                    {
                        "kind": kind,
                        "poly": flat,
                        "mask": mask,
                        "visible": mask.copy(),
                        "center": (cx, cy),
                    }
                )
                break
    return things


def _paint_stuff(rng, image, sem, horizon, grain, yy, xx) -> None:
    """Paint road / grass / wall / sky in place: jittered base colour per image plus a texture
    per class (sky gradient, grass speckle and blotches, road grain, wall bricks)."""
    h, w = sem.shape
    for name in ("road", "grass", "wall", "sky"):
        region = sem == _CLS[name]
        if not region.any():
            continue
        base = _jitter(rng, _BASE_RGB[name], 28)
        g, y, x = grain[region], yy[region], xx[region]
        if name == "sky":  # brighter towards the horizon
            tex = (y / max(horizon, 1) * rng.uniform(10, 30) + 5 * g)[:, None]
        elif name == "grass":  # green speckle + blotches
            blot = cv2.resize(
                rng.standard_normal((max(h // 8, 2), max(w // 8, 2)), np.float32), (w, h)
            )
            tex = (20 * g)[:, None] * np.array([0.5, 1.0, 0.4], np.float32) + 12 * blot[region][
                :, None
            ]
        elif name == "road":  # fine grain
            tex = (13 * g)[:, None]
        else:  # brick pattern: dark mortar rows and staggered joints
            bh, bw = int(rng.integers(5, 8)), int(rng.integers(10, 15))
            row = (y // bh).astype(np.int64)
            mortar = (y % bh == 0) | (((x + (row % 2) * (bw // 2)) % bw) == 0)
            tex = (9 * g - mortar * rng.uniform(35, 55))[:, None]
        image[region] = base + tex


def _paint_thing(rng, image, mask, kind, center, grain, yy, xx) -> None:
    """Paint one instance in place: jittered colour (the class colour for 70% of the instances,
    another thing class's for the rest, so that shape matters), linear shading, noise."""
    if rng.random() >= 0.7:
        kind = _THINGS[(_THINGS.index(kind) + int(rng.integers(1, 3))) % 3]
    base = _jitter(rng, _BASE_RGB[kind], 30)
    a = rng.uniform(0, 2 * np.pi)
    shade = ((xx[mask] - center[0]) * np.cos(a) + (yy[mask] - center[1]) * np.sin(a)) * rng.uniform(
        0.5, 1.5
    )
    image[mask] = base + (np.clip(shade, -25, 25) + 6 * grain[mask])[:, None]


def render_toy_image(rng: np.random.Generator, image_size: Tuple[int, int]):
    """Draw one toy scene.

    Returns:
        image: (H, W, 3) uint8 RGB.
        pan: (H, W) int64 panoptic segment ids (stuff: dataset_id * 1000, thing k of a class:
            dataset_id * 1000 + k); every pixel is labelled.
        instances: list of {"category_id", "poly" (flat COCO polygon), "mask" (full shape),
            "segment_id"} for the things visible in ``pan``.
    """
    h, w = image_size
    sem, horizon = _draw_layout(rng, h, w)
    poles = _draw_poles(rng, h, w, horizon)
    pole_union = np.any([m for m, _ in poles], axis=0)
    things = _place_things(rng, h, w, pole_union)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.standard_normal((h, w), np.float32)  # one noise field; regions are disjoint
    image = np.zeros((h, w, 3), np.float32)
    _paint_stuff(rng, image, sem, horizon, grain, yy, xx)
    for m, _ in poles:  # yellow, or light grey for 30% of the poles
        rgb = _BASE_RGB["pole"] if rng.random() < 0.7 else _POLE_GREY_RGB
        image[m] = _jitter(rng, rgb, 22) + 5 * grain[m][:, None]
    sem[pole_union] = _CLS["pole"]

    pan = np.zeros((h, w), np.int64)
    for name in ("road", "grass", "wall", "sky", "pole"):
        pan[sem == _CLS[name]] = _DATASET_ID[name] * 1000
    counts: Dict[str, int] = {}
    instances = []
    for t in things:
        _paint_thing(rng, image, t["mask"], t["kind"], t["center"], grain, yy, xx)
        counts[t["kind"]] = counts.get(t["kind"], 0) + 1
        seg_id = _DATASET_ID[t["kind"]] * 1000 + counts[t["kind"]]
        pan[t["mask"]] = seg_id  # later instances are on top
        instances.append(
            {
                "category_id": _DATASET_ID[t["kind"]],
                "poly": t["poly"],
                "mask": t["mask"],
                "segment_id": seg_id,
            }
        )
    # per-image lighting: colour cast, brightness; sensor noise
    image = image * rng.uniform(0.85, 1.15, 3).astype(np.float32) + rng.uniform(-15, 15)
    image += 6 * rng.standard_normal((h, w, 3), np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    visible = set(np.unique(pan).tolist())
    instances = [i for i in instances if i["segment_id"] in visible]
    return image, pan, instances


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


# ----------------------------------------------------------------------------------------------
# Writing a dataset
# ----------------------------------------------------------------------------------------------
def generate_toy_dataset(output_dir: str, params: ToyParams, progress: bool = True) -> None:
    """Write the toy dataset with ``params`` into ``output_dir`` (created; must be empty).
    ``params.json`` is written last."""
    from panopticapi.utils import id2rgb

    id_map = stuff_id_map(TOY_CATEGORIES)
    categories = [dict(c) for c in TOY_CATEGORIES]
    h, w = params.image_size
    os.makedirs(os.path.join(output_dir, "annotations"), exist_ok=True)
    total = params.num_train + params.num_val
    bar = tqdm(total=total, desc="Generating toy dataset", unit="img", disable=not progress)
    for split, split_code in _SPLITS:
        paths = toy_split_paths(output_dir, split)
        for key in ("image_root", "panoptic_root", "sem_seg_stuff_root", "sem_seg_root"):
            os.makedirs(paths[key], exist_ok=True)
        images, pan_anns, inst_anns = [], [], []
        n = params.num_train if split == "train" else params.num_val
        for idx in range(n):
            rng = np.random.default_rng([params.seed, split_code, idx])
            image, pan, instances = render_toy_image(rng, (h, w))
            stem = f"{idx:06d}"
            images.append({"id": idx, "file_name": stem + ".jpg", "height": h, "width": w})
            Image.fromarray(image).save(
                os.path.join(paths["image_root"], stem + ".jpg"), quality=95, subsampling=0
            )
            segments = []
            for seg_id in np.unique(pan).tolist():
                m = pan == seg_id
                segments.append(
                    {
                        "id": int(seg_id),
                        "category_id": int(seg_id // 1000),
                        "area": int(m.sum()),
                        "bbox": _bbox_xywh(m),
                        "iscrowd": 0,
                    }
                )
            pan_rgb = id2rgb(pan)
            Image.fromarray(pan_rgb).save(os.path.join(paths["panoptic_root"], stem + ".png"))
            pan_anns.append(
                {"image_id": idx, "file_name": stem + ".png", "segments_info": segments}
            )
            stuff = panoptic_to_stuff_semantic(pan_rgb, segments, id_map)
            Image.fromarray(stuff).save(os.path.join(paths["sem_seg_stuff_root"], stem + ".png"))
            sem = np.zeros((h, w), np.uint8)
            for seg in segments:
                sem[pan == seg["id"]] = _CLS_OF_DATASET_ID[seg["category_id"]]
            Image.fromarray(sem).save(os.path.join(paths["sem_seg_root"], stem + ".png"))
            for inst in instances:
                rle = mask_util.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
                inst_anns.append(
                    {
                        "id": len(inst_anns) + 1,
                        "image_id": idx,
                        "category_id": inst["category_id"],
                        "segmentation": [inst["poly"]],
                        "area": float(mask_util.area(rle)),
                        "bbox": [float(v) for v in mask_util.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
            bar.update(1)
        info = {
            "description": "nrd_rsp toy data",
            "version": str(GENERATOR_VERSION),
            **params.to_json(),
        }
        _write_json(
            paths["panoptic_json"],
            {"info": info, "images": images, "annotations": pan_anns, "categories": categories},
        )
        thing_cats = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
        _write_json(
            paths["instances_json"],
            {"info": info, "images": images, "annotations": inst_anns, "categories": thing_cats},
        )
    bar.close()
    _write_json(os.path.join(output_dir, "params.json"), params.to_json())


_CLS_OF_DATASET_ID = {c["id"]: i for i, c in enumerate(TOY_CATEGORIES)}


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _is_complete(dataset_dir: str, params: ToyParams) -> bool:
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
        if os.path.lexists(dataset_dir) and not _is_complete(dataset_dir, params):
            logger.warning(f"Removing incomplete or mismatching toy data at {dataset_dir}")
            shutil.rmtree(dataset_dir)
        try:
            os.rename(tmp, dataset_dir)
        except OSError as e:  # another process (without a working lock) was faster
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not _is_complete(
                dataset_dir, params
            ):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_toy_dataset(
    num_train: int = TOY_DEFAULTS["num_train"],
    num_val: int = TOY_DEFAULTS["num_val"],
    image_size: Sequence[int] = TOY_DEFAULTS["image_size"],
    seed: int = TOY_DEFAULTS["seed"],
    root: Optional[str] = None,
) -> str:
    """Generate the toy dataset under ``<root>/toy/<tag>`` unless it is already there.

    Safe for concurrent processes (a file lock around the generation, generated into a temp
    dir and atomically renamed). ``root`` defaults to ``$DETECTRON2_DATASETS`` read now.

    Returns:
        the dataset directory.
    """
    params = ToyParams(num_train, num_val, tuple(image_size), seed)
    dataset_dir = toy_dataset_dir(params, root)
    if _is_complete(dataset_dir, params):
        return dataset_dir
    os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
    with _file_lock(dataset_dir + ".lock"):
        if not _is_complete(dataset_dir, params):
            logger.info(f"Generating the toy dataset {params.tag} into {dataset_dir} ...")
            _generate_atomically(dataset_dir, params)
    return dataset_dir


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _OneLineParser(
        prog="python -m nrd_rsp.data.toy",
        description="Generate the nrd_rsp toy dataset (COCO panoptic + Panoptic FPN + semantic "
        "formats). Without --output it goes where training looks for it: "
        "$DETECTRON2_DATASETS/toy/<tag>.",
    )
    parser.add_argument("--output", help="dataset directory to write (must not exist or be empty)")
    parser.add_argument("--num-train", type=int, default=TOY_DEFAULTS["num_train"])
    parser.add_argument("--num-val", type=int, default=TOY_DEFAULTS["num_val"])
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=list(TOY_DEFAULTS["image_size"]),
    )
    parser.add_argument("--seed", type=int, default=TOY_DEFAULTS["seed"])
    args = parser.parse_args(argv)
    try:
        params = ToyParams(args.num_train, args.num_val, tuple(args.image_size), args.seed)
    except ValueError as e:
        parser.error(str(e))
    if args.output is None:
        out = ensure_toy_dataset(params.num_train, params.num_val, params.image_size, params.seed)
    else:
        out = os.path.abspath(args.output)
        if _is_complete(out, params):
            print(f"{out} already holds this toy dataset")
            return 0
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            parser.error(f"--output {out} exists and is not an empty directory")
        try:
            if os.path.isdir(out):
                os.rmdir(out)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with _file_lock(out.rstrip(os.sep) + ".lock"):
                _generate_atomically(out, params)
        except OSError as e:
            parser.error(f"cannot write {out}: {e}")
        finally:
            with contextlib.suppress(OSError):
                os.remove(out.rstrip(os.sep) + ".lock")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
