"""Degenerate inputs train and predict for every model family: an image without things, tiny
images (smaller than one crop and one stride-32 cell) and an extreme aspect ratio. One training
step (batch of 2) and one inference each, outputs at exactly the input size."""

import os

import numpy as np
import pytest
import torch
from detectron2.utils.events import EventStorage
from PIL import Image
from run_helpers import ROOT

from nrd_rsp.data.mappers import (
    PanopticFPNDatasetMapper,
    SemanticSegDatasetMapper,
    build_test_mapper,
)
from nrd_rsp.engine import Trainer, setup_cfg

pytestmark = pytest.mark.slow

MODELS = [
    "semantic_fpn_R_18_toy",  # Semantic FPN
    "rsp_R_18_toy",  # RSP semantic
    "nrd_R_18_toy",  # NRD
    "panoptic_fpn_R_18_toy",  # Panoptic FPN
    "rsp_panoptic_fpn_R_18_toy",  # RSPPanopticFPN
    "nrd_rsp_panoptic_fpn_R_18_toy",  # RSPPanopticFPN + NRD semantic branch
]
# (name, H, W, number of thing instances)
CASES = [("no things", 64, 80, 0), ("tiny 20x24", 20, 24, 1), ("extreme 32x600", 32, 600, 2)]


def _write_sample(tmp_path, name, h, w, n, panoptic):
    """Image + label PNG (+ instance annotations) on disk, as a dataset dict."""
    rng = np.random.default_rng(h * w + n)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = rng.integers(1 if panoptic else 0, 6 if panoptic else 8, (h, w)).astype(np.uint8)
    anns = []
    for i in range(n):
        x0, x1 = i * w // n, min(w, i * w // n + max(4, w // 3))
        y0, y1 = 0, max(4, h // 2)
        label[y0:y1, x0:x1] = 0 if panoptic else 5 + i % 3
        anns.append(
            {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "bbox_mode": 1,
                "category_id": i % 3,
                "iscrowd": 0,
                "segmentation": [
                    [
                        float(x0),
                        float(y0),
                        float(x1),
                        float(y0),
                        float(x1),
                        float(y1),
                        float(x0),
                        float(y1),
                    ]
                ],
            }
        )
    stem = name.replace(" ", "_")
    Image.fromarray(img).save(tmp_path / f"{stem}.png")
    Image.fromarray(label).save(tmp_path / f"{stem}_label.png")
    return {
        "file_name": str(tmp_path / f"{stem}.png"),
        "sem_seg_file_name": str(tmp_path / f"{stem}_label.png"),
        "height": h,
        "width": w,
        "image_id": stem,
        "annotations": anns,
    }


def _raw(d, panoptic_mapper=None):
    """The sample at its original size (no resize/crop): what the model must cope with."""
    mapper = panoptic_mapper or SemanticSegDatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", ignore_label=255
    )
    return mapper(d)


@pytest.mark.parametrize("config", MODELS)
def test_degenerate_inputs_train_and_predict(tmp_path, config):
    torch.manual_seed(0)
    cfg = setup_cfg(os.path.join(ROOT, "configs/Toy", config + ".yaml"), ["MODEL.DEVICE", "cpu"])
    panoptic = cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor"
    model = Trainer.build_model(cfg)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    raw_mapper = (
        PanopticFPNDatasetMapper(
            is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True
        )
        if panoptic
        else None
    )
    train_mapper = (PanopticFPNDatasetMapper if panoptic else SemanticSegDatasetMapper)(cfg, True)
    test_mapper = build_test_mapper(cfg)
    for name, h, w, n in CASES:
        d = _write_sample(tmp_path, name, h, w, n, panoptic)
        # The configured training/test mappers handle the file ...
        mapped = train_mapper(d)
        assert mapped["image"].shape[1:] == mapped["sem_seg"].shape
        assert test_mapper(d)["image"].shape[0] == 3
        # ... and the model trains on it, unresized (batch of 2: BatchNorm needs > 1 value per
        # channel).
        batch = [_raw(d, raw_mapper), mapped]
        assert tuple(batch[0]["image"].shape[1:]) == (h, w)
        if panoptic:
            assert len(batch[0]["instances"]) == n
        model.train()
        with EventStorage(0):
            losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total), (name, losses)
        total.backward()
        assert all(
            torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
        ), name
        model.zero_grad()
        # Inference on the raw image: outputs at exactly the requested size.
        model.eval()
        with torch.no_grad():
            out = model([{"image": batch[0]["image"], "height": h, "width": w}])[0]
        assert tuple(out["sem_seg"].shape) == (num_classes, h, w), name
        assert torch.isfinite(out["sem_seg"]).all()
        if panoptic:
            seg, segments = out["panoptic_seg"]
            assert tuple(seg.shape) == (h, w)
            assert out["instances"].image_size == (h, w)
            ids = set(seg.unique().tolist()) - {0}
            assert ids <= {s["id"] for s in segments}
