"""The dataset stand-ins (tests/standins.py) checked against the official tools, the preparation
scripts, the registered loaders, and the evaluators of ``Trainer.build_evaluator``: ground truth
fed as predictions scores 100, a wrong prediction less."""

import glob
import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import standins
import torch
from conftest import ROOT
from PIL import Image

pytestmark = [
    pytest.mark.slow,  # writes and prepares every stand-in dataset
    pytest.mark.filterwarnings(
        "ignore:Saving I mode images as PNG:DeprecationWarning"  # cityscapesscripts on Pillow 12
    ),
]

CONFIGS = {
    "cityscapes": "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50_90k_bs16.yaml",
    "coco": "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "ade20k": "configs/ADE20K-SemanticSegmentation/semantic_fpn_R_50_160k_bs16.yaml",
    "pascal_context": "configs/PascalContext-SemanticSegmentation/semantic_fpn_R_50_80k_bs16.yaml",
}


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The four stand-ins, written once, prepared, and registered for this module."""
    root = str(tmp_path_factory.mktemp("standins"))
    standins.write_all(root)
    raw = _files(root)
    procs = standins.prepare_all(root)
    with standins.registered_at(root):
        yield SimpleNamespace(root=root, raw=raw, procs=procs)


def _read(path, mode=None):
    with Image.open(path) as im:
        return np.asarray(im.convert(mode) if mode else im)


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _close(value, target=100.0):
    return abs(value - target) < 1e-6


# ---------------------------------------------------------------------------------------------
# Layout and determinism
# ---------------------------------------------------------------------------------------------
def test_raw_layout_is_the_official_download(data):
    raw = data.raw
    for split, cities in standins.CITYSCAPES_CITIES.items():
        images = [f for f in raw if f.startswith(f"cityscapes/leftImg8bit/{split}/")]
        assert len(images) == len(cities)
        for kind in ("polygons.json", "labelIds.png", "instanceIds.png", "color.png"):
            pattern = f"cityscapes/gtFine/{split}/*/*_gtFine_{kind}"
            assert len(glob.glob(os.path.join(data.root, pattern))) == len(cities)
    for split, images in standins.COCO_IMAGES.items():
        for folder, ext in ((f"{split}2017", ".jpg"), (f"panoptic_{split}2017", ".png")):
            assert [f for f in raw if f.startswith(f"coco/{folder}/")] == [
                f"coco/{folder}/{img[0]:012d}{ext}" for img in images
            ]
    assert [f for f in raw if f.startswith("coco/annotations/")] == [
        f"coco/annotations/{k}_{s}2017.json"
        for k in ("instances", "panoptic")
        for s in ("train", "val")
    ]
    for split, folder in (("train", "training"), ("val", "validation")):
        n = len(standins.ADE20K_IMAGES[split])
        for sub, ext in (("images", "jpg"), ("annotations", "png")):
            assert [f for f in raw if f.startswith(f"ADEChallengeData2016/{sub}/{folder}/")] == [
                f"ADEChallengeData2016/{sub}/{folder}/ADE_{split}_{i:08d}.{ext}"
                for i in range(1, n + 1)
            ]
    voc = "VOCdevkit/VOC2010/"
    ids = sorted(i for images in standins.PASCAL_CONTEXT_IMAGES.values() for i, _ in images)
    assert [f for f in raw if f.startswith(voc + "JPEGImages/")] == [
        f"{voc}JPEGImages/{i}.jpg" for i in ids
    ]
    assert [f for f in raw if f.startswith(voc + "trainval/")] == [
        f"{voc}trainval/{i}.mat" for i in ids
    ]
    # nothing the preparation scripts make
    made = ("labelTrainIds", "panoptic_stuff", "annotations_detectron2", "pascal_context/")
    assert not [f for f in raw if any(m in f for m in made)]
    assert set(raw) < set(_files(data.root))


def test_writers_are_deterministic(data, tmp_path):
    standins.write_all(str(tmp_path))
    again = _files(str(tmp_path))
    assert again == data.raw
    for f in again:
        a, b = os.path.join(data.root, f), os.path.join(str(tmp_path), f)
        if f.endswith(".mat"):  # the MAT header holds the creation time
            assert np.array_equal(
                scipy.io.loadmat(a)["LabelMap"], scipy.io.loadmat(b)["LabelMap"]
            ), f
        else:
            assert _sha1(a) == _sha1(b), f


def test_prepare_scripts_ran_cleanly(data):
    assert set(data.procs) == set(standins.PREPARE_SCRIPTS)
    for script, proc in data.procs.items():
        assert proc.returncode == 0, script
        # e.g. prepare_pascal_context.py's labels.txt cross-check
        assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")], script


# ---------------------------------------------------------------------------------------------
# Cityscapes: cityscapesscripts
# ---------------------------------------------------------------------------------------------
def test_cityscapes_polygons_use_official_labels(data):
    from cityscapesscripts.helpers.labels import name2label

    h, w = standins.CITYSCAPES_IMAGE_SIZE
    seen = set()
    for path in glob.glob(os.path.join(data.root, "cityscapes/gtFine/*/*/*_gtFine_polygons.json")):
        with open(path) as f:
            ann = json.load(f)
        assert (ann["imgHeight"], ann["imgWidth"]) == (h, w)
        image = path.replace("gtFine", "leftImg8bit", 1).replace(
            "_gtFine_polygons.json", "_leftImg8bit.png"
        )
        with Image.open(image) as im:
            assert (im.mode, im.size) == ("RGB", (w, h))
        for obj in ann["objects"]:
            label = obj["label"]
            seen.add(label)
            if label.endswith("group"):
                assert name2label[label[: -len("group")]].hasInstances, label
            else:
                assert label in name2label, label
            assert all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in obj["polygon"])
    groups_and_void = {"cargroup", "persongroup", "out of roi", "ego vehicle", "static"}
    assert groups_and_void | {"license plate"} <= seen
    assert {"road", "sidewalk", "building", "car", "person", "pole", "sky", "vegetation"} <= seen


def test_cityscapes_gt_images_are_cityscapesscripts_output(data, tmp_path):
    from cityscapesscripts.helpers.labels import id2label, name2label
    from cityscapesscripts.preparation.json2instanceImg import json2instanceImg
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, label in id2label.items():
        if label_id >= 0:
            lut[label_id] = label.trainId if 0 <= label.trainId < 255 else 255
    jsons = sorted(
        glob.glob(os.path.join(data.root, "cityscapes/gtFine/*/*/*_gtFine_polygons.json"))
    )
    assert len(jsons) == sum(len(c) for c in standins.CITYSCAPES_CITIES.values())
    for path in jsons:
        gt = path[: -len("polygons.json")]
        for name, fn, encoding in (
            ("labelIds", json2labelImg, "ids"),
            ("color", json2labelImg, "color"),
            ("instanceIds", json2instanceImg, "ids"),
            ("labelTrainIds", json2labelImg, "trainIds"),  # made by prepare_cityscapes.py
        ):
            fresh = str(tmp_path / f"{name}.png")
            fn(path, fresh, encoding)
            assert np.array_equal(_read(gt + name + ".png"), _read(fresh)), gt + name
        label_ids = _read(gt + "labelIds.png")
        instance_ids = _read(gt + "instanceIds.png").astype(np.int64)
        assert np.array_equal(_read(gt + "labelTrainIds.png"), lut[label_ids])
        # instance ids: class id * 1000 + index for instances, the class id for groups and stuff
        assert np.array_equal(
            np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids), label_ids
        )
        for cls, least in (("car", 3), ("person", 2)):
            n = len({i for i in np.unique(instance_ids) if i // 1000 == name2label[cls].id})
            assert n >= least, (gt, cls, n)
        assert {name2label[n].id for n in ("out of roi", "ego vehicle", "static")} <= set(
            np.unique(label_ids)
        )
        for cls in ("car", "person"):  # group pixels carry the plain class id
            assert name2label[cls].id in instance_ids


def test_detectron2_cityscapes_loader_finds_the_files(data):
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    for split, cities in standins.CITYSCAPES_CITIES.items():
        base = os.path.join(data.root, "cityscapes")
        dicts = load_cityscapes_semantic(
            os.path.join(base, "leftImg8bit", split), os.path.join(base, "gtFine", split)
        )
        assert len(dicts) == len(cities)
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
            assert (d["height"], d["width"]) == standins.CITYSCAPES_IMAGE_SIZE


# ---------------------------------------------------------------------------------------------
# COCO: pycocotools and panopticapi
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_instances_agree_with_panoptic_pngs(data, split):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from panopticapi.utils import rgb2id
    from pycocotools.coco import COCO

    base = os.path.join(data.root, "coco")
    coco = COCO(os.path.join(base, "annotations", f"instances_{split}2017.json"))
    with open(os.path.join(base, "annotations", f"panoptic_{split}2017.json")) as f:
        pan = json.load(f)
    assert [(c["id"], c["name"], c["isthing"]) for c in pan["categories"]] == [
        (c["id"], c["name"], c["isthing"]) for c in COCO_CATEGORIES
    ]
    things = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == things
    thing_ids = {i for i, _ in things}
    crowds = empty = grey = 0
    shapes = set()
    for ann in pan["annotations"]:
        img = coco.loadImgs(ann["image_id"])[0]
        with Image.open(os.path.join(base, f"{split}2017", img["file_name"])) as im:
            assert im.size == (img["width"], img["height"])
            grey += im.mode == "L"
        shapes.add(img["height"] > img["width"])
        ids = rgb2id(_read(os.path.join(base, f"panoptic_{split}2017", ann["file_name"]), "RGB"))
        assert ids.shape == (img["height"], img["width"])
        segs = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) == set(segs) | {0}  # every segment drawn, some void pixels
        for s in segs.values():
            ys, xs = np.nonzero(ids == s["id"])
            assert s["area"] == len(ys)
            x0, y0 = xs.min(), ys.min()
            assert s["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
        insts = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]], iscrowd=None))
        assert len(insts) == sum(s["category_id"] in thing_ids for s in segs.values())
        empty += not insts
        for inst in insts:
            mask = coco.annToMask(inst).astype(bool)
            values, counts = np.unique(ids[mask], return_counts=True)
            seg = segs[int(values[counts.argmax()])]
            assert np.array_equal(mask, ids == seg["id"]), inst
            assert (seg["category_id"], seg["iscrowd"]) == (inst["category_id"], inst["iscrowd"])
            assert inst["area"] == seg["area"] and inst["bbox"] == seg["bbox"]
            if inst["iscrowd"]:
                crowds += 1
                assert isinstance(inst["segmentation"]["counts"], list)  # uncompressed RLE
    assert len(pan["annotations"]) == len(standins.COCO_IMAGES[split]) == len(coco.getImgIds())
    assert crowds >= 1 and empty >= 1 and grey >= 1 and shapes == {True, False}


def test_panopticapi_scores_gt_against_itself(data):
    from panopticapi.evaluation import pq_compute

    base = os.path.join(data.root, "coco")
    gt_json = os.path.join(base, "annotations", "panoptic_val2017.json")
    gt_dir = os.path.join(base, "panoptic_val2017")
    res = pq_compute(gt_json, gt_json, gt_dir, gt_dir)
    for key in ("All", "Things", "Stuff"):
        assert res[key]["n"] > 0
        assert (res[key]["pq"], res[key]["sq"], res[key]["rq"]) == (1.0, 1.0, 1.0), key


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_stuff_pngs_follow_detectron2_ids(data, split):
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
    from panopticapi.utils import rgb2id

    meta = _get_builtin_metadata("coco_panoptic_separated")
    base = os.path.join(data.root, "coco")
    with open(os.path.join(base, "annotations", f"panoptic_{split}2017.json")) as f:
        pan = json.load(f)
    for ann in pan["annotations"]:
        ids = rgb2id(_read(os.path.join(base, f"panoptic_{split}2017", ann["file_name"]), "RGB"))
        expected = np.full(ids.shape, 255, dtype=np.uint8)
        for s in ann["segments_info"]:
            cat = s["category_id"]
            expected[ids == s["id"]] = meta["stuff_dataset_id_to_contiguous_id"].get(cat, 0)
        stuff = _read(os.path.join(base, f"panoptic_stuff_{split}2017", ann["file_name"]))
        assert stuff.dtype == np.uint8 and np.array_equal(stuff, expected), ann["file_name"]


# ---------------------------------------------------------------------------------------------
# ADE20K and PASCAL Context
# ---------------------------------------------------------------------------------------------
def test_ade20k_labels_and_prepared_labels(data):
    base = os.path.join(data.root, "ADEChallengeData2016")
    for split, folder in (("train", "training"), ("val", "validation")):
        shapes = []
        for i, (h, w) in enumerate(standins.ADE20K_IMAGES[split]):
            stem = f"ADE_{split}_{i + 1:08d}"
            with Image.open(os.path.join(base, "annotations", folder, stem + ".png")) as im:
                assert im.mode == "L"
                label = np.asarray(im)
            with Image.open(os.path.join(base, "images", folder, stem + ".jpg")) as im:
                assert (im.mode, im.size) == ("RGB", (w, h))
            assert label.shape == (h, w) and label.max() <= 150
            assert 0 in label and len(np.unique(label)) >= 5
            shapes.append(h > w)
            prepared = _read(os.path.join(base, "annotations_detectron2", folder, stem + ".png"))
            expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
            assert np.array_equal(prepared, expected), stem
        assert set(shapes) == {True, False}, split


def test_pascal_context_labels_and_prepared_labels(data):
    from nrd_rsp.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

    voc = os.path.join(data.root, "VOCdevkit", "VOC2010")
    with open(os.path.join(voc, "labels.txt")) as f:
        names = {int(k): v.strip() for k, v in (line.split(":", 1) for line in f if line.strip())}
    assert set(PASCAL_CONTEXT_59_CLASSES) <= set(names.values())
    lut = np.full(max(names) + 1, 255, dtype=np.int64)  # 459-class id -> 59-class label
    for i, name in names.items():
        if name in PASCAL_CONTEXT_59_CLASSES:
            lut[i] = PASCAL_CONTEXT_59_CLASSES.index(name)
    outside = 0
    for split, images in standins.PASCAL_CONTEXT_IMAGES.items():
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt")) as f:
            assert f.read().split() == [i for i, _ in images]
        for image_id, (h, w) in images:
            mat = scipy.io.loadmat(os.path.join(voc, "trainval", image_id + ".mat"))
            label_map = mat["LabelMap"]
            assert label_map.dtype == np.uint16 and label_map.shape == (h, w)
            used = set(np.unique(label_map).tolist())
            assert 0 in used and used - {0} <= set(names)
            outside += len([i for i in used - {0} if lut[i] == 255])
            ctx59 = lut[label_map.astype(np.int64)]
            ctx60 = np.where(ctx59 == 255, 0, ctx59 + 1)
            out = os.path.join(data.root, "pascal_context")
            for labels, kind in ((ctx59, "annotations_ctx59"), (ctx60, "annotations_ctx60")):
                prepared = _read(os.path.join(out, kind, split, image_id + ".png"))
                assert np.array_equal(prepared, labels), (kind, image_id)
            image = os.path.join(out, "images", split, image_id + ".jpg")
            source = os.path.join(voc, "JPEGImages", image_id + ".jpg")
            assert os.path.samefile(image, source) or _sha1(image) == _sha1(source)
            with Image.open(image) as im:
                assert im.size == (w, h)
    assert outside > 0  # classes outside the 59 become background


# ---------------------------------------------------------------------------------------------
# Registered datasets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(standins.REGISTERED_SIZES))
def test_registered_dataset_loads(data, name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from nrd_rsp.data.catalog import check_dataset_available

    check_dataset_available(name)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == standins.REGISTERED_SIZES[name]
    for d in dicts:
        assert d["file_name"].startswith(data.root) and os.path.isfile(d["file_name"])
        for key in ("sem_seg_file_name", "pan_seg_file_name"):
            assert key not in d or os.path.isfile(d[key])
    if name.endswith("_separated"):
        meta = MetadataCatalog.get(name)
        assert len(meta.thing_classes) == 80 and len(meta.stuff_classes) == 54
        assert sum(len(d["annotations"]) for d in dicts) > 0
        assert any(not d["annotations"] for d in dicts)


def test_registered_at_restores_the_previous_registration(data, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "ade20k_sem_seg_val"
    before = (DatasetCatalog[name], MetadataCatalog.get(name))
    with standins.registered_at(str(tmp_path)):
        assert MetadataCatalog.get(name).image_root.startswith(str(tmp_path))
        assert MetadataCatalog.get("pascal_context_59_sem_seg_val").image_root.startswith(
            str(tmp_path)
        )
    assert DatasetCatalog[name] is before[0] and MetadataCatalog.get(name) is before[1]
    assert MetadataCatalog.get(name).image_root.startswith(data.root)


# ---------------------------------------------------------------------------------------------
# Oracle: ground truth through the evaluators of Trainer.build_evaluator
# ---------------------------------------------------------------------------------------------
def _one_hot(label, num_classes):
    """(C, H, W) logits whose argmax is ``label``; ignored pixels (>= C) get the last class."""
    label = torch.as_tensor(np.asarray(label, dtype=np.int64)).clamp(max=num_classes - 1)
    return torch.zeros(num_classes, *label.shape).scatter_(0, label[None], 1.0)


def _evaluate(family, tmp_path, predict):
    """Results of the evaluator(s) Trainer builds for the test set of the family's config, given
    ``predict(dataset dict) -> model output`` for every image."""
    from detectron2.data import DatasetCatalog

    from nrd_rsp.engine import Trainer, setup_cfg

    cfg = setup_cfg(os.path.join(ROOT, CONFIGS[family]), ["OUTPUT_DIR", str(tmp_path)])
    name = cfg.DATASETS.TEST[0]
    evaluator = Trainer.build_evaluator(cfg, name)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        evaluator.process([d], [predict(d)])
    return evaluator.evaluate()


def _semantic(num_classes, swap=None):
    """Predict the ``sem_seg_file_name`` labels; ``swap=(a, b)`` predicts class a as b."""

    def predict(d):
        label = _read(d["sem_seg_file_name"]).astype(np.int64)
        if swap:
            label = np.where(label == swap[0], swap[1], label)
        return {"sem_seg": _one_hot(label, num_classes)}

    return predict


@pytest.mark.parametrize(
    "family,name,num_classes",
    [
        ("ade20k", "ade20k_sem_seg_val", 150),
        ("pascal_context", "pascal_context_59_sem_seg_val", 59),
    ],
)
def test_semantic_oracle_scores_100(data, tmp_path, family, name, num_classes):
    from detectron2.data import DatasetCatalog

    res = _evaluate(family, tmp_path / "gt", _semantic(num_classes))["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert _close(res[key]), (key, res[key])
    label = _read(DatasetCatalog.get(name)[0]["sem_seg_file_name"])
    present = np.unique(label[label < num_classes])
    swap = (present[0], (present[0] + 1) % num_classes)
    wrong = _evaluate(family, tmp_path / "wrong", _semantic(num_classes, swap))["sem_seg"]
    assert wrong["mIoU"] < 99 and wrong["pACC"] < 100


def test_cityscapes_oracle_scores_100(data, tmp_path):
    res = _evaluate("cityscapes", tmp_path / "gt", _semantic(19))
    for key in ("IoU", "iIoU", "IoU_sup", "iIoU_sup"):
        assert _close(res["cityscapes_sem_seg"][key]), (key, res["cityscapes_sem_seg"])
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert _close(res["sem_seg"][key]), (key, res["sem_seg"])
    car, truck = 13, 14  # trainIds
    wrong = _evaluate("cityscapes", tmp_path / "wrong", _semantic(19, swap=(car, truck)))
    assert wrong["cityscapes_sem_seg"]["IoU"] < 99 and wrong["cityscapes_sem_seg"]["iIoU"] < 99
    assert wrong["sem_seg"]["mIoU"] < 99


def _coco_panoptic(wrong=False):
    """Panoptic FPN outputs from the val ground truth: the panoptic PNG and segments (contiguous
    ids of the separated metadata), the non-crowd instances, and the stuff labels. ``wrong``
    relabels the first thing (panoptic and instances) and one stuff class."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import annotations_to_instances
    from detectron2.structures import Instances
    from panopticapi.utils import rgb2id

    meta = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    with open(meta.panoptic_json) as f:
        gt = {a["image_id"]: a for a in json.load(f)["annotations"]}
    things, stuff = meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id

    def predict(d):
        h, w = d["height"], d["width"]
        ann = gt[d["image_id"]]
        ids = rgb2id(_read(os.path.join(meta.panoptic_root, ann["file_name"]), "RGB"))
        segments = [
            {"id": s["id"], "isthing": s["category_id"] in things,
             "category_id": things.get(s["category_id"], stuff.get(s["category_id"]))}
            for s in ann["segments_info"]
        ]  # fmt: skip
        annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        gt_inst = annotations_to_instances(annos, (h, w), mask_format="bitmask")
        inst = Instances((h, w))
        inst.pred_boxes = gt_inst.gt_boxes
        inst.pred_classes = gt_inst.gt_classes.clone()
        inst.pred_masks = (
            gt_inst.gt_masks.tensor if annos else torch.zeros(0, h, w, dtype=torch.bool)
        )
        inst.scores = torch.ones(len(annos))
        sem = _read(d["sem_seg_file_name"]).astype(np.int64)
        if wrong:
            first = next((s for s in segments if s["isthing"]), None)
            if first:
                first["category_id"] = (first["category_id"] + 1) % 80
            if len(inst):
                inst.pred_classes[0] = (inst.pred_classes[0] + 1) % 80
            sem = np.where(sem == stuff[187], stuff[192], sem)  # sky -> mountain
        return {
            "panoptic_seg": (torch.as_tensor(ids.astype(np.int32)), segments),
            "instances": inst,
            "sem_seg": _one_hot(sem, len(meta.stuff_classes)),
        }

    return predict


def test_coco_panoptic_oracle_scores_100(data, tmp_path):
    res = _evaluate("coco", tmp_path / "gt", _coco_panoptic())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert _close(res["panoptic_seg"][key]), (key, res["panoptic_seg"])
    for task in ("bbox", "segm"):
        scored = {k: v for k, v in res[task].items() if k.startswith("AP") and not np.isnan(v)}
        assert {"AP", "AP50", "AP75", "APs", "AP-person", "AP-car", "AP-cat"} <= set(scored)
        assert all(_close(v) for v in scored.values()), (task, scored)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert _close(res["sem_seg"][key]), (key, res["sem_seg"])

    wrong = _evaluate("coco", tmp_path / "wrong", _coco_panoptic(wrong=True))
    assert wrong["panoptic_seg"]["PQ_th"] < 99 and _close(wrong["panoptic_seg"]["PQ_st"])
    assert wrong["bbox"]["AP"] < 99 and wrong["segm"]["AP"] < 99
    assert wrong["sem_seg"]["mIoU"] < 99
