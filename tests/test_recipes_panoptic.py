"""The COCO panoptic configs against Detectron2's model zoo, key by key (docs/RSP.md, "Training
recipe of the COCO panoptic configs"), the mappers and LR schedule those keys produce, and one
semantic branch for RSP Panoptic FPN in the COCO configs and the toy quickstart."""

import os
import warnings

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data.mappers import build_test_mapper, build_train_mapper
from nrd_rsp.data.resumable_loader import build_resumable_train_loader
from nrd_rsp.engine import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(ROOT, "configs", "COCO-PanopticSegmentation")
TOY = os.path.join(ROOT, "configs", "Toy")

# Keys any of our COCO panoptic configs may set differently from the model-zoo config, and why
# that changes neither training nor inference. Nothing else may differ.
ALLOWED = {
    # Where checkpoints and results go.
    "OUTPUT_DIR",
    # "panoptic_fpn": Detectron2's DatasetMapper with checked reading, plus INPUT.COLOR_AUG; with
    # COLOR_AUG off its augmentations are Detectron2's (test_training_mapper_is_detectron2s).
    "INPUT.DATASET_MAPPER_NAME",
    # Project key, True by default (the zoo config loaded here gets True); False is Detectron2's
    # DatasetMapper, which has no photometric jitter. Required False below.
    "INPUT.COLOR_AUG",
}
# ... and an RSP config also (the issue: "only in the RSP keys, the meta-architecture and the
# semantic head"): the RSP head, and the semantic head's type and inputs (not its class count,
# ignore value or loss weight).
RSP_ALLOWED = ALLOWED | {
    "MODEL.META_ARCHITECTURE",
    "MODEL.SEM_SEG_HEAD.NAME",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES",
}
RSP_ALLOWED_PREFIXES = ("MODEL.RSP.", "MODEL.RSP_PANOPTIC_FPN.", "MODEL.NRD.")

# Our config -> the zoo config of the same depth and schedule.
ZOO_OF = {
    "panoptic_fpn_R_50_1x.yaml": "panoptic_fpn_R_50_1x.yaml",
    "rsp_panoptic_fpn_R_50_1x.yaml": "panoptic_fpn_R_50_1x.yaml",
    "rsp_panoptic_fpn_R_50_3x.yaml": "panoptic_fpn_R_50_3x.yaml",
    "rsp_panoptic_fpn_R_101_3x.yaml": "panoptic_fpn_R_101_3x.yaml",
    "nrd_rsp_panoptic_fpn_R_50_1x.yaml": "panoptic_fpn_R_50_1x.yaml",
}


def _load(path, project_keys=True):
    cfg = get_cfg()
    if project_keys:
        add_nrd_rsp_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _zoo(name, project_keys=True):
    return _load(model_zoo.get_config_file(f"COCO-PanopticSegmentation/{name}"), project_keys)


def _flat(node, prefix=""):
    """{"A.B.C": value} of a CfgNode."""
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _diff(a, b):
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<missing>") != fb.get(k, "<missing>")}


def test_project_keys_leave_detectron2_defaults_alone():
    # Loading the zoo config on top of our keys changes no Detectron2 key.
    plain = _flat(_zoo("panoptic_fpn_R_50_1x.yaml", project_keys=False))
    ours = _flat(_zoo("panoptic_fpn_R_50_1x.yaml"))
    assert {k for k in plain if plain[k] != ours[k]} == set()
    assert len(plain) > 150 and len(ours) > len(plain)


def test_panoptic_fpn_config_is_detectron2s():
    cfg = _load(os.path.join(COCO, "panoptic_fpn_R_50_1x.yaml"))
    assert _diff(cfg, _zoo("panoptic_fpn_R_50_1x.yaml")) == ALLOWED
    assert cfg.INPUT.COLOR_AUG is False and cfg.INPUT.DATASET_MAPPER_NAME == "panoptic_fpn"
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING and cfg.DATALOADER.DETERMINISTIC


@pytest.mark.parametrize("name", [n for n in sorted(ZOO_OF) if n != "panoptic_fpn_R_50_1x.yaml"])
def test_rsp_configs_differ_only_in_rsp_keys_and_semantic_head(name):
    cfg = _load(os.path.join(COCO, name))
    diff = _diff(cfg, _zoo(ZOO_OF[name]))
    extra = {k for k in diff if k not in RSP_ALLOWED and not k.startswith(RSP_ALLOWED_PREFIXES)}
    assert extra == set()
    assert cfg.MODEL.META_ARCHITECTURE == "RSPPanopticFPN" and cfg.INPUT.COLOR_AUG is False
    if name.startswith("rsp_"):  # Panoptic FPN's semantic head, unchanged (docs/RSP.md)
        assert not {k for k in diff if k.startswith("MODEL.SEM_SEG_HEAD.")}
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == "SemSegFPNHead"
        assert cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES == ["p2", "p3", "p4", "p5"]
    else:
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == "NRDHead"


def _augs(mapper):
    return [repr(a) for a in mapper.augmentations.augs]


def test_training_and_test_mappers_are_detectron2s():
    ours = _load(os.path.join(COCO, "panoptic_fpn_R_50_1x.yaml"))
    zoo = _zoo("panoptic_fpn_R_50_1x.yaml", project_keys=False)
    train, test = build_train_mapper(ours), build_test_mapper(ours)
    for mine, theirs in ((train, DatasetMapper(zoo, True)), (test, DatasetMapper(zoo, False))):
        assert isinstance(mine, DatasetMapper)
        assert _augs(mine) == _augs(theirs) and len(_augs(mine)) == (2 if mine.is_train else 1)
        for attr in (
            "is_train",
            "image_format",
            "use_instance_mask",
            "instance_mask_format",
            "use_keypoint",
            "recompute_boxes",
            "proposal_topk",
        ):
            assert getattr(mine, attr) == getattr(theirs, attr), attr
    assert _augs(train) == [
        "ResizeShortestEdge(short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333, "
        "sample_style='choice')",
        "RandomFlip()",
    ]
    # The project's default (COLOR_AUG True) would add photometric jitter.
    ours.INPUT.COLOR_AUG = True
    assert len(_augs(build_train_mapper(ours))) > 2


def _lrs(cfg, build, iters):
    """LR at each of ``iters`` (a closed-form schedule: ``get_lr`` at ``last_epoch``)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build(cfg, opt)
    out = []
    for it in iters:
        sched.last_epoch = it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "get_lr() called outside step()"
            out.append(sched.get_lr()[0])
    return out


def test_lr_schedule_is_detectron2s():
    ours = _load(os.path.join(COCO, "panoptic_fpn_R_50_1x.yaml"))
    zoo = _zoo("panoptic_fpn_R_50_1x.yaml", project_keys=False)
    iters = [0, 1, 500, 999, 1000, 30000, 59999, 60000, 79999, 80000, 89999]
    got = _lrs(ours, Trainer.build_lr_scheduler, iters)
    assert got == pytest.approx(_lrs(zoo, d2_build_lr_scheduler, iters), rel=1e-12)
    assert got[0] == pytest.approx(0.02 * 0.001) and got[5] == pytest.approx(0.02)
    assert got[-1] == pytest.approx(0.0002)


def _fake_dicts(n=40):
    """Dataset dicts of mixed orientation (every third portrait), no files."""
    return [
        {
            "file_name": f"im{i}.jpg",
            "image_id": i,
            "height": 480 if i % 3 else 640,
            "width": 640 if i % 3 else 480,
        }
        for i in range(n)
    ]


def _fake_mapper(d):
    return {"file_name": d["file_name"], "width": d["width"], "height": d["height"]}


def test_coco_loader_groups_batches_by_orientation():
    cfg = _load(os.path.join(COCO, "panoptic_fpn_R_50_1x.yaml"))
    cfg.DATALOADER.NUM_WORKERS = 0
    it = iter(build_resumable_train_loader(cfg, _fake_mapper, dataset=_fake_dicts(), seed=0))
    batches = [next(it) for _ in range(12)]
    assert all(len(b) == cfg.SOLVER.IMS_PER_BATCH == 16 for b in batches)
    kinds = [{d["width"] > d["height"] for d in b} for b in batches]
    assert all(len(k) == 1 for k in kinds) and {True, False} == set().union(*kinds)


def test_toy_quickstart_uses_the_coco_semantic_branch():
    toy_rsp = _load(os.path.join(TOY, "rsp_panoptic_fpn_R_18_toy.yaml"))
    toy_pfpn = _load(os.path.join(TOY, "panoptic_fpn_R_18_toy.yaml"))
    coco_rsp = _load(os.path.join(COCO, "rsp_panoptic_fpn_R_50_1x.yaml"))
    for key in ("NAME", "IN_FEATURES", "COMMON_STRIDE", "LOSS_WEIGHT"):
        assert toy_rsp.MODEL.SEM_SEG_HEAD[key] == coco_rsp.MODEL.SEM_SEG_HEAD[key], key
    # The toy RSP model is the toy Panoptic FPN plus the RSP head, nothing else.
    diff = _diff(toy_rsp, toy_pfpn)
    assert {k for k in diff if not k.startswith("MODEL.RSP.")} == {
        "MODEL.META_ARCHITECTURE",
        "OUTPUT_DIR",
    }
