"""COCO panoptic -> the "separated" stuff labels Panoptic FPN trains on.

Shared by the toy generator (:mod:`nrd_rsp.data.toy.write`) and
``datasets/prepare_panoptic_fpn.py`` (COCO), so that both write the same format.
"""

from typing import Dict, Sequence

import numpy as np

__all__ = ["stuff_id_map", "panoptic_to_stuff_semantic"]


def stuff_id_map(categories: Sequence[dict]) -> Dict[int, int]:
    """Map COCO panoptic category ids to Panoptic FPN stuff labels.

    Detectron2's convention (``_get_coco_panoptic_separated_meta``): every thing category -> 0,
    the stuff categories -> 1..K in the order they are listed, void (segment id 0) -> 255.

    Args:
        categories: the ``categories`` of a COCO panoptic JSON (dicts with ``id``, ``isthing``).
    Returns:
        dict category id -> uint8 label; key 0 stands for void.
    """
    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    if len(stuff_ids) > 254:
        raise ValueError(f"{len(stuff_ids)} stuff categories do not fit into uint8 labels")
    id_map = {c["id"]: 0 for c in categories if c["isthing"]}
    id_map.update({cid: i + 1 for i, cid in enumerate(stuff_ids)})
    id_map[0] = 255
    return id_map


def panoptic_to_stuff_semantic(
    panoptic_rgb: np.ndarray, segments_info: Sequence[dict], id_map: Dict[int, int]
) -> np.ndarray:
    """Convert one COCO panoptic PNG to the stuff label map Panoptic FPN trains on.

    Args:
        panoptic_rgb: (H, W, 3) uint8, segment id = R + 256 G + 256^2 B (panopticapi ``id2rgb``).
        segments_info: the image's ``segments_info`` (``id``, ``category_id`` = dataset id).
        id_map: from :func:`stuff_id_map`.
    Returns:
        (H, W) uint8: 0 = thing pixels, 1..K = stuff classes, 255 = void / unlabeled.
    """
    from panopticapi.utils import rgb2id

    pan = rgb2id(np.asarray(panoptic_rgb, dtype=np.uint32))
    out = np.full(pan.shape, 255, dtype=np.uint8)
    for seg in segments_info:
        out[pan == seg["id"]] = id_map[seg["category_id"]]
    return out
