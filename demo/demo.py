#!/usr/bin/env python
"""Draw the semantic / panoptic predictions of a model on images or a video.

    python demo/demo.py --config-file configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml \\
        --input "datasets/toy/*/val/images/*.png" --output vis/ MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file CFG --video-input clip.mp4 --output vis/ MODEL.WEIGHTS ...
    python demo/demo.py --config-file CFG --onnx export/model.onnx --input img.png --output vis/

``--input`` takes files and glob patterns (quote them to let the demo expand them); each image
is written as ``OUTPUT/<name>.png``, the prediction drawn over the input at the input's size.
``--video-input`` writes ``OUTPUT/<name>.mp4`` (same size and frame rate). ``KEY VALUE`` config
overrides may follow the inputs. ``--confidence-threshold`` sets the minimum score of drawn
instances and of the instances Panoptic FPN combines into the panoptic output; semantic
models draw every pixel's top class. ``--onnx FILE`` draws from a model exported by
``tools/export_model.py`` (its ``export_info.json`` next to it) run by onnxruntime instead of
``MODEL.WEIGHTS``; the config then only gives the class names and the test resizing (the
detector's own score threshold is the one baked in at export).
"""

import argparse
import glob
import os
import sys

import cv2
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode
from tqdm import tqdm

import nrd_rsp  # noqa: F401  (registers datasets, heads and meta-architectures)
from nrd_rsp import add_nrd_rsp_config
from nrd_rsp.engine import check_weights_file, load_model_for_eval, setup_cfg
from nrd_rsp.errors import ConfigError, OneLineArgumentParser, exit_on_error
from nrd_rsp.export import ExportedModel
from nrd_rsp.predictor import Predictor, draw_predictions
from nrd_rsp.safe_loading import add_allow_unsafe_config_argument

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def build_parser():
    p = OneLineArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    add_allow_unsafe_config_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="IMAGE", help="image files or glob patterns")
    src.add_argument("--video-input", metavar="VIDEO", help="a video file")
    p.add_argument(
        "--output",
        default="./output/demo",
        metavar="DIR",
        help="where to write (default: %(default)s)",
    )
    p.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T")
    p.add_argument(
        "--onnx", metavar="FILE", help="draw from this exported model.onnx (onnxruntime, CPU)"
    )
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
        matches = sorted(
            p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)
        )
        if not matches:
            raise ConfigError(f"No input file matches '{pattern}'.")
        paths.extend(p for p in matches if p.lower().endswith(IMAGE_EXTENSIONS))
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise ConfigError(
            f"No image among the inputs {patterns} (extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return paths


def setup(args):
    if any(o.startswith("--") for o in args.opts):
        raise ConfigError(f"Options must come before the KEY VALUE overrides; got {args.opts}.")
    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ConfigError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}."
        )
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.OUTPUT_DIR = args.output  # the checkpointer creates OUTPUT_DIR: not the training one
    if args.onnx:
        if not args.onnx.endswith(".onnx") or not os.path.isfile(args.onnx):
            raise ConfigError(f"--onnx needs an existing .onnx file, got '{args.onnx}'.")
        cfg.MODEL.DEVICE = "cpu"
    else:
        check_weights_file(cfg, eval_only=True)
    cfg.freeze()
    return cfg


class DemoVisualizer:
    """Runs the model (:class:`nrd_rsp.predictor.Predictor`) on BGR images or video frames and
    draws its output over them (:func:`nrd_rsp.predictor.draw_predictions`).

    Args:
        cfg: frozen config; metadata (class names, colours) come from ``DATASETS.TEST[0]``.
        confidence_threshold: instances scoring below it are not drawn (panoptic segments are
            already filtered by the model with the same threshold, see :func:`setup`).
        onnx: an exported ``model.onnx`` to run instead of the config's model.
    """

    def __init__(self, cfg, confidence_threshold: float = 0.5, onnx: str = None):
        self.metadata = MetadataCatalog.get(
            cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        )
        if onnx:
            model = ExportedModel(onnx)
            if "combine" in model.info:  # the panoptic combination runs outside the graph
                model.info["combine"]["instances_score_thresh"] = confidence_threshold
        else:
            model = load_model_for_eval(cfg)
        self.predictor = Predictor(cfg, model)
        self.confidence_threshold = confidence_threshold
        self._video = None

    def run_on_image(self, bgr):
        """Returns ``(predictions, drawn)``: ``drawn`` is an RGB uint8 ``[H, W, 3]`` image."""
        predictions = self.predictor(bgr)
        drawn = draw_predictions(
            bgr[:, :, ::-1],
            predictions,
            self.metadata,
            confidence_threshold=self.confidence_threshold,
        )
        return predictions, drawn

    def run_on_frame(self, bgr):
        """One video frame (BGR) -> drawn frame (BGR), colours consistent across calls."""
        if self._video is None:
            self._video = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        drawn = draw_predictions(
            bgr[:, :, ::-1],
            self.predictor(bgr),
            self.metadata,
            video=self._video,
            confidence_threshold=self.confidence_threshold,
        )
        return np.ascontiguousarray(drawn[:, :, ::-1])


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


@exit_on_error
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
    demo = DemoVisualizer(cfg, confidence_threshold=args.confidence_threshold, onnx=args.onnx)
    written = (
        run_on_images(demo, paths, args.output)
        if paths
        else run_on_video(demo, args.video_input, args.output)
    )
    print(f"Wrote {len(written)} file(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
