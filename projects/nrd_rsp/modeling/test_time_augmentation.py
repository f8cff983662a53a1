"""Test-time augmentation for semantic segmentation: multi-scale + horizontal flip.

The scales and flip come from Detectron2's own ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}`` keys and its
``DatasetMapperTTA``; this module only averages the per-pixel class probabilities of the
augmented copies (after undoing the flip) at the original image size.
"""
import copy

import torch
from torch import nn

from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wrap a model whose outputs hold ``"sem_seg"`` logits (Tensor[K, H, W] at the original size)."""

    def __init__(self, cfg, model, tta_mapper=None, batch_size=1):
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, batched_inputs):
        return [self._inference_one_image(x) for x in batched_inputs]

    def _inference_one_image(self, inp):
        inp = copy.copy(inp)
        if "image" not in inp:
            inp["image"] = torch.from_numpy(read_image(inp.pop("file_name"), self.model.input_format))
            inp["image"] = inp["image"].permute(2, 0, 1)
        if "height" not in inp:
            inp["height"], inp["width"] = inp["image"].shape[1:3]
        augmented = self.tta_mapper(inp)
        probs = None
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start : start + self.batch_size]
            outputs = self.model(chunk)
            for aug_input, out in zip(chunk, outputs):
                prob = out["sem_seg"].softmax(dim=0)
                if any(isinstance(t, HFlipTransform) for t in aug_input["transforms"].transforms):
                    prob = prob.flip(dims=[2])
                probs = prob if probs is None else probs + prob
        return {"sem_seg": probs / len(augmented)}
