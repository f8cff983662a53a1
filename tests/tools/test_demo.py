"""demo/demo.py draws semantic (Semantic FPN) and panoptic (RSP Panoptic FPN) predictions of a
randomly initialised model on toy images (globs, several inputs) and on a small video, and
answers bad inputs with one line and exit status 2."""

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT, TOY_OPTS, load_script
from detectron2.data import DatasetCatalog

from nrd_rsp.engine import setup_cfg

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "demo", "demo.py")
SEM_CFG = os.path.join(ROOT, "configs", "Toy", "semantic_fpn_R_18_toy.yaml")
PAN_CFG = os.path.join(ROOT, "configs", "Toy", "rsp_panoptic_fpn_R_18_toy.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *TOY_OPTS]


def _run(args, timeout=600):
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    """Three toy validation images copied to a fresh directory."""
    setup_cfg(SEM_CFG, OPTS)  # registers the toy datasets with TOY_OPTS
    dicts = DatasetCatalog.get("toy_sem_seg_val")[:3]
    d = tmp_path_factory.mktemp("toy_images")
    paths = []
    for i, rec in enumerate(dicts):
        dst = d / f"img{i}{os.path.splitext(rec['file_name'])[1]}"
        shutil.copy(rec["file_name"], dst)
        paths.append(str(dst))
    return d, paths


def _assert_drawn(out_path, in_path):
    out = cv2.imread(str(out_path))
    ref = cv2.imread(str(in_path))
    assert out is not None, f"{out_path} is not an image"
    assert out.shape == ref.shape
    assert out.std() > 1.0, "blank output"
    # predictions are drawn over the input: same picture underneath, but not the same pixels
    diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() > 2.0


def test_semantic_demo_on_glob(toy_images, tmp_path):
    d, paths = toy_images
    ext = os.path.splitext(paths[0])[1]
    r = _run(
        ["--config-file", SEM_CFG, "--input", str(d / f"*{ext}"), "--output", str(tmp_path), *OPTS]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3/3" in r.stderr  # tqdm progress bar over the inputs
    for p in paths:
        _assert_drawn(tmp_path / (os.path.splitext(os.path.basename(p))[0] + ".png"), p)
    assert len(list(tmp_path.iterdir())) == 3


def test_panoptic_demo_on_video(toy_images, tmp_path):
    _, paths = toy_images
    frames = [cv2.imread(p) for p in paths] * 2  # 6 frames
    h, w = frames[0].shape[:2]
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    out_dir = tmp_path / "out"
    r = _run(
        [
            "--config-file",
            PAN_CFG,
            "--video-input",
            str(video),
            "--output",
            str(out_dir),
            "--confidence-threshold",
            "0.0",
            *OPTS,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cap = cv2.VideoCapture(str(out_dir / "clip.mp4"))
    out_frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out_frames.append(f)
    cap.release()
    assert len(out_frames) == len(frames)
    for got, src in zip(out_frames, frames):
        assert got.shape == (h, w, 3) and got.std() > 1.0
        assert np.abs(got.astype(np.int16) - src.astype(np.int16)).mean() > 2.0


def test_inputs_and_overrides_are_split():
    demo = load_script("demo/demo.py")
    inputs, opts = demo.split_inputs_and_opts(
        ["a.png", "b*.jpg", "MODEL.WEIGHTS", "w.pth"], ["SEED", "1"]
    )
    assert inputs == ["a.png", "b*.jpg"] and opts == ["MODEL.WEIGHTS", "w.pth", "SEED", "1"]
    assert demo.split_inputs_and_opts(["IMG.PNG"], []) == (["IMG.PNG"], [])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/*.png"], "No input file matches"),
        (["--input", "/nonexistent/a.png"], "No input file matches"),
        (["--video-input", "/nonexistent/clip.mp4"], "Video not found"),
        ([], "one of the arguments --input --video-input is required"),
        (["--input", "x.png", "--video-input", "y.mp4"], "not allowed with"),
    ],
)
def test_bad_inputs_one_line_exit_2(args, message, capsys, tmp_path):
    demo = load_script("demo/demo.py")
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", SEM_CFG, *args, "--output", str(tmp_path / "o"), *OPTS])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err
