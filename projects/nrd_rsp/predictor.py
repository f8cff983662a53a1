"""The one inference path and the one drawing function of the project.

:class:`Predictor` follows Detectron2's ``DefaultPredictor``: a BGR image in, the model's outputs
at the image's size out, with the config's test-time resize (``ResizeShortestEdge(MIN_SIZE_TEST,
MAX_SIZE_TEST)``) and channel order (``INPUT.FORMAT``), exactly as evaluation feeds the model.
:func:`draw_predictions` draws panoptic, instance or semantic outputs with Detectron2's
``Visualizer`` (images) or ``VideoVisualizer`` (videos, colours stable across frames).
:func:`visualize_predictions` writes drawn predictions of a dataset's first images
(``train_net.py``); ``demo/demo.py`` uses the same two.
"""

import logging
import os
from typing import List, Optional

import cv2
import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.visualizer import ColorMode, Visualizer

from .errors import ConfigError

__all__ = ["Predictor", "draw_predictions", "visualize_predictions"]

logger = logging.getLogger("nrd_rsp")

# Output kind -> (Visualizer method, VideoVisualizer method).
_DRAW_METHODS = {
    "panoptic_seg": ("draw_panoptic_seg", "draw_panoptic_seg_predictions"),
    "instances": ("draw_instance_predictions", "draw_instance_predictions"),
    "sem_seg": ("draw_sem_seg", "draw_sem_seg"),
}


class Predictor:
    """``__call__(bgr)``: ``bgr`` uint8 ``[H, W, 3]`` -> the model's output dict for that image
    (``"sem_seg"`` ``[K, H, W]``, ``"panoptic_seg"``, ``"instances"``), at ``H x W``.

    Args:
        cfg: the model's config (``INPUT.FORMAT``, ``INPUT.MIN/MAX_SIZE_TEST``, ``MODEL.DEVICE``).
        model: the model with its weights loaded (e.g. ``nrd_rsp.engine.load_model_for_eval``);
            put in eval mode.
    """

    def __init__(self, cfg, model: torch.nn.Module):
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ConfigError(f"INPUT.FORMAT must be RGB or BGR, got '{self.input_format}'.")
        self.model = model.eval()
        self.device = cfg.MODEL.DEVICE
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray) -> dict:
        image = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
        height, width = image.shape[:2]
        image = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        return self.model([{"image": tensor.to(self.device), "height": height, "width": width}])[0]


def _drawable(predictions: dict, confidence_threshold: Optional[float]):
    """(output kind, arguments of its draw method) for the richest output of ``predictions``:
    panoptic, else instances (those scoring below ``confidence_threshold`` dropped), else the
    semantic top class per pixel. All on the CPU."""
    if "panoptic_seg" in predictions:
        seg, segments = predictions["panoptic_seg"]
        return "panoptic_seg", (seg.to("cpu"), segments)
    if "instances" in predictions:
        instances = predictions["instances"].to("cpu")
        if confidence_threshold is not None and instances.has("scores"):
            instances = instances[instances.scores >= confidence_threshold]
        return "instances", (instances,)
    return "sem_seg", (predictions["sem_seg"].argmax(dim=0).to("cpu"),)


def draw_predictions(
    rgb: np.ndarray,
    predictions: dict,
    metadata,
    *,
    video=None,
    confidence_threshold: Optional[float] = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Draw ``predictions`` (a model's output dict) over ``rgb`` (uint8 ``[H, W, 3]``).

    Args:
        metadata: the dataset's (class names, colours).
        video: a ``VideoVisualizer`` for a video frame (colours kept across calls), else None.
        confidence_threshold: instances scoring below it are not drawn (None: all).
        scale: drawing scale of an image (``Visualizer``; videos are drawn at their size).
    Returns:
        RGB uint8 ``[H * scale, W * scale, 3]``.
    """
    kind, args = _drawable(predictions, confidence_threshold)
    image_method, video_method = _DRAW_METHODS[kind]
    if video is not None:
        return getattr(video, video_method)(rgb, *args).get_image()
    vis = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return getattr(vis, image_method)(*args).get_image()


def _panel(rgb: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """The input (resized to the drawing's size) left of the drawing."""
    size = drawn.shape[1::-1]
    return np.concatenate([cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST), drawn], axis=1)


@torch.no_grad()
def visualize_predictions(
    cfg, model, dataset_name=None, num_images=None, output_dir=None
) -> List[str]:
    """Draw the predictions of ``model`` (through :class:`Predictor`) on the first
    ``num_images`` (``TEST.NUM_VIS_IMAGES``) images of ``dataset_name`` (``DATASETS.TEST[0]``)
    next to the input and write them as PNG to ``output_dir`` (``OUTPUT_DIR/vis``). Returns
    the written paths; the model's train/eval mode is kept."""
    num_images = cfg.TEST.NUM_VIS_IMAGES if num_images is None else num_images
    if not dataset_name and not cfg.DATASETS.TEST:
        return []
    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "vis")
    if num_images <= 0:
        return []
    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    was_training = model.training
    predictor = Predictor(cfg, model)
    paths = []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        bgr = utils.read_image(d["file_name"], format="BGR")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        scale = max(1.0, 480.0 / max(rgb.shape[:2]))  # small images drawn larger: legible labels
        drawn = draw_predictions(rgb, predictor(bgr), meta, scale=scale)
        name = os.path.splitext(os.path.basename(d["file_name"]))[0] + "_pred.png"
        paths.append(os.path.join(output_dir, name))
        cv2.imwrite(paths[-1], _panel(rgb, drawn)[:, :, ::-1])
    model.train(was_training)
    logger.info(f"Wrote {len(paths)} prediction visualisations to {output_dir}")
    return paths
