"""The built-in toy data: a deterministic generator of small street-like scenes.

* :mod:`.spec`: categories, dataset names, :class:`ToyParams` (the default parameters) and paths;
* :mod:`.render`: one scene from a NumPy generator;
* :mod:`.write`: a whole dataset in the COCO panoptic / Panoptic FPN / semantic formats, generated
  once per parameter set, safely for concurrent processes;
* :mod:`.cli`: ``python -m nrd_rsp.data.toy``.

The toy dataset names are registered by :mod:`nrd_rsp.data.datasets.register_toy`.
"""

from .cli import main
from .render import render_toy_image
from .spec import GENERATOR_VERSION, ToyParams, toy_dataset_dir, toy_split_paths
from .write import ensure_toy_dataset, generate_toy_dataset

__all__ = [
    "GENERATOR_VERSION",
    "ToyParams",
    "ensure_toy_dataset",
    "generate_toy_dataset",
    "main",
    "render_toy_image",
    "toy_dataset_dir",
    "toy_split_paths",
]
