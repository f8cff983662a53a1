"""Where the datasets live and whether their files are there.

:func:`datasets_root` is ``$DETECTRON2_DATASETS`` read at call time. :func:`check_dataset_available`
turns a missing dataset directory into one clear :class:`DatasetNotFoundError` before any loader
runs. A dataset family whose files are made on demand (the toy data) stores a ``make_available``
callable in its metadata; the check calls it instead of checking paths, so this module needs to
know nothing about the families above it.
"""

import glob
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "check_dataset_available", "datasets_root", "unregister"]

README_HINT = "datasets/README.md"

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


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``, relative to the working directory), read
    at call time, like Detectron2's builtin registration does at import."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def unregister(name: str) -> None:
    """Remove ``name`` from both catalogs (nothing if it is not there)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


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
    Detectron2's builtin datasets as well as ours. A dataset whose metadata has a
    ``make_available`` callable (the toy names: it generates the data with the parameters they
    are registered with) is made available by it instead.

    Raises:
        KeyError: the name is not registered.
        DatasetNotFoundError: (a FileNotFoundError) naming the missing path.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{dataset_name}' is not registered. Import nrd_rsp to register the toy "
            f"and PASCAL Context datasets; see {README_HINT}."
        )
    meta = MetadataCatalog.get(dataset_name)
    make_available = meta.get("make_available", None)
    if make_available is not None:
        make_available()
        return
    keys = [k for k in _PATH_KEYS if isinstance(meta.get(k, None), str)]
    if "panoptic_json" in keys and "sem_seg_root" not in keys and "json_file" in keys:
        keys.remove("json_file")  # the standard panoptic format does not need instances
    for key in keys:
        _check_path(dataset_name, key, meta.get(key))
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


def _check_path(dataset_name: str, key: str, path: str) -> None:
    """A JSON metadata path must be a file, any other a non-empty directory."""
    if "://" in path:  # remote (PathManager) paths are not checked
        return
    if key.endswith("json") or key == "json_file":
        if not os.path.isfile(path):
            raise _missing_error(dataset_name, key, path, "missing file")
    elif not os.path.isdir(path):
        raise _missing_error(dataset_name, key, path, "missing directory")
    elif not os.listdir(path):
        raise _missing_error(dataset_name, key, path, "empty directory")
