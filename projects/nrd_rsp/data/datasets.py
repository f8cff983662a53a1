"""Dataset registration and dataset path checks of nrd_rsp.

Registered here (at import):

* the built-in toy data, generated on first use by :mod:`nrd_rsp.data.toy` under
  ``$DETECTRON2_DATASETS/toy`` (default ``./datasets/toy``):

  - ``toy_panoptic_{train,val}``: standard COCO panoptic format (like ``coco_2017_val_panoptic``),
    the PQ ground truth;
  - ``toy_panoptic_{train,val}_separated``: the Panoptic FPN format (like
    ``coco_2017_val_panoptic_separated``): COCO instances + stuff semantic PNGs, plus
    ``pan_seg_file_name`` / ``segments_info``;
  - ``toy_sem_seg_{train,val}``: 8-class semantic segmentation.

* PASCAL Context: ``pascal_context_59_sem_seg_{train,val}`` (59 classes, background ignored)
  and ``pascal_context_60_sem_seg_{train,val}`` (background = class 0).

COCO panoptic, Cityscapes and ADE20K use Detectron2's own registrations (``detectron2.data``).
See ``datasets/README.md`` for the expected directory trees.

:func:`check_dataset_available` turns a missing dataset directory into one clear
:class:`DatasetNotFoundError` before any loader runs; for toy names it generates the data.
"""

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json, merge_to_panoptic

__all__ = [
    "DatasetNotFoundError",
    "check_dataset_available",
    "datasets_root",
    "ToyParams",
    "TOY_DATASET_NAMES",
    "TOY_DEFAULTS",
    "TOY_GENERATOR_VERSION",
    "TOY_CATEGORIES",
    "TOY_SEM_SEG_CLASSES",
    "TOY_STUFF_CLASSES_SEPARATED",
    "TOY_THING_CLASSES",
    "TOY_THIN_CLASSES",
    "toy_dataset_dir",
    "toy_split_paths",
    "register_toy_datasets",
    "configure_toy_datasets_from_cfg",
    "PASCAL_CONTEXT_59_CLASSES",
    "register_pascal_context",
    "stuff_id_map",
    "panoptic_to_stuff_semantic",
]

logger = logging.getLogger(__name__)

README_HINT = "datasets/README.md"


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``, relative to the working directory), read
    at call time, like Detectron2's builtin registration does at import."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


# ----------------------------------------------------------------------------------------------
# Panoptic -> "separated" stuff semantic labels (shared by the toy generator and
# datasets/prepare_panoptic_fpn.py).
# ----------------------------------------------------------------------------------------------
def stuff_id_map(categories: Sequence[dict]) -> Dict[int, int]:
    """Map COCO panoptic category ids to Panoptic FPN stuff labels.

    Detectron2's convention (``_get_coco_panoptic_separated_meta``): every thing category -> 0,
    the stuff categories -> 1..K in the order they are listed, void (segment id 0) -> 255.

    Args:
        categories: the ``categories`` of a COCO panoptic JSON (dicts with ``id``, ``isthing``).
    Returns:
        dict category id -> uint8 label; key 0 stands for void.
    """
    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    if len(stuff_ids) > 254:
        raise ValueError(f"{len(stuff_ids)} stuff categories do not fit into uint8 labels")
    id_map = {c["id"]: 0 for c in categories if c["isthing"]}
    id_map.update({cid: i + 1 for i, cid in enumerate(stuff_ids)})
    id_map[0] = 255
    return id_map


def panoptic_to_stuff_semantic(
    panoptic_rgb: np.ndarray, segments_info: Sequence[dict], id_map: Dict[int, int]
) -> np.ndarray:
    """Convert one COCO panoptic PNG to the stuff label map Panoptic FPN trains on.

    Args:
        panoptic_rgb: (H, W, 3) uint8, segment id = R + 256 G + 256^2 B (panopticapi ``id2rgb``).
        segments_info: the image's ``segments_info`` (``id``, ``category_id`` = dataset id).
        id_map: from :func:`stuff_id_map`.
    Returns:
        (H, W) uint8: 0 = thing pixels, 1..K = stuff classes, 255 = void / unlabeled.
    """
    from panopticapi.utils import rgb2id

    pan = rgb2id(np.asarray(panoptic_rgb, dtype=np.uint32))
    out = np.full(pan.shape, 255, dtype=np.uint8)
    for seg in segments_info:
        out[pan == seg["id"]] = id_map[seg["category_id"]]
    return out


def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


# ----------------------------------------------------------------------------------------------
# Dataset path checks
# ----------------------------------------------------------------------------------------------
class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's files are not where its metadata says they are."""


# metadata keys that hold paths, in the order they are checked
_PATH_KEYS = (
    "image_root",
    "image_dir",
    "gt_dir",
    "panoptic_root",
    "panoptic_json",
    "gt_json",
    "sem_seg_root",
    "json_file",
    "dirname",
)

# (dataset name prefix, metadata key or None for any key, how to create it)
_PREPARE_HINTS = (
    ("coco_", "sem_seg_root", "create it with `python datasets/prepare_panoptic_fpn.py`"),
    ("ade20k_", "sem_seg_root", "create it with `python datasets/prepare_ade20k_sem_seg.py`"),
    ("pascal_context_", None, "create it with `python datasets/prepare_pascal_context.py`"),
    ("cityscapes_", "gt_dir", "Cityscapes needs gtFine + leftImg8bit"),
)


def _missing_error(dataset_name: str, key: str, path: str, problem: str, hint: str = ""):
    env = os.getenv("DETECTRON2_DATASETS")
    env_txt = f"'{env}'" if env is not None else "unset, i.e. './datasets'"
    if not hint:
        for prefix, hint_key, text in _PREPARE_HINTS:
            if dataset_name.startswith(prefix) and hint_key in (None, key):
                hint = text
                break
    hint = f" ({hint})" if hint else ""
    return DatasetNotFoundError(
        f"Dataset '{dataset_name}' is not available: {problem} '{path}' (metadata '{key}'){hint}. "
        f"Datasets are read from $DETECTRON2_DATASETS (now {env_txt}); see {README_HINT} "
        "for the expected directory tree and the preparation commands."
    )


def check_dataset_available(dataset_name: str) -> None:
    """Fail early, with one clear message, if a registered dataset's files are missing.

    Checks every path in the dataset's metadata (``image_root``/``image_dir``, ``gt_dir``,
    ``sem_seg_root``, ``panoptic_root``, ``panoptic_json``, ``json_file``, ...): directories must
    exist and not be empty, files must exist. Cityscapes semantic ground truth must also contain
    the ``*_labelTrainIds.png`` files made by ``datasets/prepare_cityscapes.py``. Works for
    Detectron2's builtin datasets as well as ours. For the toy names it generates the data
    (with the parameters they are registered with) instead.

    Raises:
        KeyError: the name is not registered.
        DatasetNotFoundError: (a FileNotFoundError) naming the missing path.
    """
    if dataset_name in TOY_DATASET_NAMES:
        _sync_toy_registration(ensure=True)
        return
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{dataset_name}' is not registered. Import nrd_rsp to register the toy "
            f"and PASCAL Context datasets; see {README_HINT}."
        )
    meta = MetadataCatalog.get(dataset_name)
    keys = [k for k in _PATH_KEYS if isinstance(meta.get(k, None), str)]
    if "panoptic_json" in keys and "sem_seg_root" not in keys and "json_file" in keys:
        keys.remove("json_file")  # the standard panoptic format does not need instances
    for key in keys:
        path = meta.get(key)
        if "://" in path:  # remote (PathManager) paths are not checked
            continue
        if key.endswith("json") or key == "json_file":
            if not os.path.isfile(path):
                raise _missing_error(dataset_name, key, path, "missing file")
        elif not os.path.isdir(path):
            raise _missing_error(dataset_name, key, path, "missing directory")
        elif not os.listdir(path):
            raise _missing_error(dataset_name, key, path, "empty directory")
    if meta.get("evaluator_type", None) == "cityscapes_sem_seg" and "gt_dir" in keys:
        pattern = os.path.join(meta.gt_dir, "*", "*_labelTrainIds.png")
        if next(glob.iglob(pattern), None) is None:
            raise _missing_error(
                dataset_name,
                "gt_dir",
                meta.gt_dir,
                "no *_labelTrainIds.png in",
                "create them with `python datasets/prepare_cityscapes.py`",
            )


# ----------------------------------------------------------------------------------------------
# Toy data: categories and metadata
# ----------------------------------------------------------------------------------------------
# Listing order = contiguous order of the standard panoptic metadata = toy_sem_seg label order.
# Dataset ids are COCO-style: things 1-3, stuff 4-8. "color" is for visualisation only; the
# rendering colours live in nrd_rsp.data.toy.
TOY_CATEGORIES: List[dict] = [
    {"id": 4, "name": "road", "isthing": 0, "color": [128, 64, 128], "supercategory": "stuff"},
    {"id": 5, "name": "grass", "isthing": 0, "color": [107, 142, 35], "supercategory": "stuff"},
    {"id": 6, "name": "wall", "isthing": 0, "color": [102, 102, 156], "supercategory": "stuff"},
    {"id": 7, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "stuff"},
    {"id": 8, "name": "pole", "isthing": 0, "color": [250, 170, 30], "supercategory": "stuff"},
    {"id": 1, "name": "disk", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "box", "isthing": 1, "color": [0, 0, 142], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [119, 11, 32], "supercategory": "shape"},
]
TOY_SEM_SEG_CLASSES = [c["name"] for c in TOY_CATEGORIES]
TOY_THING_CLASSES = [
    c["name"] for c in sorted(TOY_CATEGORIES, key=lambda c: c["id"]) if c["isthing"]
]
TOY_STUFF_CLASSES_SEPARATED = ["things"] + [c["name"] for c in TOY_CATEGORIES if not c["isthing"]]
TOY_THIN_CLASSES = ["pole"]
_TOY_THINGS_COLOR = [82, 18, 128]  # same as Detectron2's COCO "things" colour

TOY_DATASET_NAMES = tuple(
    f"toy_{kind}_{split}" for kind in ("panoptic", "sem_seg") for split in ("train", "val")
) + ("toy_panoptic_train_separated", "toy_panoptic_val_separated")

# Bump when the generator's output changes, so that old generated data is not reused.
TOY_GENERATOR_VERSION = 2
TOY_DEFAULTS = dict(num_train=200, num_val=40, image_size=(128, 160), seed=0)


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


@dataclass(frozen=True)
class ToyParams:
    """Parameters of one generated toy dataset; ``tag`` names its directory."""

    num_train: int = 200
    num_val: int = 40
    image_size: Tuple[int, int] = (128, 160)  # (H, W)
    seed: int = 0

    def __post_init__(self):
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        for field in ("num_train", "num_val", "seed"):
            value = getattr(self, field)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"toy dataset: {field} must be an integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(
                f"toy dataset: need at least 1 train and 1 val image, got "
                f"num_train={self.num_train}, num_val={self.num_val}"
            )
        if len(size) != 2 or not all(48 <= s <= 4096 for s in size):
            raise ValueError(
                f"toy dataset: image_size must be (H, W) with 48 <= H, W <= 4096, got {size}"
            )
        if self.seed < 0:
            raise ValueError(f"toy dataset: seed must be >= 0, got {self.seed}")

    @property
    def tag(self) -> str:
        h, w = self.image_size
        return f"v{TOY_GENERATOR_VERSION}_n{self.num_train}-{self.num_val}_{h}x{w}_seed{self.seed}"

    def to_json(self) -> dict:
        return {
            "generator_version": TOY_GENERATOR_VERSION,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "image_size": list(self.image_size),
            "seed": self.seed,
        }


def toy_dataset_dir(params: ToyParams, root: Optional[str] = None) -> str:
    """Absolute directory of the toy dataset with ``params``: ``<root>/toy/<params.tag>``.
    ``root`` defaults to ``$DETECTRON2_DATASETS`` read now."""
    return os.path.abspath(
        os.path.join(root if root is not None else datasets_root(), "toy", params.tag)
    )


def toy_split_paths(dataset_dir: str, split: str) -> Dict[str, str]:
    """Files of one split of a generated toy dataset (layout in datasets/README.md)."""
    return {
        "image_root": os.path.join(dataset_dir, "images", split),
        "panoptic_root": os.path.join(dataset_dir, "panoptic", split),
        "panoptic_json": os.path.join(dataset_dir, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(dataset_dir, "annotations", f"instances_{split}.json"),
        "sem_seg_stuff_root": os.path.join(dataset_dir, "panoptic_stuff", split),
        "sem_seg_root": os.path.join(dataset_dir, "sem_seg", split),
    }


# What the toy names are registered with: params, the root argument (None = follow
# $DETECTRON2_DATASETS) and the dataset directory the metadata points to.
_TOY_STATE: dict = {"params": None, "root": None, "dataset_dir": None}


def register_toy_datasets(
    num_train: int = TOY_DEFAULTS["num_train"],
    num_val: int = TOY_DEFAULTS["num_val"],
    image_size: Sequence[int] = TOY_DEFAULTS["image_size"],
    seed: int = TOY_DEFAULTS["seed"],
    root: Optional[str] = None,
) -> str:
    """(Re-)register the six toy names for these generation parameters.

    Nothing is generated here: the data is generated on the first ``DatasetCatalog.get`` of any
    toy name (or by :func:`check_dataset_available` / ``nrd_rsp.data.toy.ensure_toy_dataset``).
    Old catalog entries are removed first. A no-op when nothing changed.

    Args:
        num_train, num_val: number of images per split.
        image_size: (H, W).
        seed: generation seed; each image is drawn from ``(seed, split, index)``.
        root: datasets root; None follows ``$DETECTRON2_DATASETS`` (re-read whenever a toy
            dataset is loaded, so that metadata and files always agree).
    Returns:
        the dataset directory ``<root>/toy/<tag>``.
    """
    params = ToyParams(num_train, num_val, tuple(image_size), seed)
    dataset_dir = toy_dataset_dir(params, root)
    state = (params, root, dataset_dir)
    if state == (_TOY_STATE["params"], _TOY_STATE["root"], _TOY_STATE["dataset_dir"]) and all(
        n in DatasetCatalog.list() for n in TOY_DATASET_NAMES
    ):
        return dataset_dir
    for name in TOY_DATASET_NAMES:
        _unregister(name)
    _TOY_STATE.update(params=params, root=root, dataset_dir=dataset_dir)

    common = {"ignore_label": 255, "thin_classes": list(TOY_THIN_CLASSES)}
    for split in ("train", "val"):
        p = toy_split_paths(dataset_dir, split)
        name = f"toy_panoptic_{split}"
        DatasetCatalog.register(name, lambda s=split: _load_toy_panoptic(s))
        MetadataCatalog.get(name).set(
            image_root=p["image_root"],
            panoptic_root=p["panoptic_root"],
            panoptic_json=p["panoptic_json"],
            json_file=p["instances_json"],
            evaluator_type="coco_panoptic_seg",
            label_divisor=1000,
            **common,
            **_toy_standard_meta(),
        )
        name = f"toy_panoptic_{split}_separated"
        DatasetCatalog.register(name, lambda s=split: _load_toy_separated(s))
        MetadataCatalog.get(name).set(
            image_root=p["image_root"],
            panoptic_root=p["panoptic_root"],
            panoptic_json=p["panoptic_json"],
            sem_seg_root=p["sem_seg_stuff_root"],
            json_file=p["instances_json"],
            evaluator_type="coco_panoptic_seg",
            **common,
            **_toy_separated_meta(),
        )
        name = f"toy_sem_seg_{split}"
        DatasetCatalog.register(name, lambda s=split: _load_toy_sem_seg(s))
        MetadataCatalog.get(name).set(
            image_root=p["image_root"],
            sem_seg_root=p["sem_seg_root"],
            evaluator_type="sem_seg",
            **common,
            **_toy_sem_seg_meta(),
        )
    return dataset_dir


def configure_toy_datasets_from_cfg(cfg) -> str:
    """Register the toy names with ``cfg.DATASETS.TOY.{NUM_TRAIN,NUM_VAL,IMAGE_SIZE,SEED}``.
    Call after loading the config; a no-op when the parameters did not change."""
    toy = cfg.DATASETS.TOY
    return register_toy_datasets(
        num_train=toy.NUM_TRAIN,
        num_val=toy.NUM_VAL,
        image_size=tuple(toy.IMAGE_SIZE),
        seed=toy.SEED,
    )


def _sync_toy_registration(ensure: bool) -> str:
    """Re-register if $DETECTRON2_DATASETS moved since registration (root=None), then generate
    the data if ``ensure``. Returns the dataset directory."""
    params, root = _TOY_STATE["params"], _TOY_STATE["root"]
    if params is None:
        params = ToyParams(**TOY_DEFAULTS)
    if _TOY_STATE["dataset_dir"] != toy_dataset_dir(params, root) or not all(
        n in DatasetCatalog.list() for n in TOY_DATASET_NAMES
    ):
        register_toy_datasets(
            params.num_train, params.num_val, params.image_size, params.seed, root
        )
    if ensure:
        from .toy import ensure_toy_dataset

        ensure_toy_dataset(params.num_train, params.num_val, params.image_size, params.seed, root)
    return _TOY_STATE["dataset_dir"]


def _load_toy_panoptic(split: str) -> List[dict]:
    p = toy_split_paths(_sync_toy_registration(ensure=True), split)
    dicts = load_coco_panoptic_json(
        p["panoptic_json"], p["image_root"], p["panoptic_root"], _toy_standard_meta()
    )
    return _add_image_sizes(dicts, p["panoptic_json"])


def _load_toy_separated(split: str) -> List[dict]:
    p = toy_split_paths(_sync_toy_registration(ensure=True), split)
    name = f"toy_panoptic_{split}_separated"
    dicts = merge_to_panoptic(
        load_coco_json(p["instances_json"], p["image_root"], name),
        load_sem_seg(p["sem_seg_stuff_root"], p["image_root"], gt_ext="png", image_ext="jpg"),
    )
    panoptic = load_coco_panoptic_json(
        p["panoptic_json"], p["image_root"], p["panoptic_root"], _toy_separated_meta()
    )
    return merge_to_panoptic(dicts, panoptic)


def _load_toy_sem_seg(split: str) -> List[dict]:
    p = toy_split_paths(_sync_toy_registration(ensure=True), split)
    dicts = load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="jpg")
    return _add_image_sizes(dicts, None, size=_TOY_STATE["params"].image_size)


def _add_image_sizes(dicts: List[dict], panoptic_json: Optional[str], size=None) -> List[dict]:
    """Add ``height``/``width`` (which Detectron2's mappers check images against)."""
    if size is not None:
        for d in dicts:
            d["height"], d["width"] = size
        return dicts
    with open(panoptic_json) as f:
        sizes = {img["id"]: (img["height"], img["width"]) for img in json.load(f)["images"]}
    for d in dicts:
        d["height"], d["width"] = sizes[d["image_id"]]
    return dicts


# ----------------------------------------------------------------------------------------------
# PASCAL Context
# ----------------------------------------------------------------------------------------------
# The 59 most frequent classes (Mottaghi et al. CVPR 2014), alphabetical = ascending id in the
# official 459-class labels.txt; the list used by mmsegmentation / Mask2Former.
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]  # fmt: skip


def _voc_colormap(n: int) -> List[List[int]]:
    """The PASCAL VOC label colour map (bit-interleaved), entries 0..n-1."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def register_pascal_context(root: Optional[str] = None) -> None:
    """Register ``pascal_context_{59,60}_sem_seg_{train,val}`` under ``<root>/pascal_context``.

    Layout (made by ``datasets/prepare_pascal_context.py``)::

        pascal_context/images/{train,val}/*.jpg
        pascal_context/annotations_ctx59/{train,val}/*.png   # 0..58, 255 = background/ignore
        pascal_context/annotations_ctx60/{train,val}/*.png   # 0 = background, 1..59
    """
    base = os.path.join(root if root is not None else datasets_root(), "pascal_context")
    colors = _voc_colormap(60)
    variants = {
        59: (list(PASCAL_CONTEXT_59_CLASSES), colors[1:]),
        60: (["background"] + PASCAL_CONTEXT_59_CLASSES, colors),
    }
    for n, (classes, class_colors) in variants.items():
        for split in ("train", "val"):
            name = f"pascal_context_{n}_sem_seg_{split}"
            image_dir = os.path.join(base, "images", split)
            gt_dir = os.path.join(base, f"annotations_ctx{n}", split)
            _unregister(name)
            DatasetCatalog.register(
                name,
                lambda x=image_dir, y=gt_dir: load_sem_seg(y, x, gt_ext="png", image_ext="jpg"),
            )
            MetadataCatalog.get(name).set(
                stuff_classes=list(classes),
                stuff_colors=[list(c) for c in class_colors],
                image_root=image_dir,
                sem_seg_root=gt_dir,
                evaluator_type="sem_seg",
                ignore_label=255,
            )


register_toy_datasets()
register_pascal_context()
