"""BoundaryFScoreEvaluator on two images whose boundary F-score is computed by hand.

Image A (8 x 8): ground truth class 0 in columns 0-3, class 1 in columns 4-7; its boundary pixels
are columns 3 and 4 (16). The prediction moves the edge two columns right (class 0 in columns
0-5): boundary columns 5 and 6 (16). With band 1 (a 3 x 3 cross), predicted column 5 lies within
1 pixel of ground-truth column 4, column 6 does not: 8 of 16 matched; ground-truth column 4 lies
within 1 of predicted column 5, column 3 does not: 8 of 16.

Image B (4 x 6): ground truth class 2 in rows 0-1 and class 0 in rows 2-3, but row 0 is
``ignore_label`` (255); the prediction is right everywhere (class 2 in rows 0-1). Boundary pixels
on valid ground truth: rows 1 and 2 for both (12); all matched.

Pooled: P = R = (8 + 12) / (16 + 12) = 20 / 28, F = 20 / 28 too; BF = 71.43 %.
"""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from nrd_rsp.evaluation import BoundaryFScoreEvaluator

NAME = "_boundary_fscore_hand_case"


def _images():
    gt_a = np.zeros((8, 8), np.uint8)
    gt_a[:, 4:] = 1
    pred_a = np.ones((8, 8), np.int64)
    pred_a[:, :6] = 0
    gt_b = np.zeros((4, 6), np.uint8)
    gt_b[:2] = 2
    gt_b[0] = 255
    pred_b = np.zeros((4, 6), np.int64)
    pred_b[:2] = 2
    return [(gt_a, pred_a), (gt_b, pred_b)]


@pytest.fixture
def dataset(tmp_path):
    dicts = []
    for i, (gt, _) in enumerate(_images()):
        path = str(tmp_path / f"gt{i}.png")
        Image.fromarray(gt).save(path)
        dicts.append({"file_name": f"img{i}.png", "sem_seg_file_name": path})
    DatasetCatalog.register(NAME, lambda: dicts)
    MetadataCatalog.get(NAME).set(ignore_label=255, stuff_classes=["a", "b", "c"])
    yield NAME
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def test_boundary_fscore_of_a_hand_computed_case(dataset):
    ev = BoundaryFScoreEvaluator(dataset, band=1, distributed=False)
    ev.reset()
    for i, (_, pred) in enumerate(_images()):
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 3).permute(2, 0, 1).float()
        ev.process([{"file_name": f"img{i}.png"}], [{"sem_seg": logits}])
    got = ev.evaluate()["boundary"]
    assert got["BP"] == pytest.approx(100 * 20 / 28)
    assert got["BR"] == pytest.approx(100 * 20 / 28)
    assert got["BF"] == pytest.approx(100 * 20 / 28)


def test_boundary_fscore_of_image_a_alone_and_wider_band(dataset):
    """Image A alone: 8 / 16 both ways (BF 50); with band 2 every boundary pixel is matched."""
    for band, expected in [(1, 50.0), (2, 100.0)]:
        ev = BoundaryFScoreEvaluator(dataset, band=band, distributed=False)
        ev.reset()
        pred = torch.from_numpy(_images()[0][1])
        logits = torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1).float()
        ev.process([{"file_name": "img0.png"}], [{"sem_seg": logits}])
        assert ev.evaluate()["boundary"]["BF"] == pytest.approx(expected)
