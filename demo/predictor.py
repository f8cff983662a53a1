"""Single-image inference and drawing for ``demo/demo.py``.

``Predictor`` follows Detectron2's ``DefaultPredictor`` (BGR image in, the model's outputs at the
original size out; test-time resize ``INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST``), ``DemoVisualizer``
draws semantic, panoptic or instance predictions with Detectron2's ``Visualizer`` (images) or
``VideoVisualizer`` (videos, colours kept stable across frames).
"""
import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from nrd_rsp.engine import load_model_for_eval

__all__ = ["Predictor", "DemoVisualizer"]


class Predictor:
    """``__call__(bgr)``: ``bgr`` uint8 ``[H, W, 3]`` -> the model's output dict for that image
    (``"sem_seg"`` ``[K, H, W]``, ``"panoptic_seg"``, ``"instances"``), at ``H x W``."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = load_model_for_eval(self.cfg)
        self.model.eval()
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format}")

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray) -> dict:
        image = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
        height, width = image.shape[:2]
        image = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        tensor = tensor.to(self.cfg.MODEL.DEVICE)
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


class DemoVisualizer:
    """Runs :class:`Predictor` and draws its output over the input.

    Args:
        cfg: frozen config; metadata (class names, colours) come from ``DATASETS.TEST[0]``.
        confidence_threshold: instances scoring below it are not drawn (panoptic segments are
            already filtered by the model with the same threshold, see demo.py).
    """

    def __init__(self, cfg, confidence_threshold: float = 0.5):
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
        self.predictor = Predictor(cfg)
        self.confidence_threshold = confidence_threshold
        self._video = None

    def _filter(self, instances):
        instances = instances.to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= self.confidence_threshold]
        return instances

    def run_on_image(self, bgr: np.ndarray):
        """Returns ``(predictions, drawn)``: ``drawn`` is an RGB uint8 ``[H, W, 3]`` image."""
        predictions = self.predictor(bgr)
        vis = Visualizer(bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in predictions:
            seg, segments = predictions["panoptic_seg"]
            out = vis.draw_panoptic_seg(seg.to("cpu"), segments)
        elif "instances" in predictions:
            out = vis.draw_instance_predictions(self._filter(predictions["instances"]))
        else:
            out = vis.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
        return predictions, out.get_image()

    def run_on_frame(self, bgr: np.ndarray) -> np.ndarray:
        """One video frame (BGR) -> drawn frame (BGR), colours consistent across calls."""
        if self._video is None:
            self._video = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        predictions = self.predictor(bgr)
        rgb = bgr[:, :, ::-1]
        if "panoptic_seg" in predictions:
            seg, segments = predictions["panoptic_seg"]
            out = self._video.draw_panoptic_seg_predictions(rgb, seg.to("cpu"), segments)
        elif "instances" in predictions:
            out = self._video.draw_instance_predictions(rgb, self._filter(predictions["instances"]))
        else:
            out = self._video.draw_sem_seg(rgb, predictions["sem_seg"].argmax(dim=0).to("cpu"))
        return np.ascontiguousarray(out.get_image()[:, :, ::-1])
