"""The state-dict keys and shapes of one RSP, one NRD and the toy RSP + NRD panoptic config are
pinned (tests/fixtures/state_dict_keys.json, written from the models before the package was
reshaped): renaming a module, a config key or a builder must not change a checkpoint's keys, so
old checkpoints keep loading.

Regenerate the fixture only for a deliberate change of the checkpoint format:
``python tests/modeling/test_state_dict_keys.py --write``."""

import json
import os
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from nrd_rsp import add_nrd_rsp_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "state_dict_keys.json")
CONFIGS = [
    "configs/Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
    "configs/Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml",
    "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
]


def state_dict_shapes(config):
    """``{key: shape}`` of the model ``config`` builds on CPU, without weights, in order (SyncBN
    has BatchNorm's keys, so it is built as it is)."""
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _load_fixture():
    with open(FIXTURE) as f:
        return json.load(f)


def test_fixture_covers_an_rsp_and_an_nrd_config():
    assert list(_load_fixture()) == CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_keys_and_shapes_are_unchanged(config):
    want = _load_fixture()[config]
    got = state_dict_shapes(config)
    missing = [k for k in want if k not in got]
    added = [k for k in got if k not in want]
    assert not missing and not added, f"missing: {missing[:10]}, new: {added[:10]}"
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    assert list(got) == list(want)  # same order: the modules are built in the same order


def _write():
    data = {c: state_dict_shapes(c) for c in CONFIGS}
    lines = ["{"]
    for i, (config, keys) in enumerate(data.items()):
        lines.append(f" {json.dumps(config)}: {{")
        rows = [f"  {json.dumps(k)}: {json.dumps(s)}" for k, s in keys.items()]
        lines.append(",\n".join(rows))
        lines.append(" }" + ("," if i < len(data) - 1 else ""))
    lines.append("}")
    with open(FIXTURE, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write()
