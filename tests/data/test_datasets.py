"""Real-dataset registration (PASCAL Context), dataset path checks and the preparation scripts."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, load_script
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import nrd_rsp  # noqa: F401  (registers the datasets)
from nrd_rsp.data.catalog import DatasetNotFoundError, check_dataset_available
from nrd_rsp.data.datasets.register_pascal_context import (
    PASCAL_CONTEXT_59_CLASSES,
    register_pascal_context,
)
from nrd_rsp.data.toy import ensure_toy_dataset
from nrd_rsp.data.toy.spec import ToyParams, toy_split_paths

SCRIPTS = os.path.join(ROOT, "datasets")


def _script(name):
    return os.path.join(SCRIPTS, name)


def _run(args, env=None, cwd=ROOT, timeout=300):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------
def test_pascal_context_registered():
    assert len(PASCAL_CONTEXT_59_CLASSES) == len(set(PASCAL_CONTEXT_59_CLASSES)) == 59
    assert PASCAL_CONTEXT_59_CLASSES == sorted(
        PASCAL_CONTEXT_59_CLASSES
    )  # ascending ctx id = alphabetical
    assert {"aeroplane", "person", "tvmonitor", "wood", "sky"} <= set(PASCAL_CONTEXT_59_CLASSES)
    for split in ("train", "val"):
        m59 = MetadataCatalog.get(f"pascal_context_59_sem_seg_{split}")
        m60 = MetadataCatalog.get(f"pascal_context_60_sem_seg_{split}")
        assert f"pascal_context_59_sem_seg_{split}" in DatasetCatalog.list()
        assert f"pascal_context_60_sem_seg_{split}" in DatasetCatalog.list()
        assert m59.stuff_classes == PASCAL_CONTEXT_59_CLASSES and len(m59.stuff_colors) == 59
        assert (
            m60.stuff_classes == ["background"] + PASCAL_CONTEXT_59_CLASSES
            and len(m60.stuff_colors) == 60
        )
        for m, n in ((m59, 59), (m60, 60)):
            assert m.evaluator_type == "sem_seg" and m.ignore_label == 255
            assert m.sem_seg_root.endswith(
                os.path.join("pascal_context", f"annotations_ctx{n}", split)
            )
            assert m.image_root.endswith(os.path.join("pascal_context", "images", split))
    # the preparation script writes labels in the same class order
    script = load_script("datasets/prepare_pascal_context.py")
    assert [name for _, name in script.PASCAL_CONTEXT_59] == PASCAL_CONTEXT_59_CLASSES


def test_pascal_context_loads_prepared_layout(tmp_path):
    base = tmp_path / "pascal_context"
    for n in (59, 60):
        (base / f"annotations_ctx{n}" / "val").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 5), np.uint8)).save(
            base / f"annotations_ctx{n}" / "val" / "2008_000001.png"
        )
    (base / "images" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(base / "images" / "val" / "2008_000001.jpg")
    try:
        register_pascal_context(str(tmp_path))
        check_dataset_available("pascal_context_59_sem_seg_val")
        (d,) = DatasetCatalog.get("pascal_context_60_sem_seg_val")
        assert d["file_name"] == str(base / "images" / "val" / "2008_000001.jpg")
        assert d["sem_seg_file_name"] == str(base / "annotations_ctx60" / "val" / "2008_000001.png")
        with pytest.raises(
            DatasetNotFoundError, match=f"missing directory '{base / 'images' / 'train'}'"
        ):
            check_dataset_available("pascal_context_59_sem_seg_train")
        (base / "images" / "train").mkdir()
        (base / "images" / "train" / "2008_000002.jpg").write_bytes(b"")
        with pytest.raises(DatasetNotFoundError, match=f"'{base / 'annotations_ctx59' / 'train'}'"):
            check_dataset_available("pascal_context_59_sem_seg_train")
    finally:
        register_pascal_context()


# ----------------------------------------------------------------------------------------------
# check_dataset_available
# ----------------------------------------------------------------------------------------------
_CHECK_SCRIPT = r"""
import json, sys
import nrd_rsp
from nrd_rsp.data.catalog import check_dataset_available
from nrd_rsp.data.datasets.register_toy import register_toy_datasets
out = {}
for name in sys.argv[1:]:
    try:
        check_dataset_available(name)
        out[name] = None
    except FileNotFoundError as e:
        out[name] = [type(e).__name__, str(e)]
register_toy_datasets(num_train=2, num_val=1, image_size=(64, 64), seed=0)
check_dataset_available("toy_sem_seg_val")
print("RESULT " + json.dumps(out))
"""


def test_check_dataset_available_names_missing_roots(tmp_path):
    """Fresh process, $DETECTRON2_DATASETS = an empty dir: Detectron2's builtins and ours fail
    with one clear error naming the path; a toy name generates its data instead."""
    names = {
        "cityscapes_fine_sem_seg_train": os.path.join("cityscapes", "leftImg8bit", "train"),
        "coco_2017_val_panoptic_separated": os.path.join("coco", "val2017"),
        "coco_2017_val_panoptic": os.path.join("coco", "val2017"),
        "ade20k_sem_seg_val": os.path.join("ADEChallengeData2016", "images", "validation"),
        "pascal_context_59_sem_seg_val": os.path.join("pascal_context", "images", "val"),
        "pascal_context_60_sem_seg_train": os.path.join("pascal_context", "images", "train"),
    }
    root = tmp_path / "empty"
    root.mkdir()
    proc = _run(
        ["-c", _CHECK_SCRIPT, *names], env={"DETECTRON2_DATASETS": str(root)}, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    for name, subpath in names.items():
        kind, msg = result[name]
        assert kind == "DatasetNotFoundError", name
        assert os.path.join(str(root), subpath) in msg, msg
        assert "datasets/README.md" in msg and "$DETECTRON2_DATASETS" in msg and str(root) in msg
        assert "\n" not in msg
    assert os.path.isdir(root / "toy" / ToyParams(2, 1, (64, 64), 0).tag / "sem_seg" / "val")


@pytest.fixture
def temp_dataset():
    """Register throwaway dataset names; removed afterwards."""
    names = []

    def make(name, **meta):
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**meta)
        names.append(name)
        return name

    yield make
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_check_dataset_available_incomplete_dirs(tmp_path, temp_dataset):
    # Cityscapes layout without the labelTrainIds PNGs of prepare_cityscapes.py
    img, gt = tmp_path / "leftImg8bit" / "train", tmp_path / "gtFine" / "train"
    (img / "aachen").mkdir(parents=True)
    (gt / "aachen").mkdir(parents=True)
    (gt / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    name = temp_dataset(
        "cityscapes_fine_sem_seg_tmpcheck",
        image_dir=str(img),
        gt_dir=str(gt),
        evaluator_type="cityscapes_sem_seg",
    )
    with pytest.raises(DatasetNotFoundError, match="labelTrainIds.*prepare_cityscapes.py"):
        check_dataset_available(name)
    (gt / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png").write_bytes(b"")
    check_dataset_available(name)

    # empty directory / missing JSON
    (tmp_path / "images").mkdir()
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.png").write_bytes(b"")
    name = temp_dataset(
        "coco_tmpcheck_separated",
        image_root=str(tmp_path / "images"),
        sem_seg_root=str(tmp_path / "stuff"),
        json_file=str(tmp_path / "instances.json"),
        panoptic_json=str(tmp_path / "panoptic.json"),
    )
    with pytest.raises(DatasetNotFoundError, match="empty directory '" + str(tmp_path / "images")):
        check_dataset_available(name)
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    with pytest.raises(
        DatasetNotFoundError, match="missing file '" + str(tmp_path / "panoptic.json")
    ):
        check_dataset_available(name)
    (tmp_path / "panoptic.json").write_text("{}")
    with pytest.raises(DatasetNotFoundError, match="instances.json"):
        check_dataset_available(name)
    (tmp_path / "instances.json").write_text("{}")
    check_dataset_available(name)
    shutil.rmtree(tmp_path / "stuff")
    with pytest.raises(FileNotFoundError, match="prepare_panoptic_fpn.py"):
        check_dataset_available(name)

    with pytest.raises(KeyError, match="not registered"):
        check_dataset_available("no_such_dataset_xyz")


# ----------------------------------------------------------------------------------------------
# Preparation scripts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script, args, missing",
    [
        (
            "prepare_panoptic_fpn.py",
            [],
            os.path.join("coco", "annotations", "panoptic_train2017.json"),
        ),
        (
            "prepare_ade20k_sem_seg.py",
            [],
            os.path.join("ADEChallengeData2016", "annotations", "training"),
        ),
        ("prepare_cityscapes.py", [], os.path.join("cityscapes", "gtFine")),
        ("prepare_pascal_context.py", [], os.path.join("VOCdevkit", "VOC2010", "JPEGImages")),
    ],
)
@pytest.mark.slow
def test_prepare_scripts_missing_input(tmp_path, script, args, missing, monkeypatch, capsys):
    proc = _run([_script(script), "--root", str(tmp_path), *args])
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"ERROR: {script}:") and str(tmp_path / missing) in proc.stderr
    # In-process (the same main() as the command line): defaults come from $DETECTRON2_DATASETS,
    # and bad arguments are one line with exit status 2.
    main = load_script(os.path.join("datasets", script)).main
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code != 0 and str(tmp_path / missing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments" in err


def test_prepare_panoptic_fpn_converts_coco_tree(tmp_path):
    toy_dir = ensure_toy_dataset(3, 2, (64, 80), seed=11, root=str(tmp_path / "d2"))
    p = toy_split_paths(toy_dir, "val")
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copy(p["panoptic_json"], coco / "annotations" / "panoptic_val2017.json")
    shutil.copytree(p["panoptic_root"], coco / "panoptic_val2017")
    # in-process (the script's CLI is exercised by test_prepare_scripts_missing_input)
    script = load_script("datasets/prepare_panoptic_fpn.py")
    assert script.main(["--root", str(tmp_path), "--splits", "val2017", "--workers", "2"]) == 0
    out_dir = coco / "panoptic_stuff_val2017"
    assert (
        sorted(os.listdir(out_dir))
        == sorted(os.listdir(p["sem_seg_stuff_root"]))
        == ["000000.png", "000001.png"]
    )
    lut = np.array([1, 2, 3, 4, 5, 0, 0, 0], np.uint8)  # 8-class label -> stuff label
    for f in os.listdir(out_dir):
        out = _read(out_dir / f)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, _read(os.path.join(p["sem_seg_stuff_root"], f)))
        np.testing.assert_array_equal(out, lut[_read(os.path.join(p["sem_seg_root"], f))])


def test_prepare_ade20k_converts(tmp_path):
    base = tmp_path / "ADEChallengeData2016" / "annotations"
    label = np.array([[0, 1, 2], [150, 149, 0]], np.uint8)
    for split in ("training", "validation"):
        (base / split).mkdir(parents=True)
        Image.fromarray(label).save(base / split / f"ADE_{split}_00000001.png")
    proc = _run([_script("prepare_ade20k_sem_seg.py"), "--root", str(tmp_path), "--workers", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("training", "validation"):
        out = _read(
            tmp_path
            / "ADEChallengeData2016"
            / "annotations_detectron2"
            / split
            / f"ADE_{split}_00000001.png"
        )
        np.testing.assert_array_equal(out, [[255, 0, 1], [149, 148, 255]])


@pytest.mark.slow
def test_prepare_pascal_context_converts(tmp_path):
    import scipy.io

    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "trainval").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n")
    # 0 unlabeled, 1 accordion (not in the 59), 2 aeroplane (1st), 458 wood (59th), 284 person
    label_map = np.array([[0, 1, 2], [458, 284, 2]], np.uint16)
    for i in ("2008_000002", "2008_000003"):
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        scipy.io.savemat(voc / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    (voc / "labels.txt").write_text("1: accordion\n2: aeroplane\n284: person\n458: wood\n")
    proc = _run([_script("prepare_pascal_context.py"), "--root", str(tmp_path), "--workers", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr
    person = PASCAL_CONTEXT_59_CLASSES.index("person")
    out = tmp_path / "pascal_context"
    for split, i in (("train", "2008_000002"), ("val", "2008_000003")):
        np.testing.assert_array_equal(
            _read(out / "annotations_ctx60" / split / f"{i}.png"), [[0, 0, 1], [59, person + 1, 1]]
        )
        np.testing.assert_array_equal(
            _read(out / "annotations_ctx59" / split / f"{i}.png"), [[255, 255, 0], [58, person, 0]]
        )
        assert (out / "images" / split / f"{i}.jpg").is_file()
    # the registered datasets read this layout
    try:
        register_pascal_context(str(tmp_path))
        for n in (59, 60):
            check_dataset_available(f"pascal_context_{n}_sem_seg_train")
            (d,) = DatasetCatalog.get(f"pascal_context_{n}_sem_seg_val")
            assert d["file_name"] == str(out / "images" / "val" / "2008_000003.jpg")
    finally:
        register_pascal_context()
    # a listed image without its .mat: one clear line
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n2008_000004\n")
    proc = _run([_script("prepare_pascal_context.py"), "--root", str(tmp_path), "--workers", "1"])
    assert (
        proc.returncode == 1 and proc.stderr.count("\n") == 1 and "2008_000004.mat" in proc.stderr
    )


def test_prepare_cityscapes_converts(tmp_path):
    city = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau"
    city.mkdir(parents=True)
    polygons = {
        "imgHeight": 8,
        "imgWidth": 10,
        "objects": [
            {"label": "road", "polygon": [[0, 4], [9, 4], [9, 7], [0, 7]]},
            {"label": "pole", "polygon": [[2, 0], [3, 0], [3, 3], [2, 3]]},
        ],
    }
    (city / "lindau_000000_000019_gtFine_polygons.json").write_text(json.dumps(polygons))
    proc = _run([_script("prepare_cityscapes.py"), "--root", str(tmp_path), "--workers", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _read(city / "lindau_000000_000019_gtFine_labelTrainIds.png")
    assert out.shape == (8, 10)
    assert (out[5] == 0).all()  # road = trainId 0
    assert out[1, 2] == 5  # pole = trainId 5
    assert out[1, 7] == 255  # unlabeled
