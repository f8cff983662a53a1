"""nrd_rsp.model_zoo mirrors detectron2.model_zoo: config paths relative to configs/ (found from
the checkout or $NRD_RSP_CONFIGS), clear errors for unknown paths and unpublished checkpoints,
and a URL table + MODEL_ZOO.md row for every config."""

import os
import re
import shutil

import pytest
import torch
from conftest import ROOT, TOY_OPTS

from nrd_rsp import model_zoo
from nrd_rsp.checkpoint import CheckpointMismatchError
from nrd_rsp.engine import ConfigError
from nrd_rsp.modeling.nrd_head import NRDHead
from nrd_rsp.modeling.rsp import RSPSemSegHead

CONFIGS = os.path.join(ROOT, "configs")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(model_zoo.CONFIGS_ENV, raising=False)


def test_configs_dir_found_from_checkout():
    assert os.path.samefile(model_zoo.get_configs_dir(), CONFIGS)
    path = model_zoo.get_config_file("Toy/rsp_panoptic_fpn_R_18_toy.yaml")
    assert os.path.samefile(path, os.path.join(CONFIGS, "Toy", "rsp_panoptic_fpn_R_18_toy.yaml"))
    # without the extension, or with a leading configs/, it is the same file
    assert model_zoo.get_config_file("Toy/rsp_panoptic_fpn_R_18_toy") == path
    assert model_zoo.get_config_file("configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml") == path


def test_env_var_overrides_configs_dir(tmp_path, monkeypatch):
    shutil.copytree(os.path.join(CONFIGS, "Toy"), tmp_path / "Toy")
    (tmp_path / "Toy" / "only_here.yaml").write_text('_BASE_: "Base-Toy-SemSeg.yaml"\nSEED: 7\n')
    monkeypatch.setenv(model_zoo.CONFIGS_ENV, str(tmp_path))
    assert model_zoo.get_configs_dir() == str(tmp_path)
    assert model_zoo.get_config("Toy/only_here.yaml", opts=TOY_OPTS).SEED == 7
    monkeypatch.setenv(model_zoo.CONFIGS_ENV, str(tmp_path / "missing"))
    with pytest.raises(model_zoo.ModelZooError, match="not a directory"):
        model_zoo.get_configs_dir()


@pytest.mark.parametrize(
    "path, suggestion",
    [
        ("Toy/rsp_R_18.yaml", "Toy/rsp_R_18_toy.yaml"),
        (
            "rsp_R_50_FPN_90k_bs16.yaml",
            "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
        ),
        (
            "Cityscapes-SemanticSegmentation/nrd_R_50_90k_bs16.yaml",
            "Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml",
        ),
    ],
)
def test_unknown_path_lists_close_matches(path, suggestion):
    with pytest.raises(model_zoo.ModelZooError) as e:
        model_zoo.get_config_file(path)
    msg = str(e.value)
    assert f"'{path}' is not in the nrd_rsp model zoo" in msg and "Did you mean" in msg
    assert suggestion in msg
    assert isinstance(e.value, ConfigError)  # the CLIs print it as one line, exit 2


def test_get_config_has_project_keys_and_is_mutable():
    cfg = model_zoo.get_config("Toy/rsp_R_18_toy.yaml", opts=TOY_OPTS)
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "RSPSemSegHead"
    assert cfg.MODEL.RSP.CHANNELS == 64 and cfg.DATASETS.TOY.NUM_TRAIN == 16
    assert not cfg.is_frozen()
    cfg.MODEL.WEIGHTS = "x.pth"


@pytest.mark.parametrize("config", model_zoo.list_configs())
def test_every_config_loads(config):
    cfg = model_zoo.get_config(config)
    assert cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "PanopticFPN", "RSPPanopticFPN")
    assert cfg.MODEL.DEVICE in ("cpu", "cuda") or cfg.MODEL.DEVICE.startswith("cuda")


def test_trained_without_published_checkpoint_is_a_clear_error():
    with pytest.raises(
        model_zoo.ModelZooError, match="No checkpoint is published for 'Toy/rsp_R_18_toy.yaml'"
    ):
        model_zoo.get_config("Toy/rsp_R_18_toy.yaml", trained=True)
    with pytest.raises(model_zoo.ModelZooError, match="No checkpoint is published"):
        model_zoo.get("Cityscapes-SemanticSegmentation/nrd_R_50_84k_bs16.yaml", trained=True)


def test_get_random_init_models():
    m = model_zoo.get("Toy/nrd_R_18_toy.yaml", opts=TOY_OPTS)
    assert isinstance(m.sem_seg_head, NRDHead) and m.training and m.device.type == "cpu"
    # real-dataset config: MODEL.WEIGHTS "" avoids the ImageNet download
    m = model_zoo.get(
        "Cityscapes-SemanticSegmentation/rsp_R_50_FPN_90k_bs16.yaml",
        device="cpu",
        opts=["MODEL.WEIGHTS", ""],
    )
    assert isinstance(m.sem_seg_head, RSPSemSegHead)
    assert m.sem_seg_head.predictor.out_channels == 19


def test_get_trained_loads_the_published_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = model_zoo.get("Toy/semantic_fpn_R_18_toy.yaml", opts=TOY_OPTS)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "model_final_abcdef.pth"
    torch.save({"model": src.state_dict()}, path)
    monkeypatch.setitem(model_zoo.CHECKPOINT_URLS, "Toy/semantic_fpn_R_18_toy", str(path))
    assert model_zoo.get_checkpoint_url("Toy/semantic_fpn_R_18_toy.yaml") == str(path)
    cfg = model_zoo.get_config("Toy/semantic_fpn_R_18_toy.yaml", trained=True, opts=TOY_OPTS)
    assert cfg.MODEL.WEIGHTS == str(path)
    model = model_zoo.get("Toy/semantic_fpn_R_18_toy.yaml", trained=True, opts=TOY_OPTS)
    expected = src.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_get_trained_loads_strictly(tmp_path, monkeypatch):
    # A published checkpoint must hold every model tensor with its shape (docs/RELIABILITY.md,
    # "Checked weights").
    src = model_zoo.get(
        "Toy/semantic_fpn_R_18_toy.yaml", opts=[*TOY_OPTS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "6"]
    )
    path = tmp_path / "model_final_abcdef.pth"
    torch.save({"model": src.state_dict()}, path)
    monkeypatch.setitem(model_zoo.CHECKPOINT_URLS, "Toy/semantic_fpn_R_18_toy", str(path))
    with pytest.raises(CheckpointMismatchError, match="2 have another shape"):
        model_zoo.get("Toy/semantic_fpn_R_18_toy.yaml", trained=True, opts=TOY_OPTS)


def test_url_table_and_model_zoo_md_cover_every_config():
    configs = {c[: -len(".yaml")] for c in model_zoo.list_configs()}
    assert set(model_zoo.CHECKPOINT_URLS) == configs
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        md = f.read()
    linked = re.findall(r"^\| \[[^\]]+\]\(configs/([^)]+)\.yaml\) \|", md, flags=re.M)
    assert sorted(linked) == sorted(configs), "MODEL_ZOO.md needs exactly one row per config"
    for row in re.findall(r"^\| \[.*$", md, flags=re.M):
        assert row.count("|") == 11, f"malformed row: {row}"
