"""Synthetic inputs for cost and speed measurements: images, inference inputs, and training
batches with the labels a model needs (semantic maps, instances with boxes and masks)."""

from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.structures import BitMasks, Boxes, Instances
from torch import nn

__all__ = ["synthetic_image", "synthetic_inference_inputs", "synthetic_train_batches"]


def synthetic_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[3, H, W] float32 in [0, 255]: smooth random blobs plus noise (not constant, so that
    detection heads see varied scores)."""
    low = torch.rand(1, 3, max(1, height // 16), max(1, width // 16), generator=generator)
    img = nn.functional.interpolate(
        low, size=(height, width), mode="bilinear", align_corners=False
    )[0]
    img = img * 200 + torch.rand(3, height, width, generator=generator) * 55
    return img.clamp_(0, 255)


def synthetic_inference_inputs(
    height: int, width: int, batch_size: int = 1, device="cpu", seed: int = 0
) -> List[Dict]:
    """Detectron2 inference inputs: ``[{"image": [3, H, W], "height": H, "width": W}] * B``."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": synthetic_image(height, width, g).to(device), "height": height, "width": width}
        for _ in range(batch_size)
    ]


def _blocky_labels(height, width, num_classes, generator, block=16):
    low = torch.randint(
        num_classes, (1, 1, max(1, height // block), max(1, width // block)), generator=generator
    )
    return nn.functional.interpolate(low.float(), size=(height, width), mode="nearest")[0, 0].long()


def synthetic_train_batches(
    model: nn.Module,
    cfg: CfgNode,
    height: int,
    width: int,
    batch_size: int,
    num_batches: int = 2,
    device="cpu",
    seed: int = 0,
    num_instances: int = 4,
) -> List[List[Dict]]:
    """Training batches with the labels ``model`` needs, built once (cached by the caller).

    * models with ``sem_seg_head``: ``"sem_seg"`` [H, W] int64, blocky regions of
      ``SEM_SEG_HEAD.NUM_CLASSES`` classes;
    * models with ``roi_heads``: ``"instances"`` with ``gt_boxes``, ``gt_classes``
      (``ROI_HEADS.NUM_CLASSES``) and ``gt_masks`` (BitMasks, ellipses inside the boxes).
    """
    g = torch.Generator().manual_seed(seed)
    needs_sem = getattr(model, "sem_seg_head", None) is not None
    needs_inst = getattr(model, "roi_heads", None) is not None
    batches = []
    for _ in range(num_batches):
        batch = []
        for _ in range(batch_size):
            d = {
                "image": synthetic_image(height, width, g).to(device),
                "height": height,
                "width": width,
            }
            if needs_sem:
                d["sem_seg"] = _blocky_labels(
                    height, width, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, g
                ).to(device)
            if needs_inst:
                num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
                d["instances"] = _instances(height, width, num_instances, num_classes, g).to(device)
            batch.append(d)
        batches.append(batch)
    return batches


def _instances(height, width, num_instances, num_classes, generator) -> Instances:
    """``num_instances`` random boxes (10-50% of the image side) with random classes and
    elliptic masks inside the boxes."""
    g = generator
    wh = torch.rand(num_instances, 2, generator=g) * 0.4 + 0.1
    ctr = torch.rand(num_instances, 2, generator=g) * (1 - wh) + wh / 2
    size = torch.tensor([width, height], dtype=torch.float32)
    boxes = torch.cat([(ctr - wh / 2) * size, (ctr + wh / 2) * size], dim=1)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = ((xs[None] - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
        (ys[None] - cy[:, None, None]) / ry[:, None, None]
    ) ** 2 <= 1
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(num_classes, (num_instances,), generator=g)
    inst.gt_masks = BitMasks(masks)
    return inst
