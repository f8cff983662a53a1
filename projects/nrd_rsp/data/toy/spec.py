"""What the toy data is: its categories, its dataset names, :class:`ToyParams` (the one place
that holds the default generation parameters) and where a parameter set's files go.

A leaf of the toy package: the renderer, the writer, the command line and the registration
(:mod:`nrd_rsp.data.datasets.register_toy`) all import it, and it imports none of them.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..catalog import datasets_root

__all__ = [
    "GENERATOR_VERSION",
    "TOY_CATEGORIES",
    "TOY_DATASET_NAMES",
    "TOY_SEM_SEG_CLASSES",
    "TOY_STUFF_CLASSES_SEPARATED",
    "TOY_THING_CLASSES",
    "TOY_THIN_CLASSES",
    "ToyParams",
    "toy_dataset_dir",
    "toy_split_paths",
]

# Bump when the generator's output changes, so that old generated data is not reused.
GENERATOR_VERSION = 2

# Listing order = contiguous order of the standard panoptic metadata = toy_sem_seg label order.
# Dataset ids are COCO-style: things 1-3, stuff 4-8. "color" is for visualisation only; the
# rendering colours live in nrd_rsp.data.toy.render.
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

TOY_DATASET_NAMES = tuple(
    f"toy_{kind}_{split}" for kind in ("panoptic", "sem_seg") for split in ("train", "val")
) + ("toy_panoptic_train_separated", "toy_panoptic_val_separated")


@dataclass(frozen=True)
class ToyParams:
    """Parameters of one generated toy dataset; ``tag`` names its directory.

    The field defaults are the toy data's defaults everywhere: the registration at import, the
    generator's command line and ``DATASETS.TOY`` (``tests/data/test_toy_data.py`` checks that the
    config's defaults equal them).
    """

    num_train: int = 200
    num_val: int = 40
    image_size: Tuple[int, int] = (128, 160)  # (H, W)
    seed: int = 0
    max_pole_width: int = 3  # poles are 1..max_pole_width px wide (1: every thin part is 1 px)
    context_stuff: bool = False  # road painted like wall: only the surroundings tell them apart

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
        if self.max_pole_width not in (1, 2, 3):
            raise ValueError(
                f"toy dataset: max_pole_width must be 1, 2 or 3, got {self.max_pole_width!r}"
            )
        if not isinstance(self.context_stuff, bool):
            raise ValueError(
                f"toy dataset: context_stuff must be a bool, got {self.context_stuff!r}"
            )

    @classmethod
    def of(cls, *args, **fields) -> "ToyParams":
        """``args[0]`` when that is the only argument and a ToyParams, else
        ``ToyParams(*args, **fields)``: entry points take a ToyParams or its fields."""
        if len(args) == 1 and not fields and isinstance(args[0], cls):
            return args[0]
        return cls(*args, **fields)

    @property
    def tag(self) -> str:
        h, w = self.image_size
        tag = f"v{GENERATOR_VERSION}_n{self.num_train}-{self.num_val}_{h}x{w}_seed{self.seed}"
        extras = self._non_default_options()
        if "max_pole_width" in extras:
            tag += f"_pole{self.max_pole_width}px"
        if "context_stuff" in extras:
            tag += "_context"
        return tag

    def _non_default_options(self) -> dict:
        """The rendering options that differ from the defaults (they join the tag and
        ``params.json`` only then, so that default data keeps its directory)."""
        return {
            name: getattr(self, name)
            for name in ("max_pole_width", "context_stuff")
            if getattr(self, name) != getattr(ToyParams, name)
        }

    def to_json(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "image_size": list(self.image_size),
            "seed": self.seed,
            **self._non_default_options(),
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
