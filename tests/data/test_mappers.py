"""Training mappers: augmentation output shapes, label/image alignment, padding, errors;
photometric distortion (RGB/BGR equivalence, known values, parameter distributions) and the
keep-ratio random resize for portrait and landscape images."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data import PanopticFPNDatasetMapper, SemanticSegDatasetMapper, build_train_mapper
from nrd_rsp.data.mappers import (
    FormatAwareSaturation,
    PhotoMetricDistortion,
    PhotoMetricTransform,
    RandomResizeKeepRatio,
    build_photometric_augmentations,
)


def _cfg(**overrides):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-SemSeg.yaml")
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def _write_sample(tmp_path, h=100, w=150, label_shape=None):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    # Label = a function of the pixel column so alignment survives every geometric augmentation.
    label = np.tile((np.arange(w) * 8 // w).astype(np.uint8), (h, 1))
    # Encode the same column class into the red channel: after augmentation they must still agree.
    img[:, :, 2] = label * 30
    if label_shape is not None:
        label = cv2.resize(label, label_shape[::-1], interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "img.png"), img)  # BGR on disk; red = channel 2
    cv2.imwrite(str(tmp_path / "lbl.png"), label)
    return {
        "file_name": str(tmp_path / "img.png"),
        "sem_seg_file_name": str(tmp_path / "lbl.png"),
        "height": h,
        "width": w,
    }


def test_semantic_mapper_shapes_alignment_and_padding(tmp_path):
    cfg = _cfg(**{"INPUT.COLOR_AUG": "False"})
    mapper = SemanticSegDatasetMapper(cfg, True)
    d = _write_sample(tmp_path)
    for _ in range(10):
        out = mapper(d)
        img, seg = out["image"], out["sem_seg"]
        assert img.dtype == torch.uint8 and seg.dtype == torch.int64
        assert img.shape[0] == 3 and img.shape[1:] == seg.shape
        assert seg.shape[0] % 128 == 0 and seg.shape[1] % 128 == 0  # INPUT.SIZE_DIVISIBILITY
        valid = seg != 255
        assert valid.any()
        assert set(seg[valid].unique().tolist()) <= set(range(8))
        # cfg.INPUT.FORMAT is RGB -> red is channel 0; nearest-resized label agrees with the image
        # almost everywhere (bilinear image resize blurs class borders only).
        red = img[0][valid].float()
        agree = (red - seg[valid].float() * 30).abs() <= 16
        assert agree.float().mean() > 0.9
        # padding: ignore label and zero image
        assert (img[:, ~valid] == 0).all()


def test_semantic_mapper_crop_and_scale_range(tmp_path):
    cfg = _cfg(**{"INPUT.SIZE_DIVISIBILITY": "-1", "INPUT.CROP.SIZE": "(64, 96)"})
    mapper = SemanticSegDatasetMapper(cfg, True)
    d = _write_sample(tmp_path, h=128, w=160)
    for _ in range(10):
        out = mapper(d)
        h, w = out["sem_seg"].shape
        assert h <= 64 and w <= 96


def test_semantic_mapper_rejects_label_of_other_size(tmp_path):
    mapper = SemanticSegDatasetMapper(_cfg(), True)
    d = _write_sample(tmp_path, label_shape=(50, 75))
    with pytest.raises(ValueError, match="lbl.png|img.png"):
        mapper(d)


def test_build_train_mapper_by_name():
    assert isinstance(build_train_mapper(_cfg()), SemanticSegDatasetMapper)
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-Panoptic-FPN.yaml")
    assert isinstance(build_train_mapper(cfg), PanopticFPNDatasetMapper)
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(ValueError, match="nope"):
        build_train_mapper(cfg)


def test_panoptic_fpn_mapper_gives_instances_and_stuff_map(tmp_path):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/Toy/Base-Toy-Panoptic-FPN.yaml")
    mapper = PanopticFPNDatasetMapper(cfg, True)
    h, w = 96, 120
    img = np.full((h, w, 3), 90, np.uint8)
    stuff = np.full((h, w), 2, np.uint8)
    stuff[20:50, 30:70] = 0  # thing pixels
    cv2.imwrite(str(tmp_path / "i.png"), img)
    cv2.imwrite(str(tmp_path / "s.png"), stuff)
    poly = [[30.0, 20.0, 70.0, 20.0, 70.0, 50.0, 30.0, 50.0]]
    ann = {"bbox": [30, 20, 40, 30], "bbox_mode": 1, "category_id": 1, "segmentation": poly,
           "iscrowd": 0}  # fmt: skip
    d = {"file_name": str(tmp_path / "i.png"), "sem_seg_file_name": str(tmp_path / "s.png"),
         "height": h, "width": w, "image_id": 0, "annotations": [ann]}  # fmt: skip
    out = mapper(d)
    inst = out["instances"]
    assert len(inst) == 1 and inst.gt_classes.tolist() == [1]
    assert inst.gt_masks.polygons or inst.gt_masks.tensor.numel()
    assert out["image"].shape[1:] == out["sem_seg"].shape
    assert set(out["sem_seg"].unique().tolist()) <= {0, 2}


# --------------------------------------------------------------------------------------------
# Photometric distortion: RGB / BGR equivalence, known values, parameter distributions


def _colourful(h=24, w=32, seed=0):
    """Saturated and grey pixels of every hue (so luminance weights and hue shifts matter)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[:4, :, :] = [255, 0, 0]
    img[4:8, :, :] = [10, 200, 40]
    return img


def _apply(augs, image, seed):
    np.random.seed(seed)
    aug_input = T.AugInput(image.copy())
    T.AugmentationList(augs)(aug_input)
    return aug_input.image


@pytest.mark.parametrize("kind", ["detectron2", "mmseg"])
def test_photometric_same_for_rgb_and_bgr_up_to_channel_order(kind):
    rgb = _colourful()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    augs = {f: build_photometric_augmentations(_cfg(**{"INPUT.FORMAT": f,
                                                       "INPUT.COLOR_AUG_TYPE": kind}))
            for f in ("RGB", "BGR")}  # fmt: skip
    changed = 0
    for seed in range(40):
        out_rgb = _apply(augs["RGB"], rgb, seed)
        out_bgr = _apply(augs["BGR"], bgr, seed)
        # float summation order of the luminance may move a value by one grey level
        diff = np.abs(out_rgb.astype(int) - out_bgr[:, :, ::-1].astype(int))
        assert diff.max() <= 1, (kind, seed)
        changed += int((out_rgb != rgb).any())
    assert changed > 20  # the distortion really ran


def test_detectron2_saturation_would_fail_the_equivalence():
    """The check above is sharp: Detectron2's RandomSaturation (RGB weights on BGR) fails it."""
    rgb = _colourful()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    ours = [_apply([FormatAwareSaturation(0.5, 0.5, image_format=f)], x, 0)
            for f, x in (("RGB", rgb), ("BGR", bgr))]  # fmt: skip
    theirs = [_apply([T.RandomSaturation(0.5, 0.5)], x, 0) for x in (rgb, bgr)]
    assert np.abs(ours[0].astype(int) - ours[1][:, :, ::-1]).max() <= 1
    assert np.abs(theirs[0].astype(int) - theirs[1][:, :, ::-1]).max() > 20
    # Luminance of pure red is 0.299 * 255 = 76.2: w = 0.5 gives (165.6, 38.1, 38.1).
    assert ours[0][0, 0].tolist() == [165, 38, 38] and ours[1][0, 0].tolist() == [38, 38, 165]


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_mmseg_photometric_steps_known_values(fmt):
    def run(pixels, **params):
        img = np.array([pixels], dtype=np.uint8)
        img = img if fmt == "RGB" else img[:, :, ::-1]
        out = PhotoMetricTransform(image_format=fmt, **params).apply_image(img.copy())
        return (out if fmt == "RGB" else out[:, :, ::-1]).astype(int).tolist()[0]

    # brightness: x + beta, clipped, truncated
    assert run([[100, 250, 5]], brightness=10.7) == [[110, 255, 15]]
    assert run([[100, 250, 5]], brightness=-10.7) == [[89, 239, 0]]
    # contrast: alpha * x, clipped
    assert run([[100, 200, 0]], contrast=1.5) == [[150, 255, 0]]
    # hue: +60 OpenCV units (120 degrees) turns red into green, green into blue
    assert run([[255, 0, 0], [0, 255, 0]], hue=60) == [[0, 255, 0], [0, 0, 255]]
    assert run([[255, 0, 0]], hue=-60) == [[0, 0, 255]]  # -120 degrees: red -> blue
    # saturation: S * s; grey has none, (200, 100, 100) has S = 127.5 -> 64 -> min 150
    assert run([[90, 90, 90]], saturation=1.5) == [[90, 90, 90]]
    got = run([[200, 100, 100]], saturation=0.5)[0]
    assert got[0] == 200 and abs(got[1] - 150) <= 1 and got[1] == got[2]
    # contrast before the HSV steps: (255, 200, 200), S = 55 -> 110, min 255 - 110 = 145;
    # after them: S = 153 -> 255 (clipped) gives (250, 0, 0), then x2 -> (255, 0, 0)
    first = run([[250, 100, 100]], contrast=2.0, contrast_first=True, saturation=2.0)[0]
    last = run([[250, 100, 100]], contrast=2.0, contrast_first=False, saturation=2.0)
    assert first[0] == 255 and abs(first[1] - 145) <= 1 and first[1] == first[2]
    assert last == [[255, 0, 0]]


def test_mmseg_photometric_parameter_distributions():
    aug = PhotoMetricDistortion(image_format="BGR")
    image = _colourful()
    np.random.seed(0)
    draws = [aug.get_transform(image) for _ in range(4000)]

    def values(name):
        return np.array([getattr(t, name) for t in draws if getattr(t, name) is not None])

    for name, lo, hi in [("brightness", -32, 32), ("contrast", 0.5, 1.5),
                         ("saturation", 0.5, 1.5), ("hue", -18, 17)]:  # fmt: skip
        v = values(name)
        assert abs(len(v) / len(draws) - 0.5) < 0.04, name  # each step with p = 0.5
        assert v.min() >= lo and v.max() <= hi, name
        # uniform over the range: mean in the middle, both ends reached
        span = hi - lo
        assert abs(v.mean() - (lo + hi) / 2) < 0.03 * span, name
        assert v.min() < lo + 0.02 * span and v.max() > hi - 0.02 * span, name
    hue = values("hue")
    assert hue.dtype.kind == "i" and set(hue.tolist()) == set(range(-18, 18))
    first = np.mean([t.contrast_first for t in draws])
    assert abs(first - 0.5) < 0.04


def test_mmseg_photometric_draws_in_mmseg_order():
    """Same seed, mmseg's sequence of NumPy draws (mmseg/datasets/pipelines/transforms.py):
    brightness flag [+ value], contrast-first flag, [contrast], saturation flag [+ value], hue
    flag [+ integer], [contrast]."""
    aug = PhotoMetricDistortion(image_format="RGB")
    rand = np.random
    for seed in range(30):
        np.random.seed(seed)
        t = aug.get_transform(_colourful())
        np.random.seed(seed)
        expect = {"brightness": rand.uniform(-32, 32) if rand.randint(2) else None}
        first = rand.randint(2) == 1
        if first:
            expect["contrast"] = rand.uniform(0.5, 1.5) if rand.randint(2) else None
        expect["saturation"] = rand.uniform(0.5, 1.5) if rand.randint(2) else None
        expect["hue"] = rand.randint(-18, 18) if rand.randint(2) else None
        if not first:
            expect["contrast"] = rand.uniform(0.5, 1.5) if rand.randint(2) else None
        assert t.contrast_first == first
        for k, v in expect.items():
            assert getattr(t, k) == v, (seed, k)


def test_detectron2_photometric_parameter_distributions():
    augs = build_photometric_augmentations(_cfg(**{"INPUT.FORMAT": "BGR"}))
    assert [type(a.aug) for a in augs] == [T.RandomBrightness, T.RandomContrast,
                                           FormatAwareSaturation]  # fmt: skip
    image = _colourful()
    np.random.seed(0)
    weights = [[], [], []]
    for _ in range(3000):
        for i, aug in enumerate(augs):
            t = aug.get_transform(image)
            if isinstance(t, T.BlendTransform):
                weights[i].append(t.dst_weight)
            else:
                assert isinstance(t, T.NoOpTransform)
    for w in weights:
        assert abs(len(w) / 3000 - 0.5) < 0.04
        w = np.array(w)
        assert 0.8 <= w.min() < 0.81 and 1.19 < w.max() <= 1.2 and abs(w.mean() - 1.0) < 0.01


def test_unknown_color_aug_type_and_format():
    with pytest.raises(ValueError, match="COLOR_AUG_TYPE 'hsv'"):
        build_photometric_augmentations(_cfg(**{"INPUT.COLOR_AUG_TYPE": "hsv"}))
    with pytest.raises(ValueError, match="INPUT.FORMAT 'RGB' or 'BGR'"):
        build_photometric_augmentations(_cfg(**{"INPUT.FORMAT": "L"}))
    assert build_photometric_augmentations(_cfg(**{"INPUT.COLOR_AUG": "False"})) == []


@pytest.mark.parametrize("kind", ["detectron2", "mmseg"])
def test_semantic_mapper_rgb_bgr_equivalence(tmp_path, kind):
    d = _write_sample(tmp_path, h=128, w=160)
    outs = {}
    for fmt in ("RGB", "BGR"):
        mapper = SemanticSegDatasetMapper(
            _cfg(**{"INPUT.FORMAT": fmt, "INPUT.COLOR_AUG_TYPE": kind}), True
        )
        outs[fmt] = []
        for seed in range(6):
            np.random.seed(seed)
            out = mapper(d)
            outs[fmt].append((out["image"], out["sem_seg"]))
    for (img_rgb, seg_rgb), (img_bgr, seg_bgr) in zip(outs["RGB"], outs["BGR"]):
        assert torch.equal(seg_rgb, seg_bgr)
        assert (img_rgb.int() - img_bgr.flip(0).int()).abs().max() <= 1


# --------------------------------------------------------------------------------------------
# Random keep-ratio resize: the same rule for portrait and landscape images


def _mmseg_rescaled_size(h, w, ratio, img_scale=(2048, 512)):
    """mmseg Resize(img_scale, ratio_range, keep_ratio=True): random_sample_ratio then
    mmcv.rescale_size (long side <= max(scale), short side <= min(scale))."""
    scale = int(img_scale[0] * ratio), int(img_scale[1] * ratio)
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def test_resize_keep_ratio_follows_mmseg_for_both_orientations():
    aug = RandomResizeKeepRatio(min_scale=0.5, max_scale=2.0, base_size=(512, 2048))
    for h, w in [(512, 683), (683, 512), (375, 500), (500, 375), (256, 1024), (1024, 256)]:
        for ratio in (0.5, 0.77, 1.0, 1.31, 2.0):
            t = aug.resize_for((h, w), ratio)
            long_side, short_side = max(t.new_h, t.new_w), min(t.new_h, t.new_w)
            # long side <= 2048 r, short side <= 512 r (up to rounding), one of them reached
            assert long_side <= 2048 * ratio + 0.5 and short_side <= 512 * ratio + 0.5
            assert long_side >= 2048 * ratio - 0.5 or short_side >= 512 * ratio - 0.5
            assert abs(t.new_h / t.new_w - h / w) < 2 / min(t.new_h, t.new_w)  # aspect kept
            # mmseg truncates the scale 2048 r x 512 r to integers first: < 0.4% apart
            ref = _mmseg_rescaled_size(h, w, ratio)
            assert abs(t.new_h - ref[0]) <= max(1, 0.004 * ref[0]), (h, w, ratio)
            assert abs(t.new_w - ref[1]) <= max(1, 0.004 * ref[1]), (h, w, ratio)
            # the transposed image gets the transposed size
            tt = aug.resize_for((w, h), ratio)
            assert (tt.new_h, tt.new_w) == (t.new_w, t.new_h)
    # A 1024 x 256 portrait at ratio 1: 2048 x 512 (long side 2048). Detectron2's ResizeScale
    # with target (512, 2048) gave 512 x 128, 4x smaller.
    t = aug.resize_for((1024, 256), 1.0)
    assert (t.new_h, t.new_w) == (2048, 512)
    old = T.ResizeScale(0.5, 2.0, 512, 2048)._get_resize(np.zeros((1024, 256, 3), np.uint8), 1.0)
    assert (old.new_h, old.new_w) == (512, 128)


@pytest.mark.parametrize("shape", [(683, 512), (512, 683)])
def test_ade20k_scale_range_portrait_and_landscape(shape):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file("configs/ADE20K-SemanticSegmentation/Base-ADE20K.yaml")
    mapper = SemanticSegDatasetMapper(cfg, True)
    resize = mapper.augmentations.augs[0]
    assert isinstance(resize, RandomResizeKeepRatio) and resize.base_size == (512, 2048)
    image = np.zeros(shape + (3,), np.uint8)
    np.random.seed(0)
    factors = np.array([resize.get_transform(image).new_h / shape[0] for _ in range(2000)])
    # short side 512 and long side 683 <= 4 * 512: the factor is the ratio itself, 0.5-2.0,
    # for both orientations (ResizeScale gave portrait images 0.375-1.5)
    assert factors.min() >= 0.5 - 1e-3 and factors.max() <= 2.0 + 1e-3
    assert factors.min() < 0.52 and factors.max() > 1.98
    assert abs(np.median(factors) - 1.25) < 0.05
