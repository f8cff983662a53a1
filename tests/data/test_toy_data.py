"""The built-in toy data: valid COCO panoptic / Panoptic FPN / semantic formats, deterministic,
with thin structures, registered for Detectron2 (catalogs, metadata, evaluators)."""

import contextlib
import filecmp
import io
import json
import multiprocessing as mp
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import nrd_rsp  # noqa: F401  (registers the datasets)
from nrd_rsp.data import toy
from nrd_rsp.data.datasets.register_toy import (
    configure_toy_datasets_from_cfg,
    register_toy_datasets,
    toy_params_from_cfg,
)
from nrd_rsp.data.panoptic_separated import panoptic_to_stuff_semantic, stuff_id_map
from nrd_rsp.data.toy import write as toy_write
from nrd_rsp.data.toy.spec import TOY_CATEGORIES, TOY_DATASET_NAMES, ToyParams, toy_split_paths

torch.set_num_threads(1)

PARAMS = dict(num_train=8, num_val=4, image_size=(80, 96), seed=3)
SEM_CLASSES = ["road", "grass", "wall", "sky", "pole", "disk", "box", "triangle"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """A small toy dataset registered under a private $DETECTRON2_DATASETS."""
    root = tmp_path_factory.mktemp("d2datasets")
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("DETECTRON2_DATASETS", str(root))
        register_toy_datasets(**PARAMS)
        dataset_dir = toy.ensure_toy_dataset(**PARAMS)
        assert dataset_dir.startswith(str(root))
        yield dataset_dir
    register_toy_datasets()  # back to the import-time registration


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _pan_ids(path):
    from panopticapi.utils import rgb2id

    return rgb2id(_read(path).astype(np.uint32))


def _load_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("split", ["train", "val"])
def test_panoptic_gt_is_valid_coco_panoptic(toy_dir, split):
    from panopticapi.evaluation import pq_compute

    p = toy_split_paths(toy_dir, split)
    with contextlib.redirect_stdout(io.StringIO()):
        res = pq_compute(
            p["panoptic_json"], p["panoptic_json"], p["panoptic_root"], p["panoptic_root"]
        )
    for key in ("All", "Things", "Stuff"):
        assert res[key]["pq"] == pytest.approx(1.0), key
        assert res[key]["n"] >= 1
    obj = _load_json(p["panoptic_json"])
    cats = {c["id"]: c for c in obj["categories"]}
    assert {c: cats[c]["isthing"] for c in cats} == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}
    n = PARAMS["num_train"] if split == "train" else PARAMS["num_val"]
    assert len(obj["images"]) == len(obj["annotations"]) == n
    for img, ann in zip(obj["images"], obj["annotations"]):
        assert (img["height"], img["width"]) == PARAMS["image_size"]
        pan = _pan_ids(os.path.join(p["panoptic_root"], ann["file_name"]))
        ids, counts = np.unique(pan, return_counts=True)
        segs = {s["id"]: s for s in ann["segments_info"]}
        assert set(ids.tolist()) == set(segs)  # every pixel labelled, no void, no extra segment
        for i, c in zip(ids.tolist(), counts.tolist()):
            s = segs[i]
            assert s["area"] == c and s["iscrowd"] == 0
            ys, xs = np.nonzero(pan == i)
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        stuff_cats = [
            segs[i]["category_id"] for i in segs if not cats[segs[i]["category_id"]]["isthing"]
        ]
        assert len(stuff_cats) == len(set(stuff_cats))  # one segment per stuff class


def test_generation_is_deterministic(tmp_path):
    params = ToyParams(3, 2, (64, 80), seed=7)
    for name in ("a", "b"):
        toy.generate_toy_dataset(str(tmp_path / name), params, progress=False)
    toy.generate_toy_dataset(str(tmp_path / "c"), ToyParams(3, 2, (64, 80), seed=8), progress=False)
    files = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path / "a")
        for d, _, fs in os.walk(tmp_path / "a")
        for f in fs
    )
    assert len(files) == 1 + 4 + 5 * 4  # params.json, 2 x 2 JSONs, 5 images x 4 kinds
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert mismatch == [] and errors == []
    image = os.path.join("images", "train", "000000.jpg")
    assert not filecmp.cmp(tmp_path / "a" / image, tmp_path / "c" / image, shallow=False)
    assert not np.array_equal(_read(tmp_path / "a" / image), _read(tmp_path / "c" / image))
    # image i depends on (seed, split, i) only: more images leave the first ones unchanged
    toy.generate_toy_dataset(str(tmp_path / "d"), ToyParams(4, 2, (64, 80), seed=7), progress=False)
    assert filecmp.cmp(tmp_path / "a" / image, tmp_path / "d" / image, shallow=False)


def test_thin_structures_in_every_image(toy_dir):
    pole = SEM_CLASSES.index("pole")
    run_lengths = set()
    for split in ("train", "val"):
        root = toy_split_paths(toy_dir, split)["sem_seg_root"]
        for f in sorted(os.listdir(root)):
            m = (_read(os.path.join(root, f)) == pole).astype(np.uint8)
            assert m.sum() >= 10, f
            # nowhere 4 px thick: a 4x4 erosion removes the whole class
            assert not cv2.erode(m, np.ones((4, 4), np.uint8)).any(), f
            for row in m:  # horizontal widths of the vertical poles
                padded = np.concatenate([[0], row, [0]])
                edges = np.flatnonzero(np.diff(padded))
                run_lengths.update((edges[1::2] - edges[::2]).tolist())
    assert {1, 2, 3} <= run_lengths


def test_separated_stuff_pngs_are_the_converted_panoptic_pngs(toy_dir):
    id_map = stuff_id_map(TOY_CATEGORIES)
    assert id_map == {1: 0, 2: 0, 3: 0, 4: 1, 5: 2, 6: 3, 7: 4, 8: 5, 0: 255}
    # independent of the conversion: stuff label = position in ["things", road..pole], things 0
    lut = np.array([1, 2, 3, 4, 5, 0, 0, 0], np.uint8)
    for split in ("train", "val"):
        p = toy_split_paths(toy_dir, split)
        for ann in _load_json(p["panoptic_json"])["annotations"]:
            stem = os.path.splitext(ann["file_name"])[0]
            stuff = _read(os.path.join(p["sem_seg_stuff_root"], stem + ".png"))
            pan_rgb = _read(os.path.join(p["panoptic_root"], ann["file_name"]))
            np.testing.assert_array_equal(
                stuff, panoptic_to_stuff_semantic(pan_rgb, ann["segments_info"], id_map)
            )
            sem = _read(os.path.join(p["sem_seg_root"], stem + ".png"))
            np.testing.assert_array_equal(stuff, lut[sem])
    # void pixels become 255
    pan = np.zeros((2, 2, 3), np.uint8)
    pan[0, 0] = [4, 0, 0]  # segment id 4
    out = panoptic_to_stuff_semantic(pan, [{"id": 4, "category_id": 8}], id_map)
    np.testing.assert_array_equal(out, [[5, 255], [255, 255]])


def test_instances_json_loads_with_pycocotools(toy_dir):
    from pycocotools.coco import COCO

    p = toy_split_paths(toy_dir, "train")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(p["instances_json"])
    assert sorted((c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())) == [
        (1, "disk"),
        (2, "box"),
        (3, "triangle"),
    ]
    assert len(coco.getImgIds()) == PARAMS["num_train"]
    pan = _load_json(p["panoptic_json"])
    n_small = 0
    for ann in pan["annotations"]:
        pan_ids = _pan_ids(os.path.join(p["panoptic_root"], ann["file_name"]))
        inst = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        for a in inst:
            m = coco.annToMask(a).astype(bool)
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6
        things = [s for s in ann["segments_info"] if s["category_id"] <= 3]
        assert len(things) == len(inst) >= 1
        for s in things:  # each visible thing segment lies inside an instance of its class
            visible = pan_ids == s["id"]
            n_small += max(s["bbox"][2:]) <= 10
            assert any(
                a["category_id"] == s["category_id"]
                and not (visible & ~coco.annToMask(a).astype(bool)).any()
                for a in inst
            )
    assert n_small >= 1  # some small instances


def test_dataset_catalog_all_six_names(toy_dir):
    h, w = PARAMS["image_size"]
    expected_keys = {
        "toy_panoptic": {
            "file_name", "image_id", "height", "width", "pan_seg_file_name", "segments_info",
        },
        "toy_sem_seg": {"file_name", "height", "width", "sem_seg_file_name"},
        "separated": {
            "file_name", "image_id", "height", "width", "annotations",
            "sem_seg_file_name", "pan_seg_file_name", "segments_info",
        },
    }  # fmt: skip
    for name in TOY_DATASET_NAMES:
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == (PARAMS["num_train"] if "train" in name else PARAMS["num_val"])
        kind = "separated" if name.endswith("separated") else name.rsplit("_", 1)[0]
        for d in dicts:
            assert set(d) == expected_keys[kind], name
            assert d["file_name"].startswith(toy_dir) and os.path.isfile(d["file_name"])
            assert (d["height"], d["width"]) == (h, w)
            assert _read(d["file_name"]).shape == (h, w, 3)
        d = dicts[0]
        if kind == "separated":
            assert {a["category_id"] for x in dicts for a in x["annotations"]} <= {0, 1, 2}
            assert os.path.basename(d["sem_seg_file_name"]) == os.path.basename(
                d["pan_seg_file_name"]
            )
            things = [s for s in d["segments_info"] if s["isthing"]]
            assert len(things) == len(d["annotations"])
            assert {s["category_id"] for s in d["segments_info"] if not s["isthing"]} <= {
                1,
                2,
                3,
                4,
                5,
            }
        if kind == "toy_panoptic":
            assert {s["category_id"] for x in dicts for s in x["segments_info"]} <= set(range(8))
            assert all(
                s["isthing"] == (s["category_id"] >= 5) for x in dicts for s in x["segments_info"]
            )
        if kind == "toy_sem_seg":
            assert set(np.unique(_read(d["sem_seg_file_name"])).tolist()) <= set(range(8))


def test_metadata(toy_dir):
    things = ["disk", "box", "triangle"]
    for split in ("train", "val"):
        sem = MetadataCatalog.get(f"toy_sem_seg_{split}")
        assert sem.stuff_classes == SEM_CLASSES
        assert sem.evaluator_type == "sem_seg" and sem.ignore_label == 255
        assert sem.thin_classes == ["pole"] and len(sem.stuff_colors) == 8
        assert sem.sem_seg_root.startswith(toy_dir) and os.path.isdir(sem.image_root)

        sep = MetadataCatalog.get(f"toy_panoptic_{split}_separated")
        assert sep.thing_classes == things
        assert sep.stuff_classes == ["things", "road", "grass", "wall", "sky", "pole"]
        assert sep.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
        assert sep.stuff_dataset_id_to_contiguous_id == {0: 0, 4: 1, 5: 2, 6: 3, 7: 4, 8: 5}
        assert len(sep.thing_colors) == 3 and len(sep.stuff_colors) == 6
        assert sep.evaluator_type == "coco_panoptic_seg" and sep.ignore_label == 255
        assert sep.thin_classes == ["pole"]
        for key in ("panoptic_json", "json_file"):
            assert os.path.isfile(getattr(sep, key))
        for key in ("image_root", "panoptic_root", "sem_seg_root"):
            assert os.path.isdir(getattr(sep, key))

        std = MetadataCatalog.get(f"toy_panoptic_{split}")
        assert std.stuff_classes == std.thing_classes == SEM_CLASSES
        assert std.thing_dataset_id_to_contiguous_id == {1: 5, 2: 6, 3: 7}
        assert std.stuff_dataset_id_to_contiguous_id == {4: 0, 5: 1, 6: 2, 7: 3, 8: 4}
        assert std.evaluator_type == "coco_panoptic_seg" and std.label_divisor == 1000
        assert std.panoptic_json == sep.panoptic_json and std.thin_classes == ["pole"]


def _perfect_panoptic_outputs(dicts):
    for d in dicts:
        pan = torch.from_numpy(_pan_ids(d["pan_seg_file_name"]).astype(np.int32))
        segs = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in d["segments_info"]
        ]
        yield (
            {"file_name": d["file_name"], "image_id": d["image_id"]},
            {"panoptic_seg": (pan, segs)},
        )


def test_detectron2_evaluators_work_unchanged(toy_dir, tmp_path):
    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_util

    for name in ("toy_panoptic_val_separated", "toy_panoptic_val"):
        ev = COCOPanopticEvaluator(name)
        ev.reset()
        for inp, out in _perfect_panoptic_outputs(DatasetCatalog.get(name)):
            ev.process([inp], [out])
        res = ev.evaluate()["panoptic_seg"]
        for key in ("PQ", "PQ_th", "PQ_st"):
            assert res[key] == pytest.approx(100.0), (name, key)

    ev = SemSegEvaluator("toy_sem_seg_val", distributed=False)
    ev.reset()
    for d in DatasetCatalog.get("toy_sem_seg_val"):
        gt = torch.from_numpy(_read(d["sem_seg_file_name"]).astype(np.int64))
        ev.process([d], [{"sem_seg": torch.nn.functional.one_hot(gt, 8).permute(2, 0, 1).float()}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["IoU-pole"] == pytest.approx(100.0)

    ev = COCOEvaluator(
        "toy_panoptic_val_separated",
        tasks=("segm",),
        distributed=False,
        output_dir=str(tmp_path),
        use_fast_impl=False,
    )
    ev.reset()
    h, w = PARAMS["image_size"]
    for d in DatasetCatalog.get("toy_panoptic_val_separated"):
        masks = np.stack(
            [
                mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
                for a in d["annotations"]
            ]
        )
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks.astype(bool))
        inst.pred_boxes = Boxes(
            torch.tensor(
                [
                    [
                        a["bbox"][0],
                        a["bbox"][1],
                        a["bbox"][0] + a["bbox"][2],
                        a["bbox"][1] + a["bbox"][3],
                    ]
                    for a in d["annotations"]
                ]
            )
        )
        inst.scores = torch.ones(len(masks))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        ev.process([d], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):
        res = ev.evaluate()
    assert res["segm"]["AP"] == pytest.approx(100.0)


def test_register_toy_datasets_changes_size_and_count(toy_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        new_dir = register_toy_datasets(num_train=3, num_val=2, image_size=(64, 72), seed=1)
        assert new_dir != toy_dir and new_dir.startswith(str(tmp_path))
        assert len(DatasetCatalog.get("toy_sem_seg_train")) == 3
        val = DatasetCatalog.get("toy_panoptic_val_separated")
        assert len(val) == 2
        assert all(_read(d["file_name"]).shape == (64, 72, 3) for d in val)
        assert MetadataCatalog.get("toy_panoptic_val").panoptic_json.startswith(new_dir)
        assert _load_json(os.path.join(new_dir, "params.json"))["image_size"] == [64, 72]

        from detectron2.config import get_cfg

        from nrd_rsp import add_nrd_rsp_config

        cfg = get_cfg()
        add_nrd_rsp_config(cfg)
        cfg.merge_from_list([
            "DATASETS.TOY.NUM_TRAIN", "3", "DATASETS.TOY.NUM_VAL", "2",
            "DATASETS.TOY.IMAGE_SIZE", "(64, 72)", "DATASETS.TOY.SEED", "1",
        ])  # fmt: skip
        loader = DatasetCatalog["toy_sem_seg_train"]
        assert configure_toy_datasets_from_cfg(cfg) == new_dir
        assert DatasetCatalog["toy_sem_seg_train"] is loader  # unchanged parameters: no-op
        cfg.DATASETS.TOY.SEED = 2
        assert configure_toy_datasets_from_cfg(cfg) != new_dir
        assert DatasetCatalog["toy_sem_seg_train"] is not loader

        with pytest.raises(ValueError, match="image_size"):
            register_toy_datasets(image_size=(10, 10))
    finally:
        monkeypatch.undo()
        register_toy_datasets(**PARAMS)


def test_config_defaults_are_toy_params_defaults():
    """``DATASETS.TOY`` (config.py sits below data and cannot import it) keeps the defaults of
    ``ToyParams``, the one source; a value ToyParams rejects is a ConfigError naming the key."""
    from detectron2.config import get_cfg

    from nrd_rsp import add_nrd_rsp_config
    from nrd_rsp.errors import ConfigError

    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    assert toy_params_from_cfg(cfg) == ToyParams()
    cfg.DATASETS.TOY.IMAGE_SIZE = (10, 10)
    with pytest.raises(ConfigError, match="DATASETS.TOY: .*image_size"):
        configure_toy_datasets_from_cfg(cfg)


def test_dataset_root_is_read_when_loading(toy_dir, tmp_path, monkeypatch):
    """$DETECTRON2_DATASETS changed after registration: data and metadata follow it."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        dicts = DatasetCatalog.get("toy_sem_seg_val")
        assert len(dicts) == PARAMS["num_val"]
        assert all(d["file_name"].startswith(str(tmp_path)) for d in dicts)
        assert MetadataCatalog.get("toy_sem_seg_val").sem_seg_root.startswith(str(tmp_path))
        assert MetadataCatalog.get("toy_panoptic_val").panoptic_root.startswith(str(tmp_path))
    finally:
        monkeypatch.undo()
        register_toy_datasets(**PARAMS)


def _ensure_in_child(root):
    toy.ensure_toy_dataset(4, 2, (64, 80), 5, root=root)


def test_concurrent_first_use_generates_once(tmp_path, monkeypatch):
    log = tmp_path / "calls.txt"
    original = toy_write.generate_toy_dataset

    def counting(*args, **kwargs):
        with open(log, "a") as f:
            f.write("x\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(toy_write, "generate_toy_dataset", counting)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "x\n"
    toy_root, tag = tmp_path / "toy", ToyParams(4, 2, (64, 80), 5).tag
    assert tag == f"v{toy.GENERATOR_VERSION}_n4-2_64x80_seed5"
    assert sorted(os.listdir(toy_root)) == [tag, tag + ".lock"]  # no temp dirs left behind
    assert len(os.listdir(toy_root / tag / "images" / "train")) == 4


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli_toy"
    assert (
        toy.main(
            [
                "--output",
                str(out),
                "--num-train",
                "2",
                "--num-val",
                "1",
                "--image-size",
                "64",
                "80",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith(str(out))
    assert len(os.listdir(out / "images" / "train")) == 2
    assert _read(out / "images" / "val" / "000000.jpg").shape == (64, 80, 3)
    for argv, msg in [
        (["--image-size", "10", "10"], "image_size"),
        (["--num-train", "0"], "at least 1"),
        (["--output", str(tmp_path), "--num-train", "1"], "not an empty directory"),
        (["--seed", "x"], "invalid int"),
    ]:
        with pytest.raises(SystemExit) as e:
            toy.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ERROR: ") and msg in err, err


# ---------------------------------------------------------------------------------------------
# the high-resolution options: 1 px thin structures, context-defined stuff
# ---------------------------------------------------------------------------------------------
_SEG = {c["name"]: c["id"] * 1000 for c in TOY_CATEGORIES}


def _render(i, **options):
    return toy.render_toy_image(np.random.default_rng([5, 0, i]), (128, 256), **options)


def _has_2x2_block(mask):
    return bool((mask[1:, 1:] & mask[:-1, 1:] & mask[1:, :-1] & mask[:-1, :-1]).any())


def test_max_pole_width_1_makes_every_thin_structure_1_px_wide():
    one_px = [_render(i, max_pole_width=1)[1] == _SEG["pole"] for i in range(12)]
    assert all(m.any() and not _has_2x2_block(m) for m in one_px)
    # the check can fail: by default poles are up to 3 px wide
    assert any(_has_2x2_block(_render(i)[1] == _SEG["pole"]) for i in range(12))


def test_context_stuff_paints_road_like_wall_and_keeps_the_labels():
    def mean_colours(**options):
        road, wall = [], []
        for i in range(24):
            image, pan, _ = _render(i, **options)
            if (pan == _SEG["road"]).any() and (pan == _SEG["wall"]).any():
                road.append(image[pan == _SEG["road"]].mean(0))
                wall.append(image[pan == _SEG["wall"]].mean(0))
        return np.mean(road, 0), np.mean(wall, 0)

    road, wall = mean_colours()
    assert np.abs(road - wall).max() > 30  # default: road is grey, wall is red brick
    road, wall = mean_colours(context_stuff=True)
    assert np.abs(road - wall).max() < 15  # same colour distribution: only context tells
    for i in range(4):  # the options change pixels, never labels or instances
        (a, pan_a, inst_a), (b, pan_b, inst_b) = _render(i), _render(i, context_stuff=True)
        assert np.array_equal(pan_a, pan_b) and not np.array_equal(a, b)
        assert [t["poly"] for t in inst_a] == [t["poly"] for t in inst_b]


def test_options_name_their_own_dataset_and_config_keys_reach_them(tmp_path):
    from detectron2.config import get_cfg

    from nrd_rsp import add_nrd_rsp_config
    from nrd_rsp.errors import ConfigError

    assert ToyParams().tag == "v2_n200-40_128x160_seed0"  # default data keeps its directory
    assert set(ToyParams().to_json()) == {
        "generator_version", "num_train", "num_val", "image_size", "seed",
    }  # fmt: skip
    hard = ToyParams(2, 1, (64, 96), 1, max_pole_width=1, context_stuff=True)
    assert hard.tag == "v2_n2-1_64x96_seed1_pole1px_context"
    assert hard.to_json()["max_pole_width"] == 1 and hard.to_json()["context_stuff"] is True
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    cfg.merge_from_list([
        "DATASETS.TOY.NUM_TRAIN", "2", "DATASETS.TOY.NUM_VAL", "1",
        "DATASETS.TOY.IMAGE_SIZE", "(64, 96)", "DATASETS.TOY.SEED", "1",
        "DATASETS.TOY.MAX_POLE_WIDTH", "1", "DATASETS.TOY.CONTEXT_STUFF", "True",
    ])  # fmt: skip
    assert toy_params_from_cfg(cfg) == hard
    cfg.DATASETS.TOY.MAX_POLE_WIDTH = 4
    with pytest.raises(ConfigError, match="DATASETS.TOY: .*max_pole_width"):
        toy_params_from_cfg(cfg)
    out = tmp_path / "hard"
    argv = ["--output", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "64", "96"]
    assert toy.main([*argv, "--seed", "1", "--max-pole-width", "1", "--context-stuff"]) == 0
    assert _load_json(out / "params.json") == hard.to_json()
    for i in range(2):  # what was written was rendered with the options
        written = _read(out / "images" / "train" / f"{i:06d}.jpg").astype(np.float32)
        rng = [1, 0, i]  # (seed, split code of train, index), as the writer seeds each image
        hard_image = toy.render_toy_image(np.random.default_rng(rng), (64, 96), 1, True)[0]
        plain_image = toy.render_toy_image(np.random.default_rng(rng), (64, 96))[0]
        assert np.abs(written - hard_image).mean() < 4 < np.abs(written - plain_image).mean()
