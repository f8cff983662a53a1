"""Exported models (``tools/export_model.py``): tracing of the panoptic models and the runner of a
``model.ts`` / ``model.onnx`` with its post-processing, which happens outside the graph.

A panoptic export (``PanopticFPN``, ``RSPPanopticFPN``) maps ONE RAW IMAGE ``image`` float32
``[1, 3, H, W]`` (0-255, ``INPUT.FORMAT`` order, any ``H, W``) to the outputs of
``model.inference([{"image": image[0]}], do_postprocess=False)``, flattened by Detectron2's
``TracingAdapter`` (:data:`PANOPTIC_OUTPUTS`): the detections at the input size and the semantic
logits at the padded size. :func:`postprocess_panoptic` turns them into the model's output dict
(``sem_seg``, ``instances``, ``panoptic_seg`` at the requested size) with Detectron2's functions
and the model's own panoptic combination; :class:`ExportedModel` runs an exported file (with
onnxruntime for ``.onnx``: no PyTorch model code) like the eager model.
"""

import json
import os
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import torch
from detectron2.modeling import PanopticFPN, SemanticSegmentor
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from .errors import ConfigError
from .modeling.rsp_panoptic_fpn import combine_panoptic

__all__ = [
    "PANOPTIC_OUTPUTS",
    "ExportedModel",
    "check_exportable",
    "combine_settings",
    "panoptic_tracing_adapter",
    "postprocess_panoptic",
    "postprocess_semantic",
]

# Output names of a panoptic export, in the order of TracingAdapter's flattening
# (Instances fields sorted by name, then the image size, then the semantic logits).
PANOPTIC_OUTPUTS = ("pred_boxes", "pred_classes", "pred_masks", "scores", "image_size", "sem_seg")
# Axes of a panoptic ONNX export that vary with the image / the number of detections.
PANOPTIC_DYNAMIC_AXES = {
    "image": {2: "height", 3: "width"},
    "pred_boxes": {0: "detections"},
    "pred_classes": {0: "detections"},
    "pred_masks": {0: "detections"},
    "scores": {0: "detections"},
    "sem_seg": {1: "padded_height", 2: "padded_width"},
}


def check_exportable(cfg, model) -> str:
    """``"semantic"`` or ``"panoptic"``: what ``model`` exports as; ``ConfigError`` (one line)
    naming what is not supported otherwise."""
    if cfg.TEST.AUG.ENABLED:
        raise ConfigError(
            "Test-time augmentation (TEST.AUG.ENABLED) is not exportable; export without it."
        )
    if isinstance(model, SemanticSegmentor):
        return "semantic"
    if isinstance(model, PanopticFPN):
        if not cfg.MODEL.MASK_ON:
            raise ConfigError(
                "A panoptic model without masks (MODEL.MASK_ON False) is not exportable: the "
                "panoptic combination needs the instance masks."
            )
        return "panoptic"
    raise ConfigError(
        f"{cfg.MODEL.META_ARCHITECTURE} is not exportable: only semantic models "
        "(SemanticSegmentor) and panoptic models (PanopticFPN, RSPPanopticFPN) are."
    )


def _panoptic_inference(model, image):
    detections, sem_seg = model.inference([{"image": image[0]}], do_postprocess=False)
    return {"instances": detections[0], "sem_seg": sem_seg[0]}


def panoptic_tracing_adapter(model: PanopticFPN, image: torch.Tensor):
    """Detectron2's ``TracingAdapter`` of ``model`` (eval mode) on ``image`` ``[1, 3, H, W]``:
    a module ``image -> tuple of tensors`` (:data:`PANOPTIC_OUTPUTS`) ready for tracing."""
    from detectron2.export import TracingAdapter

    return TracingAdapter(model, image, _panoptic_inference)


def combine_settings(model: PanopticFPN) -> Dict[str, float]:
    """The model's ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds (stored next to an export)."""
    return {
        "overlap_thresh": float(model.combine_overlap_thresh),
        "stuff_area_thresh": float(model.combine_stuff_area_thresh),
        "instances_score_thresh": float(model.combine_instances_score_thresh),
    }


def postprocess_panoptic(outputs: Dict[str, torch.Tensor], height, width, combine: Dict) -> dict:
    """The eager model's output dict from the outputs of a panoptic export for one image.

    Args:
        outputs: name (:data:`PANOPTIC_OUTPUTS`) -> tensor, as returned by the exported graph.
        height, width: the output size (the original image's).
        combine: :func:`combine_settings` of the exported model.
    Returns:
        ``{"sem_seg": [K, height, width], "instances": Instances, "panoptic_seg": (ids,
        segments_info)}``, as ``PanopticFPN.inference`` returns it.
    """
    image_size = tuple(int(v) for v in outputs["image_size"])
    instances = Instances(image_size)
    instances.pred_boxes = Boxes(outputs["pred_boxes"])
    instances.scores = outputs["scores"]
    instances.pred_classes = outputs["pred_classes"]
    instances.pred_masks = outputs["pred_masks"]
    sem_seg = sem_seg_postprocess(outputs["sem_seg"], image_size, height, width)
    instances = detector_postprocess(instances, height, width)
    thresholds = SimpleNamespace(
        combine_overlap_thresh=combine["overlap_thresh"],
        combine_stuff_area_thresh=combine["stuff_area_thresh"],
        combine_instances_score_thresh=combine["instances_score_thresh"],
    )
    panoptic = combine_panoptic(thresholds, instances, sem_seg)
    return {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": panoptic}


def postprocess_semantic(logits: torch.Tensor, height, width) -> dict:
    """``{"sem_seg": [K, height, width]}`` from a semantic export's ``logits [1, K, H, W]``."""
    return {"sem_seg": sem_seg_postprocess(logits[0], tuple(logits.shape[-2:]), height, width)}


class ExportedModel(nn.Module):
    """An exported ``model.ts`` / ``model.onnx`` (with the ``export_info.json`` written next to
    it) used like the eager model: ``forward(batched_inputs)`` takes Detectron2's list of dicts
    (``"image"`` ``[3, H, W]`` raw pixels in ``INPUT.FORMAT``, optional ``"height"``,
    ``"width"``) and returns one output dict per image. ``.onnx`` files run on onnxruntime's
    CPU provider (``num_threads`` intra-op threads, 0: its default); only the post-processing
    (Detectron2's functions) uses PyTorch."""

    def __init__(self, path: str, info: Dict = None, num_threads: int = 0):
        super().__init__()
        if not os.path.isfile(path):
            raise ConfigError(f"Exported model not found: '{path}'.")
        if info is None:
            info_path = os.path.join(os.path.dirname(path), "export_info.json")
            if not os.path.isfile(info_path):
                raise ConfigError(f"No export_info.json next to '{path}'.")
            with open(info_path) as f:
                info = json.load(f)
        self.path, self.info = path, info
        self.kind = info.get("kind", "semantic")
        self.output_names = [o["name"] for o in info["outputs"]] if "outputs" in info else None
        if path.endswith(".onnx"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = num_threads  # 0: onnxruntime's default
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._ts = None
        else:
            self._session = None
            self._ts = torch.jit.load(path, map_location="cpu")

    def run(self, image: torch.Tensor) -> List[torch.Tensor]:
        """The exported graph's raw outputs (CPU tensors) for ``image`` ``[1, 3, H, W]``."""
        image = image.to("cpu", torch.float32)
        if self._session is not None:
            got = self._session.run(None, {"image": image.numpy()})
            return [torch.from_numpy(np.asarray(x)) for x in got]
        with torch.no_grad():
            got = self._ts(image)
        return list(got) if isinstance(got, (tuple, list)) else [got]

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[dict]:
        results = []
        for x in batched_inputs:
            image = x["image"]
            height = x.get("height", image.shape[-2])
            width = x.get("width", image.shape[-1])
            image = image[None].to(torch.float32)
            if self.kind == "semantic":  # fixed input size: resize to it
                size = tuple(self.info["input"]["shape"][-2:])
                if tuple(image.shape[-2:]) != size:
                    image = nn.functional.interpolate(
                        image, size=size, mode="bilinear", align_corners=False
                    )
            outputs = self.run(image)
            if self.kind == "panoptic":
                named = dict(zip(PANOPTIC_OUTPUTS, outputs))
                results.append(postprocess_panoptic(named, height, width, self.info["combine"]))
            else:
                results.append(postprocess_semantic(outputs[0], height, width))
        return results
