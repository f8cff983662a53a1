"""Tiny stand-ins of Cityscapes, COCO panoptic, ADE20K and PASCAL Context, in the on-disk layout of
their official downloads (before ``datasets/prepare_*.py``), for tests of the real-data paths.

Each ``write_*(root)`` writes under ``root`` (the role of ``$DETECTRON2_DATASETS``), from a fixed
seed, in well under a second (plus importing detectron2 for the COCO categories):

* Cityscapes: ``gtFine/<split>/<city>/*_gtFine_polygons.json`` with real label names (group labels
  such as ``cargroup``, void labels such as ``out of roi`` and ``license plate``, several ``car``
  and ``person`` instances so that iIoU means something), rendered to ``labelIds``, ``color`` and
  ``instanceIds`` PNGs by cityscapesscripts' ``json2labelImg`` / ``json2instanceImg``, as the
  release was made; ``leftImg8bit`` PNGs of 128x256 (Cityscapes' 1:2).
* COCO: ``train2017``/``val2017`` JPEGs of 96x128 and 128x96, panoptic PNGs (ids from
  panopticapi's ``IdGenerator``, some void pixels) and ``panoptic_*`` / ``instances_*`` JSONs with
  all 133 categories; non-crowd things are polygons whose rasterisation is exactly their panoptic
  segment (no overlaps). Each split has a crowd region (uncompressed RLE), an image without
  things and a greyscale JPEG.
* ADE20K: ``ADEChallengeData2016/{images,annotations}/{training,validation}``, labels 0..150
  (0 = other), landscape and portrait images.
* PASCAL Context: VOC2010 ``JPEGImages``, ``ImageSets/Main/{train,val}.txt``, ``trainval/<id>.mat``
  (uint16 ``LabelMap``, 1-based into the 459 classes; 0 = unlabeled, also classes outside the 59)
  and ``labels.txt`` / ``59_labels.txt`` next to ``trainval/``.

``prepare_all(root)`` runs the project's preparation scripts on such a root; ``registered_at(root)``
points the builtin dataset names at it. ``REGISTERED_SIZES`` gives the expected dataset lengths.
"""

import contextlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
from PIL import Image

__all__ = [
    "CITYSCAPES_CITIES",
    "CITYSCAPES_IMAGE_SIZE",
    "COCO_IMAGES",
    "ADE20K_IMAGES",
    "PASCAL_CONTEXT_IMAGES",
    "PASCAL_CONTEXT_LABELS",
    "REGISTERED_SIZES",
    "PREPARE_SCRIPTS",
    "write_cityscapes",
    "write_coco_panoptic",
    "write_ade20k",
    "write_pascal_context",
    "write_all",
    "prepare_all",
    "registered_at",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240

# ---------------------------------------------------------------------------------------------
# Split contents
# ---------------------------------------------------------------------------------------------
# city of each image; the frame number is the image's index
CITYSCAPES_CITIES = {"train": ("aachen", "aachen", "bochum"), "val": ("frankfurt", "lindau")}
CITYSCAPES_IMAGE_SIZE = (128, 256)  # (H, W)

# (image id, (H, W), greyscale, stuff categories top to bottom, things (crowd ones end in "*"))
COCO_IMAGES = {
    "train": (
        (9, (96, 128), False, ("sky-other-merged", "tree-merged", "grass-merged"),
         ("person", "person", "dog")),
        (25, (128, 96), False, ("wall-other-merged", "floor-other-merged"),
         ("chair", "bottle", "cat")),
        (30, (96, 128), False, ("sky-other-merged", "building-other-merged", "road"),
         ("car", "car", "bicycle", "person*")),
        (34, (128, 96), True, ("sky-other-merged", "sea", "sand"), ()),
    ),
    "val": (
        (139, (96, 128), False, ("sky-other-merged", "grass-merged", "road"),
         ("person", "person", "car", "dog", "person*")),
        (285, (128, 96), True, ("wall-other-merged", "floor-other-merged"), ("cat", "bottle")),
        (632, (96, 128), False, ("sky-other-merged", "mountain-merged", "sea"), ()),
    ),
}  # fmt: skip

# (H, W) of each image; the file number is the index + 1
ADE20K_IMAGES = {
    "train": ((96, 128), (128, 96), (80, 120)),
    "val": ((96, 128), (128, 96)),
}
# 1-based ADE20K ids used for background bands and for objects
_ADE_BANDS = ((3, 2, 7), (6, 1, 4), (17, 5, 10), (3, 22, 12))  # sky/building/road, ...
_ADE_OBJECTS = (13, 20, 21, 15, 24, 150, 18, 8)  # person, chair, car, door, sofa, flag, ...

# (VOC image id, (H, W))
PASCAL_CONTEXT_IMAGES = {
    "train": (("2008_000002", (96, 128)), ("2008_000003", (128, 96)), ("2010_000038", (90, 120))),
    "val": (("2008_000009", (96, 128)), ("2010_000001", (128, 96))),
}
# labels.txt of the stand-in: the 59 benchmark classes and some others (id: name of the release)
PASCAL_CONTEXT_LABELS = {
    1: "accordion", 2: "aeroplane", 3: "air conditioner", 4: "antenna", 9: "bag", 10: "ball",
    13: "barrel", 17: "bathtub", 18: "bed", 19: "bedclothes", 22: "bench", 23: "bicycle",
    25: "bird", 31: "boat", 33: "book", 34: "bottle", 37: "box", 40: "bridge", 44: "building",
    45: "bus", 46: "cabinet", 59: "car", 65: "cat", 68: "ceiling", 72: "chair", 80: "cloth",
    85: "computer", 98: "cow", 104: "cup", 105: "curtain", 113: "dog", 115: "door",
    144: "fence", 158: "floor", 159: "flower", 162: "food", 187: "grass", 189: "ground",
    207: "horse", 220: "keyboard", 232: "light", 258: "motorbike", 259: "mountain",
    260: "mouse", 284: "person", 295: "plate", 296: "platform", 308: "pottedplant",
    324: "road", 326: "rock", 347: "sheep", 349: "shelves", 354: "sidewalk", 355: "sign",
    360: "sky", 366: "snow", 368: "sofa", 397: "table", 415: "track", 416: "train",
    420: "tree", 424: "truck", 427: "tvmonitor", 440: "wall", 445: "water", 454: "window",
    458: "wood",
}  # fmt: skip
_PC_BANDS = ((360, 44, 324), (440, 158), (360, 259, 445), (68, 440, 158), (360, 420, 187))
_PC_OBJECTS = (284, 59, 113, 72, 427, 308, 37, 40, 17, 13)  # the last four are not in the 59

# registered dataset name -> number of dicts, once prepared and registered (train 3/4, val 2/3)
REGISTERED_SIZES = {}
for _s in ("train", "val"):
    REGISTERED_SIZES.update({
        f"cityscapes_fine_sem_seg_{_s}": len(CITYSCAPES_CITIES[_s]),
        f"coco_2017_{_s}_panoptic_separated": len(COCO_IMAGES[_s]),
        f"coco_2017_{_s}_panoptic": len(COCO_IMAGES[_s]),
        f"ade20k_sem_seg_{_s}": len(ADE20K_IMAGES[_s]),
        f"pascal_context_59_sem_seg_{_s}": len(PASCAL_CONTEXT_IMAGES[_s]),
        f"pascal_context_60_sem_seg_{_s}": len(PASCAL_CONTEXT_IMAGES[_s]),
    })  # fmt: skip


def _noisy(rgb, rng, amount=12):
    noise = rng.randint(-amount, amount + 1, size=rgb.shape)
    return np.clip(rgb.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def _band_map(rng, h, w, n):
    """(H, W) int map of ``n`` horizontal bands (0 = top) with wavy borders, and the borders."""
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    band = np.zeros((h, w), dtype=np.int64)
    border = np.zeros((h, w), dtype=bool)
    for j in range(1, n):
        base = h * (j / n + rng.uniform(-0.06, 0.06))
        edge = base + 3 * np.sin(2 * np.pi * xs / rng.uniform(30, 60) + rng.uniform(0, 6))
        band += ys >= edge
        border |= ys == np.round(edge)
    return band, border


def _blob(rng, cx, cy, rx, ry, k=8):
    """A star-shaped polygon around (cx, cy) as [(x, y), ...] (floats)."""
    angles = 2 * np.pi * (np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k
    radius = rng.uniform(0.75, 1.0, k)
    return [(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radius)]


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------
def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _cityscapes_objects(rng, h, w, index):
    """``(label, polygon)`` in drawing order, like the objects of a gtFine polygons.json."""
    hz = int(h * rng.uniform(0.38, 0.45))  # horizon
    objs = [
        ("sky", _rect(0, 0, w - 1, hz + 4)),
        ("building", [[0, 10], [int(0.3 * w), 18], [int(0.3 * w), hz + 6], [0, hz + 6]]),
        ("building", [[w - 1, 6], [int(0.72 * w), 14], [int(0.72 * w), hz + 6], [w - 1, hz + 6]]),
        ("vegetation", [[int(x), int(y)] for x, y in _blob(rng, 0.5 * w, hz - 8, 28, 12)]),
        ("road", _rect(0, hz, w - 1, h - 1)),
        ("sidewalk", [[0, hz + 4], [int(0.28 * w), hz + 4], [0, int(0.8 * h)]]),
        ("sidewalk", [[w - 1, hz + 4], [int(0.72 * w), hz + 4], [w - 1, int(0.8 * h)]]),
        ("terrain", _rect(w - 40, hz + 6, w - 20, hz + 12)),
        ("static", _rect(6, hz + 8, 18, hz + 16)),
    ]
    px = int(rng.uniform(0.12, 0.2) * w)
    objs += [
        ("pole", _rect(px, hz - 34, px + 2, hz + 18)),
        ("traffic sign", _rect(px - 4, hz - 40, px + 6, hz - 32)),
        ("cargroup", _rect(int(0.44 * w), hz - 4, int(0.56 * w), hz + 4)),
        ("persongroup", _rect(int(0.62 * w), hz - 10, int(0.68 * w), hz + 2)),
    ]
    for k, x in enumerate((0.28, 0.5, 0.66)):  # three cars, the later ones occlude
        x0 = int((x + rng.uniform(-0.03, 0.03)) * w)
        y0 = hz + 8 + 6 * k
        car = [[x0, y0 + 10], [x0 + 6, y0 + 2], [x0 + 22, y0], [x0 + 36, y0 + 3],
               [x0 + 42, y0 + 10], [x0 + 42, y0 + 22], [x0, y0 + 22]]  # fmt: skip
        objs.append(("car", car))
        if k == 0:
            objs.append(("license plate", _rect(x0 + 16, y0 + 16, x0 + 26, y0 + 19)))
    for x in (0.2, 0.86) if index % 2 == 0 else (0.22, 0.8, 0.9):  # persons
        x0 = int((x + rng.uniform(-0.02, 0.02)) * w)
        y0 = hz - 4 + int(rng.uniform(0, 6))
        objs.append(("person", [[x0 + 2, y0], [x0 + 6, y0], [x0 + 8, y0 + 26], [x0, y0 + 26]]))
    if index % 2 == 1:  # a cyclist
        x0 = int(0.4 * w)
        objs.append(("bicycle", _rect(x0, hz + 30, x0 + 16, hz + 40)))
        rider = [[x0 + 5, hz + 12], [x0 + 10, hz + 12], [x0 + 11, hz + 31], [x0 + 4, hz + 31]]
        objs.append(("rider", rider))
    objs += [
        (
            "ego vehicle",
            [
                [0, h - 1],
                [0, h - 10],
                [int(0.3 * w), h - 15],
                [int(0.7 * w), h - 15],
                [w - 1, h - 10],
                [w - 1, h - 1],
            ],
        ),  # fmt: skip
        # a frame around the image: outer ring, then the inner one (as in the release)
        (
            "out of roi",
            [
                [0, 0],
                [w - 1, 0],
                [w - 1, h - 1],
                [0, h - 1],
                [0, 0],
                [2, 2],
                [2, h - 3],
                [w - 3, h - 3],
                [w - 3, 2],
                [2, 2],
            ],
        ),  # fmt: skip
    ]
    return objs


def write_cityscapes(root: str) -> None:
    """``cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` (polygons, labelIds, instanceIds,
    color from cityscapesscripts; no labelTrainIds, which prepare_cityscapes.py makes)."""
    from cityscapesscripts.preparation.json2instanceImg import json2instanceImg
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    h, w = CITYSCAPES_IMAGE_SIZE
    rng = np.random.RandomState(SEED)
    base = os.path.join(root, "cityscapes")
    for split, cities in CITYSCAPES_CITIES.items():
        for i, city in enumerate(cities):
            stem = f"{city}_000000_{19 + 10 * i:06d}"
            img_dir = os.path.join(base, "leftImg8bit", split, city)
            gt_dir = os.path.join(base, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            gt = os.path.join(gt_dir, stem + "_gtFine_")
            objs = _cityscapes_objects(rng, h, w, i)
            ann = {"imgHeight": h, "imgWidth": w,
                   "objects": [{"label": lab, "polygon": poly} for lab, poly in objs]}  # fmt: skip
            with open(gt + "polygons.json", "w") as f:
                json.dump(ann, f, indent=4)
            json2labelImg(gt + "polygons.json", gt + "labelIds.png", "ids")
            json2labelImg(gt + "polygons.json", gt + "color.png", "color")
            with warnings.catch_warnings():  # Pillow 12 on the 16-bit PNG; the release has them
                warnings.filterwarnings("ignore", "Saving I mode images as PNG", DeprecationWarning)
                json2instanceImg(gt + "polygons.json", gt + "instanceIds.png", "ids")
            with Image.open(gt + "color.png") as im:
                rgb = np.asarray(im.convert("RGB"))
            image = os.path.join(img_dir, stem + "_leftImg8bit.png")
            Image.fromarray(_noisy(rgb, rng)).save(image)


# ---------------------------------------------------------------------------------------------
# COCO panoptic
# ---------------------------------------------------------------------------------------------
_THING_SUPERCATEGORIES = (  # (last id, name) over the COCO thing id ranges
    (1, "person"), (9, "vehicle"), (15, "outdoor"), (25, "animal"), (33, "accessory"),
    (43, "sports"), (51, "kitchen"), (61, "food"), (70, "furniture"), (77, "electronic"),
    (83, "appliance"), (90, "indoor"),
)  # fmt: skip
_STUFF_SUPERCATEGORIES = {
    "textile": "banner blanket curtain pillow towel rug-merged",
    "building": "bridge house roof tent building-other-merged",
    "raw-material": "cardboard paper-merged",
    "furniture-stuff": "counter door-stuff light mirror-stuff shelf stairs cabinet-merged "
    "table-merged",
    "floor": "floor-wood floor-other-merged",
    "plant": "flower tree-merged grass-merged",
    "food-stuff": "fruit food-other-merged",
    "ground": "gravel platform playingfield railroad road sand snow pavement-merged dirt-merged",
    "structural": "net fence-merged",
    "water": "river sea water-other",
    "wall": "wall-brick wall-stone wall-tile wall-wood wall-other-merged",
    "window": "window-blind window-other",
    "ceiling": "ceiling-merged",
    "sky": "sky-other-merged",
    "solid": "mountain-merged rock-merged",
}


def _coco_categories():
    """All 133 panoptic categories (Detectron2's ``COCO_CATEGORIES``) with their supercategory."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    stuff_super = {n: s for s, names in _STUFF_SUPERCATEGORIES.items() for n in names.split()}
    cats = []
    for c in COCO_CATEGORIES:
        if c["isthing"]:
            sup = next(name for last, name in _THING_SUPERCATEGORIES if c["id"] <= last)
        else:
            sup = stuff_super[c["name"]]
        cats.append({"supercategory": sup, "isthing": c["isthing"], "id": c["id"],
                     "name": c["name"], "color": list(c["color"])})  # fmt: skip
    return cats


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (used by the release for crowd regions): run lengths over the
    column-major pixels, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _box(mask):
    """[x, y, w, h] of the pixels of ``mask`` (panopticapi's convention)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _coco_scene(rng, h, w, stuff, things, cats_by_name):
    """Panoptic id map and segments: wavy stuff bands with void borders and a void patch, then
    disjoint things, each in its own column. Returns (ids, [(segment info, segmentation)]) with
    the instances-JSON segmentation: polygons, an uncompressed RLE (crowd) or None (stuff)."""
    import pycocotools.mask as mask_util
    from panopticapi.utils import IdGenerator

    gen = IdGenerator({c["id"]: c for c in cats_by_name.values()})
    band, border = _band_map(rng, h, w, len(stuff))
    ids = np.zeros((h, w), dtype=np.int64)
    segments = []
    for j, name in enumerate(stuff):
        seg_id = gen.get_id(cats_by_name[name]["id"])
        ids[band == j] = seg_id
        segments.append(
            ({"id": seg_id, "category_id": cats_by_name[name]["id"], "iscrowd": 0}, None)
        )
    ids[border] = 0
    vy, vx = int(rng.uniform(0.05, 0.2) * h), int(rng.uniform(0.05, 0.8) * w)
    ids[vy : vy + 6, vx : vx + 9] = 0  # an unlabeled patch

    cw = w / max(len(things), 1)
    for k, name in enumerate(things):
        crowd = name.endswith("*")
        cat = cats_by_name[name.rstrip("*")]
        x0, x1 = k * cw + 1.5, (k + 1) * cw - 2.5  # 1-px margins keep the columns disjoint
        cx, cy = (x0 + x1) / 2, rng.uniform(0.55, 0.7) * h
        rx, ry = (x1 - x0) / 2, rng.uniform(0.15, 0.25) * h
        if crowd:  # several small blobs, annotated as one RLE region
            polys = [_blob(rng, cx + dx * rx / 2, cy + dy * ry / 2, rx / 2, ry / 2, 6)
                     for dx, dy in ((-1, -1), (1, -0.5), (0, 1))]  # fmt: skip
        else:
            polys = [_blob(rng, cx, cy, rx, ry, 9)]
        polys = [[round(float(v), 2) for x, y in p for v in (np.clip(x, x0, x1), y)] for p in polys]
        rle = mask_util.merge(mask_util.frPyObjects(polys, h, w))
        mask = mask_util.decode(rle).astype(bool)
        if not mask.any() or np.isin(ids[mask], [s["id"] for s, _ in segments[len(stuff) :]]).any():
            raise AssertionError(f"stand-in thing {name} is empty or overlaps another thing")
        seg_id = gen.get_id(cat["id"])
        ids[mask] = seg_id
        info = {"id": seg_id, "category_id": cat["id"], "iscrowd": int(crowd)}
        segments.append((info, _uncompressed_rle(mask) if crowd else polys))
    for info, _ in segments:
        m = ids == info["id"]
        info.update(bbox=_box(m), area=int(m.sum()))
    return ids, segments


def write_coco_panoptic(root: str) -> None:
    """``coco/{train2017,val2017}/*.jpg``, ``coco/panoptic_{train,val}2017/*.png`` and
    ``coco/annotations/{instances,panoptic}_{train,val}2017.json``."""
    from panopticapi.utils import id2rgb

    cats = _coco_categories()
    by_name = {c["name"]: c for c in cats}
    colors = {c["id"]: c["color"] for c in cats}
    base = os.path.join(root, "coco")
    info = {"description": "COCO 2017 Dataset (test stand-in)", "url": "http://cocodataset.org",
            "version": "1.0", "year": 2017, "contributor": "COCO Consortium",
            "date_created": "2017/09/01"}  # fmt: skip
    licenses = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4,
                 "name": "Attribution License"}]  # fmt: skip
    rng = np.random.RandomState(SEED + 1)
    state = np.random.get_state()  # IdGenerator draws thing colours from the global RNG
    np.random.seed(SEED + 1)
    try:
        ann_id = 1
        for split, images in COCO_IMAGES.items():
            name = f"{split}2017"
            for d in (name, f"panoptic_{name}", "annotations"):
                os.makedirs(os.path.join(base, d), exist_ok=True)
            img_entries, pan_anns, inst_anns = [], [], []
            for image_id, (h, w), grey, stuff, things in images:
                stem = f"{image_id:012d}"
                ids, segments = _coco_scene(rng, h, w, stuff, things, by_name)
                Image.fromarray(id2rgb(ids)).save(
                    os.path.join(base, f"panoptic_{name}", stem + ".png")
                )
                rgb = np.zeros((h, w, 3), dtype=np.uint8)
                for seg, _ in segments:
                    rgb[ids == seg["id"]] = colors[seg["category_id"]]
                image = Image.fromarray(_noisy(rgb, rng))
                image = image.convert("L") if grey else image
                image.save(os.path.join(base, name, stem + ".jpg"), quality=90)
                img_entries.append({
                    "license": 4, "file_name": stem + ".jpg",
                    "coco_url": f"http://images.cocodataset.org/{name}/{stem}.jpg",
                    "height": h, "width": w, "date_captured": "2013-11-14 11:18:45",
                    "flickr_url": "", "id": image_id,
                })  # fmt: skip
                pan_anns.append({"segments_info": [s for s, _ in segments],
                                 "file_name": stem + ".png", "image_id": image_id})  # fmt: skip
                for seg, segm in segments:
                    if segm is None:  # stuff
                        continue
                    inst_anns.append({
                        "segmentation": segm, "area": float(seg["area"]), "iscrowd": seg["iscrowd"],
                        "image_id": image_id, "bbox": [float(v) for v in seg["bbox"]],
                        "category_id": seg["category_id"], "id": ann_id,
                    })  # fmt: skip
                    ann_id += 1
            common = {"info": info, "licenses": licenses, "images": img_entries}
            things = [
                {k: c[k] for k in ("supercategory", "id", "name")} for c in cats if c["isthing"]
            ]
            for kind, anns, categories in (
                ("instances", inst_anns, things),
                ("panoptic", pan_anns, cats),
            ):
                with open(os.path.join(base, "annotations", f"{kind}_{name}.json"), "w") as f:
                    json.dump(dict(common, annotations=anns, categories=categories), f)
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------------------------------------
# ADE20K and PASCAL Context: label maps of bands and blobs
# ---------------------------------------------------------------------------------------------
def _label_scene(rng, h, w, bands, objects):
    """(H, W) int label map: ``bands`` top to bottom, 3-4 of ``objects`` as polygons, and 0
    (unlabeled) on the band borders and in a small patch."""
    from PIL import ImageDraw

    band, border = _band_map(rng, h, w, len(bands))
    label = np.asarray(bands, dtype=np.int64)[band]
    label[border] = 0
    canvas = Image.fromarray(label.astype(np.int32))  # mode "I"
    draw = ImageDraw.Draw(canvas)
    for value in rng.choice(objects, size=rng.randint(3, 5), replace=False):
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.3, 0.8) * h
        draw.polygon(_blob(rng, cx, cy, 0.12 * w, 0.15 * h), fill=int(value))
    label = np.asarray(canvas, dtype=np.int64).copy()
    y, x = int(rng.uniform(0.05, 0.7) * h), int(rng.uniform(0.05, 0.7) * w)
    label[y : y + 7, x : x + 11] = 0
    return label


def _scene_image(rng, label):
    palette = np.random.RandomState(7).randint(0, 256, size=(int(label.max()) + 1, 3))
    return Image.fromarray(_noisy(palette[label].astype(np.uint8), rng, 20))


def write_ade20k(root: str) -> None:
    """``ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_000000NN.jpg`` and
    ``annotations/...png`` (mode L, 0 = other, 1..150)."""
    rng = np.random.RandomState(SEED + 2)
    base = os.path.join(root, "ADEChallengeData2016")
    for split, folder in (("train", "training"), ("val", "validation")):
        for sub in ("images", "annotations"):
            os.makedirs(os.path.join(base, sub, folder), exist_ok=True)
        for i, (h, w) in enumerate(ADE20K_IMAGES[split]):
            stem = f"ADE_{split}_{i + 1:08d}"
            label = _label_scene(rng, h, w, _ADE_BANDS[i % len(_ADE_BANDS)], _ADE_OBJECTS)
            Image.fromarray(label.astype(np.uint8)).save(  # mode "L"
                os.path.join(base, "annotations", folder, stem + ".png")
            )
            _scene_image(rng, label).save(os.path.join(base, "images", folder, stem + ".jpg"))


def write_pascal_context(root: str) -> None:
    """``VOCdevkit/VOC2010/{JPEGImages/*.jpg, ImageSets/Main/{train,val,trainval}.txt,
    trainval/<id>.mat, labels.txt, 59_labels.txt}`` (the PASCAL Context tarball extracted into
    VOC2010, with the label lists next to ``trainval/``)."""
    import scipy.io

    from nrd_rsp.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

    rng = np.random.RandomState(SEED + 3)
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    for sub in ("JPEGImages", os.path.join("ImageSets", "Main"), "trainval"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    k = 0
    for split, images in PASCAL_CONTEXT_IMAGES.items():
        for image_id, (h, w) in images:
            label = _label_scene(rng, h, w, _PC_BANDS[k % len(_PC_BANDS)], _PC_OBJECTS)
            k += 1
            scipy.io.savemat(os.path.join(voc, "trainval", image_id + ".mat"),
                             {"LabelMap": label.astype(np.uint16)})  # fmt: skip
            _scene_image(rng, label).save(os.path.join(voc, "JPEGImages", image_id + ".jpg"))
    lists = dict(PASCAL_CONTEXT_IMAGES, trainval=sum(PASCAL_CONTEXT_IMAGES.values(), ()))
    for split, images in lists.items():
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.writelines(f"{image_id}\n" for image_id, _ in images)
    with open(os.path.join(voc, "labels.txt"), "w") as f:
        f.writelines(f"{i}: {name}\n" for i, name in sorted(PASCAL_CONTEXT_LABELS.items()))
    ids59 = {n: i for i, n in PASCAL_CONTEXT_LABELS.items() if n in PASCAL_CONTEXT_59_CLASSES}
    with open(os.path.join(voc, "59_labels.txt"), "w") as f:
        f.writelines(f"{ids59[n]}: {n}\n" for n in PASCAL_CONTEXT_59_CLASSES)


# ---------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------
def write_all(root: str) -> None:
    """The four stand-ins under ``root``."""
    write_cityscapes(root)
    write_coco_panoptic(root)
    write_ade20k(root)
    write_pascal_context(root)


PREPARE_SCRIPTS = (
    "prepare_cityscapes.py",
    "prepare_panoptic_fpn.py",
    "prepare_ade20k_sem_seg.py",
    "prepare_pascal_context.py",
)


def prepare_all(root: str) -> dict:
    """Run ``datasets/prepare_*.py --root ROOT --workers 1`` (all four, at once) as a user would.
    Returns {script: CompletedProcess}; raises RuntimeError with the stderr of a failed one."""
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.abspath(root))
    procs = {
        script: subprocess.Popen(
            [sys.executable, os.path.join(REPO, "datasets", script),
             "--root", root, "--workers", "1"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for script in PREPARE_SCRIPTS
    }  # fmt: skip
    done = {}
    try:
        for script, p in procs.items():
            out, err = p.communicate(timeout=300)
            done[script] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for script, res in done.items():
        if res.returncode:
            raise RuntimeError(f"{script} failed with exit status {res.returncode}:\n{res.stderr}")
    return done


@contextlib.contextmanager
def registered_at(root: str):
    """Point the dataset names of four families at ``root`` for the ``with`` block, then put the
    previous catalog entries back (the same objects).

    The names and their metadata are what the registration functions themselves make when run,
    with ``root``, into empty catalogs: Detectron2's ``register_all_coco`` (COCO instances,
    keypoints, panoptic standard/separated/stuffonly), ``register_all_cityscapes``,
    ``register_all_ade20k`` and nrd_rsp's ``register_pascal_context``. Those names replace the
    current entries. Not thread-safe; each pytest-xdist worker is its own process."""
    from unittest import mock

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import builtin

    from nrd_rsp.data.datasets.register_pascal_context import register_pascal_context

    root = os.path.abspath(root)
    catalogs = (DatasetCatalog, MetadataCatalog)
    with contextlib.ExitStack() as scratch:
        for c in catalogs:
            scratch.enter_context(mock.patch.object(c, "data", {}))
        builtin.register_all_coco(root)
        builtin.register_all_cityscapes(root)
        builtin.register_all_ade20k(root)
        register_pascal_context(root)
        fresh = [dict(c.data) for c in catalogs]
    saved = [{n: c.data[n] for n in new if n in c.data} for c, new in zip(catalogs, fresh)]
    for c, new in zip(catalogs, fresh):
        c.data.update(new)
    try:
        yield root
    finally:
        for c, new, old in zip(catalogs, fresh, saved):
            for n in new:
                c.data.pop(n, None)
            c.data.update(old)
