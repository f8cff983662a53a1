"""Test-time augmentation (multi-scale + horizontal flip) for semantic and panoptic models.

The scales and flip come from Detectron2's own ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}`` keys and
its ``DatasetMapperTTA``; this module averages the per-pixel class probabilities of the augmented
copies (after undoing the flip) at the original image size.

Panoptic models (:class:`PanopticFPN` and :class:`RSPPanopticFPN`): only the semantic branch is
augmented. Instances come from one plain pass at the test size, and the panoptic output combines
them with the averaged semantic prediction by Panoptic FPN's own rule
(``combine_semantic_and_instance_outputs`` with the model's ``MODEL.PANOPTIC_FPN.COMBINE`` keys).
"""

import copy

import torch
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA, PanopticFPN
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import nn

from .rsp_panoptic_fpn import combine_panoptic

__all__ = ["SemanticSegmentorWithTTA", "PanopticFPNWithTTA", "build_tta_model"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wrap a model whose outputs hold ``"sem_seg"`` logits (Tensor[K, H, W] at the original size).

    Returns ``[{"sem_seg": Tensor[K, H, W]}]``: class probabilities averaged over the copies.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size=1):
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.input_format = cfg.INPUT.FORMAT
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, batched_inputs):
        return [self._inference_one_image(x) for x in batched_inputs]

    def _semantic_logits(self, inputs):
        """[Tensor[K, H, W]] at each input's (height, width)."""
        return [out["sem_seg"] for out in self.model(inputs)]

    def _averaged_probs(self, inp):
        augmented = self.tta_mapper(inp)
        probs = None
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start : start + self.batch_size]
            for aug_input, logits in zip(chunk, self._semantic_logits(chunk)):
                prob = logits.softmax(dim=0)
                if any(isinstance(t, HFlipTransform) for t in aug_input["transforms"].transforms):
                    prob = prob.flip(dims=[2])
                probs = prob if probs is None else probs + prob
        return probs / len(augmented)

    def _prepare(self, inp):
        inp = copy.copy(inp)
        if "image" not in inp:
            image = read_image(inp.pop("file_name"), self.input_format)
            inp["image"] = torch.from_numpy(image.copy()).permute(2, 0, 1)
        if "height" not in inp:
            inp["height"], inp["width"] = inp["image"].shape[1:3]
        return inp

    def _inference_one_image(self, inp):
        return {"sem_seg": self._averaged_probs(self._prepare(inp))}


class PanopticFPNWithTTA(SemanticSegmentorWithTTA):
    """Wrap a :class:`PanopticFPN` (or subclass). Returns ``[{"sem_seg", "instances",
    "panoptic_seg"}]``: averaged semantic probabilities, the instances of the plain pass, and
    their panoptic combination."""

    def _semantic_logits(self, inputs):
        m = self.model
        images = m.preprocess_image(inputs)
        if hasattr(m, "extract_features"):  # RSPPanopticFPN: the refined pyramid
            features = m.extract_features(images.tensor)[0]
        else:
            features = m.backbone(images.tensor)
        results, _ = m.sem_seg_head(features, None)
        return [
            sem_seg_postprocess(r, size, x.get("height", size[0]), x.get("width", size[1]))
            for r, size, x in zip(results, images.image_sizes, inputs)
        ]

    def _inference_one_image(self, inp):
        inp = self._prepare(inp)
        probs = self._averaged_probs(inp)
        instances = self.model([inp])[0]["instances"]
        panoptic = combine_panoptic(self.model, instances, probs)
        return {"sem_seg": probs, "instances": instances, "panoptic_seg": panoptic}


def build_tta_model(cfg, model):
    """The TTA wrapper that fits ``model``: :class:`PanopticFPNWithTTA` for Panoptic FPN models,
    else :class:`SemanticSegmentorWithTTA`."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    cls = PanopticFPNWithTTA if isinstance(inner, PanopticFPN) else SemanticSegmentorWithTTA
    return cls(cfg, inner)
