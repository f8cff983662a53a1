"""The semantic training mapper's crop-window path (``nrd_rsp.data.crop_resize``) gives the
samples of resizing the whole image and then cropping.

The reference below is written here, independently of the code under test: PIL resizes the whole
image (bilinear) and the whole label (nearest), as Detectron2's ``ResizeTransform`` does to
uint8 arrays, Detectron2's own ``RandomCrop_CategoryAreaConstraint``
and ``RandomFlip`` draw the crop and the flip on those full-size arrays, and the result is padded
as the mapper pads. The random ratio follows mmseg's keep-ratio rule, written out again.

For the same seed, the mapper must give the same label exactly, the same image within one grey
level, and leave NumPy's generator in the same state (the same numbers drawn). The photometric
distortion is off where images are compared: it runs after the crop on both paths, with the same
draws (checked with it on), and would magnify the one-level differences.
"""

import os

import numpy as np
import pytest
import torch
from conftest import ROOT
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from PIL import Image

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data import SemanticSegDatasetMapper, build_train_mapper
from nrd_rsp.data.crop_resize import resize_first_augmentations

CS = "configs/Cityscapes-SemanticSegmentation/"
# (config, image (H, W), RESIZE_BASE_SIZE, CROP.SIZE): the real configs at 1/8 (Cityscapes) or
# 1/4 of their sizes, so that the resized image is sometimes smaller than the crop (ADE20K,
# PASCAL Context at small ratios).
CASES = {
    "cityscapes_d2": (CS + "semantic_fpn_R_50_90k_bs16.yaml", (128, 256), (128, 256), (64, 128)),
    "cityscapes_mmseg": (CS + "nrd_R_50_84k_bs16.yaml", (128, 256), (128, 256), (64, 128)),
    "ade20k_portrait": (
        "configs/ADE20K-SemanticSegmentation/nrd_R_101_164k_bs16.yaml",
        (171, 128),
        (128, 512),
        (128, 128),
    ),
    "pascal_context": (
        "configs/PascalContext-SemanticSegmentation/semantic_fpn_R_50_80k_bs16.yaml",
        (94, 125),
        (130, 130),
        (120, 120),
    ),
}


def _cfg(config, base, crop, color_aug):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.INPUT.RESIZE_BASE_SIZE = base
    cfg.INPUT.CROP.SIZE = crop
    cfg.INPUT.COLOR_AUG = color_aug
    return cfg


def _write(tmp_path, hw, label_mode="L", ignored_columns=3):
    """A smooth image with noise, and a label whose top 60% is one class (so that the
    single-category cap rejects crops there), with blobs of 5 others and an ignore band of
    ``ignored_columns`` on the left."""
    h, w = hw
    rng = np.random.RandomState(h * w)
    ys, xs = np.mgrid[0:h, 0:w]
    smooth = np.stack([128 + 100 * np.sin(xs / 7.0 + c) * np.cos(ys / 5.0) for c in range(3)], 2)
    image = np.clip(smooth + rng.randint(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
    label = np.full((h, w), 3, np.int64)
    label[int(0.6 * h) :] = 7
    for k in range(12):
        cy, cx, r = rng.randint(h), rng.randint(w), rng.randint(3, 12)
        label[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = 10 + k % 5
    label[:, :ignored_columns] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    if label_mode == "I":
        label[label == 7] = 1000  # a label type other than uint8
    Image.fromarray(label.astype(np.uint8 if label_mode == "L" else np.int32)).save(
        tmp_path / "label.png"
    )
    return {
        "file_name": str(tmp_path / "image.png"),
        "sem_seg_file_name": str(tmp_path / "label.png"),
        "height": h,
        "width": w,
    }


def _resized_size(h, w, ratio, base):
    factor = ratio * min(max(base) / max(h, w), min(base) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_then_crop(d, cfg):
    """The reference sample: whole-image resize, crop, flip, padding (no photometric step)."""
    image = Image.open(d["file_name"]).convert("RGB")
    label = Image.open(d["sem_seg_file_name"])
    if label.mode != "L":  # 16-bit PNG (I;16): PIL's rule for 32-bit images, mode "I"
        label = Image.fromarray(np.asarray(label).astype(np.int32))
    h, w = label.height, label.width
    ratio = np.random.uniform(*cfg.INPUT.RESIZE_SCALE_RANGE)
    oh, ow = _resized_size(h, w, ratio, cfg.INPUT.RESIZE_BASE_SIZE)
    image = np.asarray(image.resize((ow, oh), Image.BILINEAR))
    label = np.asarray(label.resize((ow, oh), Image.NEAREST))
    if cfg.INPUT.CROP.ENABLED:
        crop = T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE,
            cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ).get_transform(image, label)
        image, label = crop.apply_image(image), crop.apply_segmentation(label)
    if np.random.uniform() < 0.5:  # T.RandomFlip(): one uniform draw, flip below 0.5
        image, label = image[:, ::-1], label[:, ::-1]
    if cfg.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    resize_then_crop.crop_hw = label.shape  # before padding
    div = cfg.INPUT.SIZE_DIVISIBILITY
    if div > 0:
        ph, pw = -image.shape[0] % div, -image.shape[1] % div
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(
            label, ((0, ph), (0, pw)), constant_values=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        )
    return image.transpose(2, 0, 1).astype(np.int64), label.astype(np.int64)


def _rng_state():
    return np.random.get_state()[1].copy(), np.random.get_state()[2]


@pytest.mark.parametrize("case", sorted(CASES))
def test_crop_window_path_gives_the_resize_then_crop_sample(tmp_path, case):
    config, hw, base, crop = CASES[case]
    cfg = _cfg(config, base, crop, color_aug=False)
    d = _write(tmp_path, hw)
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, SemanticSegDatasetMapper) and mapper._window is not None
    ratios, sizes, off = [], set(), 0
    for seed in range(30):
        np.random.seed(seed)
        out = mapper(dict(d))
        after = _rng_state()
        np.random.seed(seed)
        image, label = resize_then_crop(d, cfg)
        assert np.array_equal(after[0], _rng_state()[0]) and after[1] == _rng_state()[1], seed
        np.testing.assert_array_equal(out["sem_seg"].numpy(), label, err_msg=f"seed {seed}")
        diff = np.abs(out["image"].numpy().astype(np.int64) - image)
        assert diff.max() <= 1, (seed, diff.max())
        off += int((diff > 0).sum())
        sizes.add(resize_then_crop.crop_hw)
        ratios.append(out["sem_seg"].shape)
    assert len(sizes) > 1 or case.startswith("cityscapes")  # crops clipped to small images
    assert off < 0.02 * sum(np.prod(s) * 3 for s in ratios)  # almost all pixels equal


@pytest.mark.parametrize("ignored_columns", [3, 100])
def test_category_area_retries_are_the_same(tmp_path, ignored_columns):
    """Seeds whose first crops hold one category for more than 75% of their pixels: the crop is
    redrawn (up to 10 times) on the resized label, by both paths alike (the reference's
    Detectron2 augmentation calls ``np.unique`` once per draw). With the left 100 columns
    ignored, crops of ignore and one category are redrawn: the ignore label is not a
    category."""
    config, hw, base, _ = CASES["cityscapes_d2"]
    cfg = _cfg(config, base, (32, 64), color_aug=False)
    d = _write(tmp_path, hw, ignored_columns=ignored_columns)
    mapper = build_train_mapper(cfg)
    retried, real_unique = 0, np.unique
    for seed in range(20):
        np.random.seed(seed)
        out = mapper(dict(d))
        calls = []

        def counting_unique(*args, **kwargs):
            calls.append(1)
            return real_unique(*args, **kwargs)

        np.random.seed(seed)
        try:
            np.unique = counting_unique
            _, label = resize_then_crop(d, cfg)
        finally:
            np.unique = real_unique
        retried += len(calls) > 1
        np.testing.assert_array_equal(out["sem_seg"].numpy(), label, err_msg=f"seed {seed}")
    assert retried >= 3


@pytest.mark.parametrize("case", ["cityscapes_d2", "cityscapes_mmseg"])
def test_photometric_draws_and_labels_unchanged_with_color_aug(tmp_path, case):
    """With the photometric distortion on: the same labels, the same numbers drawn, and the same
    sample as the generic path (``crop_window_resize=False``) up to the distortion of one-level
    differences."""
    config, hw, base, crop = CASES[case]
    cfg = _cfg(config, base, crop, color_aug=True)
    d = _write(tmp_path, hw)
    fast = SemanticSegDatasetMapper(cfg, True)
    generic = SemanticSegDatasetMapper(cfg, True, crop_window_resize=False)
    assert fast._window is not None and generic._window is None
    for seed in range(15):
        np.random.seed(seed)
        a = fast(dict(d))
        state = _rng_state()
        np.random.seed(seed)
        b = generic(dict(d))
        assert np.array_equal(state[0], _rng_state()[0]), seed
        assert torch.equal(a["sem_seg"], b["sem_seg"]), seed
        diff = (a["image"].int() - b["image"].int()).abs()
        assert (diff <= 1).float().mean() > 0.98, seed


@pytest.mark.parametrize("crop_enabled", [True, False])
def test_other_label_types_and_no_crop(tmp_path, crop_enabled):
    """A 32-bit label (PNG mode I) keeps its values; without a crop the whole image is resized."""
    config, hw, base, crop = CASES["cityscapes_mmseg"]
    cfg = _cfg(config, base, crop, color_aug=False)
    cfg.INPUT.CROP.ENABLED = crop_enabled
    d = _write(tmp_path, hw, label_mode="I")
    mapper = build_train_mapper(cfg)
    assert mapper._window is not None
    for seed in range(10):
        np.random.seed(seed)
        out = mapper(dict(d))
        np.random.seed(seed)
        image, label = resize_then_crop(d, cfg)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), label)
        assert (label == 1000).any()
        diff = np.abs(out["image"].numpy().astype(np.int64) - image)
        assert diff.max() <= (1 if crop_enabled else 0)


def test_every_real_semantic_config_takes_the_crop_window_path():
    import glob

    configs = [
        c
        for pattern in ("Cityscapes-*", "ADE20K-*", "PascalContext-*")
        for c in glob.glob(os.path.join(ROOT, "configs", pattern, "*.yaml"))
        if not os.path.basename(c).startswith("Base-")
    ]
    assert len(configs) >= 8
    for config in configs:
        cfg = get_cfg()
        add_nrd_rsp_config(cfg)
        cfg.merge_from_file(config)
        mapper = build_train_mapper(cfg)
        assert mapper._window is not None, config


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
@pytest.mark.parametrize("grey", [False, True])
def test_panoptic_mapper_equals_detectron2_dataset_mapper(tmp_path, fmt, grey):
    """The Panoptic FPN mapper resizes the PIL image as read (``map_resize_first``): image, stuff
    map and instances equal those of Detectron2's ``DatasetMapper`` with the same
    augmentations, and the same numbers are drawn."""
    from detectron2.data import DatasetMapper

    from nrd_rsp.data import PanopticFPNDatasetMapper

    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    )
    cfg.INPUT.FORMAT = fmt
    cfg.INPUT.MIN_SIZE_TRAIN = (61, 80, 97)  # a 96 x 128 image up- and downscaled
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    h, w = 96, 128
    d = _write(tmp_path, (h, w))
    if grey:
        Image.open(d["file_name"]).convert("L").save(d["file_name"])
    poly = [[30.5, 20.0, 70.0, 22.5, 66.0, 50.0, 31.0, 47.0]]
    d["annotations"] = [
        {"bbox": [30, 20, 40, 30], "bbox_mode": 1, "category_id": 1, "segmentation": poly,
         "iscrowd": 0}
    ]  # fmt: skip
    d["image_id"] = 0
    mapper = PanopticFPNDatasetMapper(cfg, True)
    assert resize_first_augmentations(mapper.augmentations.augs, fmt) is not None
    stock = DatasetMapper(cfg, True)
    for seed in range(12):
        np.random.seed(seed)
        a = mapper(dict(d))
        state = _rng_state()
        np.random.seed(seed)
        b = stock(dict(d))
        assert np.array_equal(state[0], _rng_state()[0]), seed
        assert torch.equal(a["image"], b["image"]), seed
        assert torch.equal(a["sem_seg"], b["sem_seg"]), seed
        ia, ib = a["instances"], b["instances"]
        assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor)
        assert torch.equal(ia.gt_classes, ib.gt_classes)
        for pa, pb in zip(ia.gt_masks.polygons, ib.gt_masks.polygons):
            assert all(np.array_equal(x, y) for x, y in zip(pa, pb))
