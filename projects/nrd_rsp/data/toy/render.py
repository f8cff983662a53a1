"""Rendering of one toy scene: a deterministic function of a NumPy generator.

Each image has textured stuff regions (sky band, brick walls, grass, a road band or trapezoid),
thin poles / arms / wires 1-3 px wide (the thin class ``pole``, present in every image), and a
few thing instances (disk, box, triangle) of 6 to ~34 px, some overlapping. Colours are
distinctive per class but jittered per image and per instance, with texture, lighting and noise;
30% of the things wear another thing class's colour and 30% of the poles are grey, so that shape
and context matter (per-pixel colour alone gives ~75% mIoU) while a ResNet-18 trained from
scratch for a few hundred iterations still learns the data.

Two options make a harder, high-resolution setting (``ToyParams``): ``max_pole_width=1`` makes every
thin structure 1 px wide, and ``context_stuff`` paints road with the wall's colours and bricks, so
that a brick pixel is wall when it stands on the horizon under the sky and road when it lies in the
grass: the label follows the surroundings, not the texture.

Any change to what this module draws changes the data: bump ``spec.GENERATOR_VERSION`` with it.
"""

from typing import Dict, List, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .spec import TOY_CATEGORIES

__all__ = ["render_toy_image"]

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


def _draw_poles(
    rng, h: int, w: int, horizon: int, max_width: int = 3
) -> List[Tuple[np.ndarray, int]]:
    """Thin structures: 1-3 vertical poles (1 to ``max_width`` px wide) with optional arms (1-2 px,
    1 px when ``max_width`` is 1) and 1 px wires. Returns [(bool mask (H, W), pole index)] one per
    pole incl. its arm / wire."""
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
        width = int(rng.integers(1, max_width + 1))
        top = int(rng.integers(3, max(4, horizon - 4)))
        bottom = int(rng.integers(min(h - 1, horizon + 4), h))
        m[top:bottom, x : x + width] = 1
        if rng.random() < 0.5:  # arm at the top
            length = int(rng.integers(4, 13)) * (1 if rng.random() < 0.5 else -1)
            xm, x1 = x + width // 2, int(np.clip(x + width // 2 + length, 0, w - 1))
            m[top, min(xm, x1) : max(xm, x1) + 1] = 1
            if rng.random() < 0.5 and max_width > 1:
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
    too_wide = cv2.erode(union, np.ones((4, 4), np.uint8)).any()  # keep the class strictly thin
    if max_width == 1:  # no 2x2 block anywhere (where a wire meets an arm, say)
        too_wide = (union[1:, 1:] & union[:-1, 1:] & union[1:, :-1] & union[:-1, :-1]).any()
    if too_wide:
        return _draw_poles(rng, h, w, horizon, max_width)
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


def _paint_stuff(rng, image, sem, horizon, grain, yy, xx, context_stuff=False) -> None:
    """Paint road / grass / wall / sky in place: jittered base colour per image plus a texture
    per class (sky gradient, grass speckle and blotches, road grain, wall bricks). With
    ``context_stuff`` road is painted as wall, with its own draws of colour and brick size."""
    h, w = sem.shape
    for label in ("road", "grass", "wall", "sky"):
        region = sem == _CLS[label]
        if not region.any():
            continue
        name = "wall" if context_stuff and label == "road" else label
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


def render_toy_image(
    rng: np.random.Generator,
    image_size: Tuple[int, int],
    max_pole_width: int = 3,
    context_stuff: bool = False,
):
    """Draw one toy scene (the options: module docstring).

    Returns:
        image: (H, W, 3) uint8 RGB.
        pan: (H, W) int64 panoptic segment ids (stuff: dataset_id * 1000, thing k of a class:
            dataset_id * 1000 + k); every pixel is labelled.
        instances: list of {"category_id", "poly" (flat COCO polygon), "mask" (full shape),
            "segment_id"} for the things visible in ``pan``.
    """
    h, w = image_size
    sem, horizon = _draw_layout(rng, h, w)
    poles = _draw_poles(rng, h, w, horizon, max_pole_width)
    pole_union = np.any([m for m, _ in poles], axis=0)
    things = _place_things(rng, h, w, pole_union)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.standard_normal((h, w), np.float32)  # one noise field; regions are disjoint
    image = np.zeros((h, w, 3), np.float32)
    _paint_stuff(rng, image, sem, horizon, grain, yy, xx, context_stuff)
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
