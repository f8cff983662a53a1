"""Bad input to the data pipeline: image modes, corrupt/mismatched files (skipped in training with
one warning, named at test time), the skipped-fraction limit, a mapper bug (not skipped), a
deterministic resumable sample stream with and without aspect-ratio grouping, and a
property-based test of both mappers."""

import itertools
import logging
import os
import re
import traceback

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from run_helpers import ROOT

from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.data.checked_reading import apply_augmentations_checked
from nrd_rsp.data.mappers import (
    CheckedDatasetMapper,
    PanopticFPNDatasetMapper,
    SemanticSegDatasetMapper,
)
from nrd_rsp.data.resumable_loader import build_resumable_train_loader
from nrd_rsp.data.resumable_sampling import GroupedResumableSampler, ResumableTrainingSampler
from nrd_rsp.engine import one_line
from nrd_rsp.errors import BadSampleError


def _semantic_mapper(fmt="RGB", augs=()):
    return SemanticSegDatasetMapper(
        is_train=True, augmentations=list(augs), image_format=fmt, ignore_label=255
    )


def _panoptic_mapper(fmt="RGB", augs=()):
    return PanopticFPNDatasetMapper(
        is_train=True, augmentations=list(augs), image_format=fmt, use_instance_mask=True
    )


MAPPERS = {"semantic": _semantic_mapper, "panoptic": _panoptic_mapper}

PALETTE = [0, 0, 0, 200, 10, 20, 30, 220, 40, 50, 60, 240] + [0] * (256 * 3 - 12)


def _write_label(path, label, mode="L"):
    img = Image.fromarray(label.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette(PALETTE)  # colours differ from the indices: the indices must be read
    img.save(path)


def _dict(tmp_path, h=24, w=30, image_mode="RGB", label_shape=None, name="a", annotations=()):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img_path, lbl_path = str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_label.png")
    if image_mode == "RGB":
        Image.fromarray(rgb).save(img_path)
    elif image_mode == "L":
        Image.fromarray(rgb[:, :, 0]).save(img_path)
    elif image_mode == "RGBA":
        alpha = rng.integers(0, 255, (h, w, 1), dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], 2), mode="RGBA").save(img_path)
    elif image_mode == "P":
        p = Image.fromarray((rgb[:, :, 0] % 4).astype(np.uint8), mode="L").convert("P")
        p.putpalette(PALETTE)
        p.save(img_path)
    lh, lw = label_shape or (h, w)
    label = (np.arange(lh * lw).reshape(lh, lw) % 3).astype(np.uint8)
    _write_label(lbl_path, label)
    return {
        "file_name": img_path,
        "sem_seg_file_name": lbl_path,
        "height": h,
        "width": w,
        "image_id": name,
        "annotations": list(annotations),
    }


def _expected_rgb(path):
    with Image.open(path) as im:
        if im.mode == "L":
            a = np.asarray(im)
            return np.stack([a, a, a], 2)
        if im.mode == "RGBA":
            return np.asarray(im)[:, :, :3]  # alpha is dropped
        if im.mode == "P":
            return np.asarray(PALETTE, np.uint8).reshape(256, 3)[np.asarray(im)]
        return np.asarray(im)


@pytest.mark.parametrize("kind", sorted(MAPPERS))
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_image_modes_are_converted(tmp_path, kind, mode, fmt):
    d = _dict(tmp_path, image_mode=mode)
    out = MAPPERS[kind](fmt)(d)
    img = out["image"].numpy().transpose(1, 2, 0)
    expected = _expected_rgb(d["file_name"])
    assert img.shape == (24, 30, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, expected if fmt == "RGB" else expected[:, :, ::-1])
    assert out["sem_seg"].shape == (24, 30)


@pytest.mark.parametrize("kind", sorted(MAPPERS))
def test_palette_labels_give_their_indices(tmp_path, kind):
    d = _dict(tmp_path)
    label = (np.arange(24 * 30).reshape(24, 30) % 3).astype(np.uint8)
    _write_label(d["sem_seg_file_name"], label, mode="P")
    np.testing.assert_array_equal(MAPPERS[kind]()(d)["sem_seg"].numpy(), label)


def _damage(tmp_path, d, how):
    if how == "missing image":
        os.remove(d["file_name"])
    elif how == "garbage image":
        with open(d["file_name"], "wb") as f:
            f.write(os.urandom(500))
    elif how == "truncated jpeg":
        path = d["file_name"][:-4] + ".jpg"
        cv2.imwrite(path, np.random.default_rng(1).integers(0, 255, (24, 30, 3), dtype=np.uint8))
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        d["file_name"] = path
    elif how == "label of another size":
        _write_label(d["sem_seg_file_name"], np.zeros((d["height"] + 1, d["width"]), np.uint8))
    elif how == "image of another size than the dataset says":
        d["height"] += 1
    elif how == "colour label":
        Image.fromarray(
            np.random.default_rng(2).integers(0, 255, (24, 30, 3), dtype=np.uint8)
        ).save(d["sem_seg_file_name"])
    elif how == "corrupt label":
        with open(d["sem_seg_file_name"], "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    return d["sem_seg_file_name"] if "label" in how else d["file_name"]


DAMAGES = [
    "missing image",
    "garbage image",
    "truncated jpeg",
    "label of another size",
    "image of another size than the dataset says",
    "colour label",
    "corrupt label",
]


@pytest.mark.parametrize("kind", sorted(MAPPERS))
@pytest.mark.parametrize("how", DAMAGES)
def test_bad_files_raise_bad_sample_error_naming_the_file(tmp_path, kind, how):
    d = _dict(tmp_path)
    bad_file = _damage(tmp_path, d, how)
    with pytest.raises(BadSampleError) as e:
        MAPPERS[kind]()(d)
    assert bad_file in str(e.value) and e.value.file_name == bad_file


def _cfg(**opts):
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/Toy/Base-Toy-SemSeg.yaml"))
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SEED", "3"])
    for k, v in opts.items():
        cfg.merge_from_list([k, v])
    return cfg


def _dataset(tmp_path, n=10, bad=(3, 7)):
    dicts = [_dict(tmp_path, name=f"s{i}") for i in range(n)]
    bad_files = [
        _damage(tmp_path, dicts[i], "garbage image" if j % 2 == 0 else "label of another size")
        for j, i in enumerate(bad)
    ]
    return dicts, bad_files


def _mapper(cfg):
    # Random resize + crop + flip + colour jitter: every RNG draw must come from the sample seed.
    return SemanticSegDatasetMapper(cfg, True)


def test_training_loader_skips_bad_samples_with_one_warning_each(tmp_path, caplog):
    dicts, bad_files = _dataset(tmp_path)
    cfg = _cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "INPUT.SIZE_DIVISIBILITY": "16",
            "DATALOADER.MAX_SKIPPED_FRACTION": "0.5",
            "DATALOADER.SKIP_CHECK_MIN_SAMPLES": "4",
        }
    )
    loader = build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts)
    good = {d["file_name"] for i, d in enumerate(dicts) if i not in (3, 7)}
    with caplog.at_level(logging.WARNING):
        it = iter(loader)
        batches = [next(it) for _ in range(15)]  # 30 samples = 3 epochs
    assert all(len(b) == 2 for b in batches)
    assert all(
        s["file_name"] in good and s["image"].shape == (3, 16, 16) for b in batches for s in b
    )
    for f in bad_files:  # one warning per file, although each is drawn 3 times
        assert sum(f in r.getMessage() for r in caplog.records) == 1
    assert loader.num_skipped >= 6 and loader.num_seen == 30 + loader.num_skipped
    assert loader.fatal_error is None


def test_too_many_skipped_samples_is_an_error_naming_the_count_and_key(tmp_path):
    dicts, _ = _dataset(tmp_path, n=6, bad=(0, 1, 2))
    cfg = _cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "DATALOADER.MAX_SKIPPED_FRACTION": "0.1",
            "DATALOADER.SKIP_CHECK_MIN_SAMPLES": "8",
        }
    )
    loader = build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts)
    it = iter(loader)
    while loader.fatal_error is None:
        assert loader.num_seen < 8 + 2 * 16  # set at the first batch past SKIP_CHECK_MIN_SAMPLES
        next(it)
        if loader.num_seen < 8:
            assert loader.fatal_error is None  # not before SKIP_CHECK_MIN_SAMPLES
    msg = loader.fatal_error
    m = re.search(r"(\d+) of the (\d+) training samples loaded so far were unusable", msg)
    bad, seen = int(m.group(1)), int(m.group(2))
    assert seen >= 8 and bad / seen > 0.1 and bad <= loader.num_skipped
    assert "DATALOADER.MAX_SKIPPED_FRACTION 0.1" in msg and "s0.png" in msg


def _stream(loader, n):
    it = iter(loader)
    return [[(s["file_name"], s["image"], s["sem_seg"]) for s in next(it)] for _ in range(n)]


def test_sample_stream_is_a_pure_function_of_position(tmp_path):
    dicts, _ = _dataset(tmp_path, n=7, bad=(2,))
    cfg = _cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "INPUT.SIZE_DIVISIBILITY": "16",
        }
    )
    full = _stream(build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts), 9)
    # Other RNG consumers in between do not matter; two workers give the same batches.
    np.random.rand(5), torch.rand(3)
    cfg.DATALOADER.NUM_WORKERS = 2
    workers = _stream(build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts), 9)
    # Resuming at iteration 5 continues the same stream.
    cfg.DATALOADER.NUM_WORKERS = 0
    resumed_loader = build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts)
    resumed_loader.configure(start_iter=5, seed=3)
    resumed = _stream(resumed_loader, 4)
    for a, b in zip(full, workers):
        for (fa, ia, sa), (fb, ib, sb) in zip(a, b):
            assert fa == fb and torch.equal(ia, ib) and torch.equal(sa, sb)
    for a, b in zip(full[5:], resumed):
        for (fa, ia, sa), (fb, ib, sb) in zip(a, b):
            assert fa == fb and torch.equal(ia, ib) and torch.equal(sa, sb)
    # Each epoch visits every good sample; different seeds give different orders.
    first_epoch = [f for b in full[:3] for f, _, _ in b][:6]
    other = build_resumable_train_loader(cfg, _mapper(cfg), dataset=dicts)
    other.configure(start_iter=0, seed=4)
    assert [f for b in _stream(other, 3) for f, _, _ in b][:6] != first_epoch


class _BuggyMapper:
    """The semantic mapper with a bug that hits one sample in ten ('s3'): a KeyError."""

    def __init__(self, cfg):
        self.mapper = _mapper(cfg)

    def __call__(self, d):
        if d["image_id"] == "s3":
            return d["sem_seg_label_file"]  # a typo'd key: KeyError
        return self.mapper(d)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_mapper_bug_stops_training_with_its_traceback(tmp_path, workers):
    dicts, _ = _dataset(tmp_path, bad=())
    cfg = _cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "DATALOADER.NUM_WORKERS": str(workers),
        }
    )
    loader = build_resumable_train_loader(cfg, _BuggyMapper(cfg), dataset=dicts)
    it = iter(loader)
    with pytest.raises(KeyError) as e:
        for _ in range(5):  # one epoch: 's3' is drawn
            next(it)
    if workers:  # re-raised by the DataLoader, with the worker's traceback in the message
        assert "Traceback" in str(e.value) and "sem_seg_label_file" in str(e.value)
        assert "in __call__" in str(e.value)
    else:
        assert e.value.args == ("sem_seg_label_file",)
        assert "__call__" in [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert loader.num_skipped == 0 and loader.skipped_files == {}


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


# Mixed orientations: every third image is portrait. The fake mapper reads no file but draws
# from the global RNGs, which ResumableMapDataset seeds from (seed, position).
def _oriented_dicts(n=13):
    return [
        {
            "file_name": f"o{i}.png",
            "image_id": i,
            "height": 40 if i % 3 else 60,
            "width": 60 if i % 3 else 40,
        }
        for i in range(n)
    ]


def _oriented_mapper(d):
    if d["file_name"] == "o4.png":
        raise BadSampleError("cannot read image 'o4.png'", "o4.png")
    return {
        "file_name": d["file_name"],
        "width": d["width"],
        "height": d["height"],
        "draw": (float(torch.rand(1)), float(np.random.rand())),
    }


def _oriented_stream(cfg, n, start_iter=0, seed=3):
    loader = build_resumable_train_loader(cfg, _oriented_mapper, dataset=_oriented_dicts())
    loader.configure(start_iter=start_iter, seed=seed)
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    return [[(s["file_name"], s["width"] > s["height"], s["draw"]) for s in b] for b in batches]


def test_grouped_batches_are_a_pure_function_of_seed_and_iteration():
    cfg = _cfg(**{"SOLVER.IMS_PER_BATCH": "3", "DATALOADER.ASPECT_RATIO_GROUPING": "True"})
    full = _oriented_stream(cfg, 12)
    assert all(len({landscape for _, landscape, _ in b}) == 1 for b in full)  # one orientation each
    assert {b[0][1] for b in full} == {True, False}
    assert "o4.png" not in {f for b in full for f, _, _ in b}  # substituted, same orientation
    # The same with two workers, and resumed at iterations 1, 4 and 7 (some samples of the
    # batches after them were drawn before them).
    cfg.DATALOADER.NUM_WORKERS = 2
    assert _oriented_stream(cfg, 12) == full
    cfg.DATALOADER.NUM_WORKERS = 0
    for start in (1, 4, 7):
        assert _oriented_stream(cfg, 4, start_iter=start) == full[start : start + 4], start
    assert _oriented_stream(cfg, 3, seed=4) != full[:3]
    # They are the batches of Detectron2's AspectRatioGroupedDataset (DETERMINISTIC off) when
    # the samples arrive in stream order (no workers) ...
    cfg.DATALOADER.DETERMINISTIC = False
    assert _oriented_stream(cfg, 12) == full
    # ... and without grouping the batches would mix orientations.
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    assert any(len({landscape for _, landscape, _ in b}) == 2 for b in _oriented_stream(cfg, 12))


def test_grouped_sampler_shards_positions_by_rank():
    groups = [i % 3 == 0 for i in range(13)]
    base = ResumableTrainingSampler(size=13, seed=3)
    base.rank, base.world_size = 1, 2
    sampler = GroupedResumableSampler(base=base, group_ids=groups, batch_size=2)
    batches = list(itertools.islice(sampler.batches(), 20))
    assert all(p % 2 == 1 for b in batches for p, _ in b)
    assert all(len({groups[i] for _, i in b}) == 1 for b in batches)
    positions = sorted(p for b in batches for p, _ in b)
    assert positions[:10] == list(range(1, 21, 2))  # a bucket waits; no position is lost
    sampler.start_iter = 7
    assert list(itertools.islice(sampler, 6)) == [x for b in batches[7:10] for x in b]


def test_evaluation_names_a_corrupt_test_image(tmp_path):
    d = _dict(tmp_path)
    bad = _damage(tmp_path, d, "garbage image")
    cfg = _cfg(**{"DATALOADER.NUM_WORKERS": "1"})
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
    d = _dict(
        tmp_path,
        h=h,
        w=w,
        image_mode=mode,
        name=f"p{seed}",
        annotations=_annotations(layout, h, w, rng),
    )
    if corrupt:
        _damage(tmp_path, d, corrupt)
    cfg = _cfg(
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
            cfg, mapper, dataset=[d, _dict(tmp_path, name=f"good{seed}")]
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
