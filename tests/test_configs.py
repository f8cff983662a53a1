"""The shipped configs stay thin (issue #21): a leaf config (any YAML under configs/ not named
``Base-*``) overrides what differs in at most 25 lines, comments included; no YAML sets a key to the
value it has without that line (config.py's or Detectron2's default, or its ``_BASE_``'s value)
unless ``ALLOWED`` says why; the three NRD bases, one per dataset, build the same model."""

import fnmatch
import glob
import os

import pytest
import yaml
from detectron2.config import get_cfg

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.safe_loading import merge_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEAF_LINES = 25

# (file pattern, key pattern) -> why the YAML repeats the value it would have anyway.
ALLOWED = {
    ("configs/*/Base-*.yaml", "VERSION"): (
        "Detectron2's config version: without it Detectron2 guesses the version, with a warning"
    ),
    ("configs/*/[!B]*.yaml", "MODEL.WEIGHTS"): (
        "a leaf names its weights and encoder depth, as Detectron2's model-zoo leaves do"
    ),
    ("configs/*/[!B]*.yaml", "MODEL.RESNETS.DEPTH"): (
        "a leaf names its weights and encoder depth, as Detectron2's model-zoo leaves do"
    ),
    ("configs/*/Base-NRD.yaml", "MODEL.RESNETS.STEM_OUT_CHANNELS"): (
        "the ResNetV1c stem (32/32/64) the authors use; nrd_R_50_deeplab_stem_84k_bs16.yaml "
        "changes it"
    ),
    (
        "configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
        "DATALOADER.ASPECT_RATIO_GROUPING",
    ): ("stated against the semantic bases' False: batches of one orientation, as Detectron2"),
}


def _configs():
    paths = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _leaves():
    return [c for c in _configs() if not os.path.basename(c).startswith("Base-")]


def _merged(path):
    """Detectron2's and the project's defaults, then ``path`` with its ``_BASE_`` files; None:
    the defaults alone."""
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    if path is not None:
        merge_config_file(cfg, os.path.join(ROOT, path))
    return cfg


def _keys(node, prefix=""):
    """Full names of the keys a YAML mapping sets (``_BASE_`` left out)."""
    for k, v in node.items():
        if k == "_BASE_":
            continue
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _allowed(path, key):
    return any(fnmatch.fnmatch(path, file) and fnmatch.fnmatch(key, k) for file, k in ALLOWED)


def repeated_keys(path):
    """Keys ``path`` itself sets to the value they have without it: Detectron2's and config.py's
    defaults merged with its ``_BASE_`` chain (Detectron2 merges key by key, so each key is
    compared on its own)."""
    with open(os.path.join(ROOT, path)) as f:
        data = yaml.safe_load(f) or {}
    base = data.get("_BASE_")
    parent = _merged(os.path.join(os.path.dirname(path), base) if base else None)
    full = _merged(path)
    return [k for k in _keys(data) if _value(full, k) == _value(parent, k)]


def test_the_configs_are_found():
    assert len(_leaves()) >= 20 and len(_configs()) > len(_leaves())


@pytest.mark.parametrize("path", _leaves())
def test_leaf_configs_are_at_most_25_lines(path):
    with open(os.path.join(ROOT, path)) as f:
        n = len(f.read().splitlines())
    assert n <= MAX_LEAF_LINES, (
        f"{path} has {n} lines (at most {MAX_LEAF_LINES}, comments included): move what the "
        f"leaves of its folder share to a Base-*.yaml there, and drop keys equal to the defaults"
    )


@pytest.mark.parametrize("path", _configs())
def test_no_key_repeats_its_default_or_base_value(path):
    repeated = [k for k in repeated_keys(path) if not _allowed(path, k)]
    assert not repeated, (
        f"{path} sets {repeated} to the value they have without it (config.py's or Detectron2's "
        f"default, or its _BASE_'s): drop them, or add them to ALLOWED in {__file__} with the "
        f"reason, and say why in a YAML comment"
    )


def test_allowed_patterns_are_used():
    """An ``ALLOWED`` entry that no longer matches a repeated key is stale."""
    repeated = [(p, k) for p in _configs() for k in repeated_keys(p)]
    unused = [
        entry
        for entry in ALLOWED
        if not any(
            fnmatch.fnmatch(p, entry[0]) and fnmatch.fnmatch(k, entry[1]) for p, k in repeated
        )
    ]
    assert not unused, f"ALLOWED entries nothing needs: {unused}"


def test_the_nrd_bases_build_the_same_model():
    """Detectron2's ``_BASE_`` takes one file, so each dataset's Base-NRD.yaml inherits its data
    and restates the NRD model: the MODEL keys must agree but for the class count."""
    models = {}
    for path in glob.glob(os.path.join(ROOT, "configs", "*", "Base-NRD.yaml")):
        model = _merged(os.path.relpath(path, ROOT)).MODEL
        model.SEM_SEG_HEAD.NUM_CLASSES = 0
        models[os.path.relpath(path, ROOT)] = model.dump()
    assert len(models) == 3, sorted(models)
    first = models["configs/Cityscapes-SemanticSegmentation/Base-NRD.yaml"]
    for path, model in models.items():
        assert model == first, f"{path}: MODEL differs from the Cityscapes Base-NRD.yaml"
