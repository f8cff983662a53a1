"""Checked reading of training and test samples: every image mode becomes the configured format,
palette labels give their indices, each file fault (``DAMAGES``) is a ``BadSampleError`` naming the
file (at test time too, through a worker), a resize to nothing is a bad sample, and a
property-based test: both mappers map or skip any sample."""

import os

import numpy as np
import pytest
import torch
from conftest import ROOT
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sample_files import (
    DAMAGES,
    MAPPERS,
    damage,
    expected_rgb,
    toy_cfg,
    write_label,
    write_sample,
)

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data.checked_reading import apply_augmentations_checked
from nrd_rsp.data.mappers import (
    CheckedDatasetMapper,
    PanopticFPNDatasetMapper,
    SemanticSegDatasetMapper,
)
from nrd_rsp.data.resumable_loader import build_resumable_train_loader
from nrd_rsp.engine import one_line
from nrd_rsp.errors import BadSampleError


@pytest.mark.parametrize("kind", sorted(MAPPERS))
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_image_modes_are_converted(tmp_path, kind, mode, fmt):
    d = write_sample(tmp_path, image_mode=mode)
    out = MAPPERS[kind](fmt)(d)
    img = out["image"].numpy().transpose(1, 2, 0)
    expected = expected_rgb(d["file_name"])
    assert img.shape == (24, 30, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, expected if fmt == "RGB" else expected[:, :, ::-1])
    assert out["sem_seg"].shape == (24, 30)


@pytest.mark.parametrize("kind", sorted(MAPPERS))
def test_palette_labels_give_their_indices(tmp_path, kind):
    d = write_sample(tmp_path)
    label = (np.arange(24 * 30).reshape(24, 30) % 3).astype(np.uint8)
    write_label(d["sem_seg_file_name"], label, mode="P")
    np.testing.assert_array_equal(MAPPERS[kind]()(d)["sem_seg"].numpy(), label)


@pytest.mark.parametrize("kind", sorted(MAPPERS))
@pytest.mark.parametrize("how", DAMAGES)
def test_bad_files_raise_bad_sample_error_naming_the_file(tmp_path, kind, how):
    d = write_sample(tmp_path)
    bad_file = damage(tmp_path, d, how)
    with pytest.raises(BadSampleError) as e:
        MAPPERS[kind]()(d)
    assert bad_file in str(e.value) and e.value.file_name == bad_file


def test_a_resize_to_nothing_is_a_bad_sample_naming_the_file():
    augs = T.AugmentationList([T.ResizeShortestEdge(48, 128), T.RandomFlip()])
    image = np.zeros((1, 600, 3), np.uint8)  # scale 128/600: 0.21 rows
    expected = r"'thin.png' of size \(1, 600\).*\(0, 128\).*too elongated"
    with pytest.raises(BadSampleError, match=expected):
        apply_augmentations_checked(augs, T.AugInput(image.copy()), "thin.png")
    aug_input = T.AugInput(np.zeros((3, 600, 3), np.uint8), sem_seg=np.zeros((3, 600)))
    tfms = apply_augmentations_checked(augs, aug_input, "ok.png")  # 3 x 600 -> 1 x 128
    assert aug_input.image.shape == (1, 128, 3) and aug_input.sem_seg.shape == (1, 128)
    assert [type(t).__name__ for t in tfms.transforms][0] == "ResizeTransform"


def test_evaluation_names_a_corrupt_test_image(tmp_path):
    d = write_sample(tmp_path)
    bad = damage(tmp_path, d, "garbage image")
    cfg = toy_cfg(**{"DATALOADER.NUM_WORKERS": "1"})
    with pytest.raises(BadSampleError, match=bad):
        CheckedDatasetMapper(cfg, False)(d)
    # Through a test loader with a worker process: the re-raised error still names the file.
    from detectron2.data import build_detection_test_loader

    loader = build_detection_test_loader(
        [d], mapper=CheckedDatasetMapper(cfg, False), num_workers=1
    )
    with pytest.raises(BadSampleError) as e:
        list(loader)
    line = one_line(e.value)
    assert line.startswith("cannot read image") and bad in line and "\n" not in line


# ----------------------------------------------------------------------------------------------
# Property-based: random sizes, modes and annotation layouts through both mappers.
# ----------------------------------------------------------------------------------------------
def _annotations(layout, h, w, rng):
    if layout == "none":
        return []
    n = 1 if layout in ("one", "border") else int(rng.integers(2, 6))
    anns = []
    for _ in range(n):
        bw, bh = int(rng.integers(1, max(2, w))), int(rng.integers(1, max(2, h)))
        x0 = 0 if layout == "border" else int(rng.integers(0, max(1, w - bw)))
        y0 = h - bh if layout == "border" else int(rng.integers(0, max(1, h - bh)))
        poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
        anns.append(
            {
                "bbox": [x0, y0, bw, bh],
                "bbox_mode": 1,
                "category_id": int(rng.integers(0, 3)),
                "segmentation": [[float(v) for v in poly]],
                "iscrowd": 0,
            }
        )
    return anns


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    h=st.integers(1, 160),
    w=st.integers(1, 640),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P"]),
    layout=st.sampled_from(["none", "one", "many", "border"]),
    corrupt=st.sampled_from([None, None, None] + DAMAGES),
    seed=st.integers(0, 2**16),
)
@example(h=1, w=600, mode="RGB", layout="one", corrupt=None, seed=1)  # resized to 0 rows
def test_mappers_map_or_skip_any_sample(tmp_path, h, w, mode, layout, corrupt, seed):
    rng = np.random.default_rng(seed)
    d = write_sample(
        tmp_path,
        h=h,
        w=w,
        image_mode=mode,
        name=f"p{seed}",
        annotations=_annotations(layout, h, w, rng),
    )
    if corrupt:
        damage(tmp_path, d, corrupt)
    cfg = toy_cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(64, 80)",
            "INPUT.CROP.SIZE": "(48, 48)",
            "INPUT.SIZE_DIVISIBILITY": "32",
        }
    )
    pcfg = get_cfg()
    add_nrd_rsp_config(pcfg)
    pcfg.merge_from_file(os.path.join(ROOT, "configs/Toy/Base-Toy-Panoptic-FPN.yaml"))
    pcfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(48, 64)", "INPUT.MAX_SIZE_TRAIN", "128"])
    for mapper in (SemanticSegDatasetMapper(cfg, True), PanopticFPNDatasetMapper(pcfg, True)):
        loader = build_resumable_train_loader(
            cfg, mapper, dataset=[d, write_sample(tmp_path, name=f"good{seed}")]
        )
        batch = next(iter(loader))
        for s in batch:
            img, sem = s["image"], s["sem_seg"]
            assert img.dtype == torch.uint8 and img.shape[0] == 3 and img.shape[1:] == sem.shape
            if "instances" in s:
                inst = s["instances"]
                assert inst.image_size == tuple(img.shape[1:])
                boxes = inst.gt_boxes.tensor
                assert len(inst.gt_classes) == len(boxes)
                assert len(inst.gt_masks) == len(boxes) if inst.has("gt_masks") else len(boxes) == 0
                assert (boxes[:, 0::2] <= img.shape[2]).all() and (
                    boxes[:, 1::2] <= img.shape[1]
                ).all()
        served_bad = any(s["file_name"] == d["file_name"] for s in batch)
        if corrupt:
            assert not served_bad and d["file_name"] in loader.skipped_files
        elif max(h, w) <= 50 * min(h, w):  # a valid sample of any size, mode and layout maps ...
            assert loader.num_skipped == 0, loader.skipped_files
        else:  # ... but resizing a 1 x 600 image may leave no pixel row: a data fault, skipped
            assert set(loader.skipped_files) <= {d["file_name"]}
            assert all(
                "too elongated for the training resize" in r for r in loader.skipped_files.values()
            )
            assert (h, w) != (1, 600) or d["file_name"] in loader.skipped_files
