#!/usr/bin/env python
"""Draw the semantic / panoptic predictions of a model on images or a video.

    python demo/demo.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml \\
        --input "datasets/toy/*/val/images/*.png" --output vis/ MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file CFG --video-input clip.mp4 --output vis/ MODEL.WEIGHTS ...

``--input`` takes files and glob patterns (quote them to let the demo expand them); each image
is written as ``OUTPUT/<name>.png``, the prediction drawn over the input at the input's size.
``--video-input`` writes ``OUTPUT/<name>.mp4`` (same size and frame rate). ``KEY VALUE`` config
overrides may follow the inputs. ``--confidence-threshold`` sets the minimum score of drawn
instances and of the instances Panoptic FPN combines into the panoptic output; semantic
models draw every pixel's top class.
"""
import argparse
import glob
import os
import sys

import cv2
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402

import nrd_rsp  # noqa: E402,F401  (registers datasets, heads and meta-architectures)
from nrd_rsp import add_nrd_rsp_config  # noqa: E402
from nrd_rsp.engine import ConfigError, exit_on_user_error, setup_cfg  # noqa: E402
from predictor import DemoVisualizer  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"ERROR: {self.prog}: {message} (see --help)\n")


def build_parser():
    p = _ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="IMAGE", help="image files or glob patterns")
    src.add_argument("--video-input", metavar="VIDEO", help="a video file")
    p.add_argument("--output", default="./output/demo", metavar="DIR", help="where to write (default: %(default)s)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p


def _config_roots():
    cfg = get_cfg()
    add_nrd_rsp_config(cfg)
    return {k for k in cfg.keys() if not k.startswith("_")}


def split_inputs_and_opts(inputs, opts):
    """``--input a.png b.png MODEL.WEIGHTS w.pth`` puts the overrides into ``inputs``: move
    everything from the first config key (``MODEL.X``, ``OUTPUT_DIR`` ...) that is not an
    existing file into ``opts``."""
    roots = _config_roots()
    for i, item in enumerate(inputs or []):
        if item.split(".")[0] in roots and not os.path.exists(item):
            return inputs[:i], list(inputs[i:]) + list(opts)
    return inputs, list(opts)


def expand_inputs(patterns):
    """Files and glob patterns -> sorted, de-duplicated image paths; ``ConfigError`` when a
    pattern matches nothing."""
    paths = []
    for pattern in patterns:
        if os.path.isfile(pattern):
            paths.append(pattern)
            continue
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"No input file matches '{pattern}'.")
        paths.extend(p for p in matches if p.lower().endswith(IMAGE_EXTENSIONS))
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise ConfigError(f"No image among the inputs {patterns} (extensions: {', '.join(IMAGE_EXTENSIONS)}).")
    return paths


def setup(args):
    if any(o.startswith("--") for o in args.opts):
        raise ConfigError(f"Options must come before the KEY VALUE overrides; got {args.opts}.")
    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ConfigError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}.")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.OUTPUT_DIR = args.output  # the checkpointer creates OUTPUT_DIR: not the training one
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS file not found: '{weights}'.")
    cfg.freeze()
    return cfg


def _unique_output_path(output_dir, path, ext, used):
    stem = os.path.splitext(os.path.basename(path))[0]
    out, n = os.path.join(output_dir, stem + ext), 1
    while out in used:  # same file name in two input directories
        out, n = os.path.join(output_dir, f"{stem}_{n}{ext}"), n + 1
    used.add(out)
    return out


def run_on_images(demo, paths, output_dir):
    written, used = [], set()
    for path in tqdm(paths, desc="demo", unit="img", disable=len(paths) < 2):
        try:
            bgr = read_image(path, format="BGR")
        except Exception as e:  # unreadable / not an image
            raise ConfigError(f"Cannot read image '{path}': {e}") from e
        _, drawn = demo.run_on_image(bgr)
        out = _unique_output_path(output_dir, path, ".png", used)
        cv2.imwrite(out, drawn[:, :, ::-1])
        written.append(out)
    return written


def run_on_video(demo, video, output_dir):
    if not os.path.isfile(video):
        raise ConfigError(f"Video not found: '{video}'.")
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise ConfigError(f"Cannot open video '{video}'.")
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out = _unique_output_path(output_dir, video, ".mp4", set())
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    if not writer.isOpened():
        cap.release()
        raise ConfigError(f"Cannot write video '{out}' (no mp4v encoder in this OpenCV?).")
    n = 0
    try:
        with tqdm(total=total, desc="demo", unit="frame") as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                writer.write(demo.run_on_frame(frame))
                n += 1
                bar.update(1)
    finally:
        cap.release()
        writer.release()
    if n == 0:
        raise ConfigError(f"No frame could be read from '{video}'.")
    return [out]


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.input, args.opts = split_inputs_and_opts(args.input, args.opts)
    if args.input is not None and not args.input:
        raise ConfigError("--input needs at least one image or glob pattern.")
    # fail on a bad input before building the model
    paths = expand_inputs(args.input) if args.input else None
    if args.video_input and not os.path.isfile(args.video_input):
        raise ConfigError(f"Video not found: '{args.video_input}'.")
    cfg = setup(args)
    os.makedirs(args.output, exist_ok=True)
    demo = DemoVisualizer(cfg, confidence_threshold=args.confidence_threshold)
    written = run_on_images(demo, paths, args.output) if paths else run_on_video(demo, args.video_input, args.output)
    print(f"Wrote {len(written)} file(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
