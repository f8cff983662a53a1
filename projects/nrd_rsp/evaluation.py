"""Evaluators of our own: the boundary F-score, and cityscapesscripts' scores under their own key.

Boundary quality of semantic predictions: the boundary F-score within a trimap band.

High-resolution decoders (NRD, RSP) matter most near object boundaries and on thin structures,
which region IoU barely sees. For every image, the boundary pixels of the prediction and of the
ground truth (pixels whose 4-neighbourhood holds another label) are matched within a band of
``band`` pixels: precision is the fraction of predicted boundary pixels within the band around a
ground-truth boundary, recall the converse; F = 2PR / (P + R). Pixels labelled ``ignore_label``
are excluded. Scores are pooled over the dataset (sums of matched / total boundary pixels).
"""

import itertools

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import CityscapesSemSegEvaluator, DatasetEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils import comm

__all__ = [
    "boundary_map",
    "boundary_counts",
    "BoundaryFScoreEvaluator",
    "CityscapesScriptsEvaluator",
]


def boundary_map(label: np.ndarray) -> np.ndarray:
    """bool[H, W]: pixels with a 4-neighbour of a different label."""
    b = np.zeros(label.shape, dtype=bool)
    diff_v = label[1:, :] != label[:-1, :]
    diff_h = label[:, 1:] != label[:, :-1]
    b[1:, :] |= diff_v
    b[:-1, :] |= diff_v
    b[:, 1:] |= diff_h
    b[:, :-1] |= diff_h
    return b


def boundary_counts(pred: np.ndarray, gt: np.ndarray, band: int, ignore_label: int = 255):
    """(matched predicted, predicted, matched gt, gt) boundary pixel counts of one image."""
    valid = gt != ignore_label
    pred_b = boundary_map(pred) & valid
    gt_b = boundary_map(gt) & valid
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    gt_band = cv2.dilate(gt_b.astype(np.uint8), kernel) > 0
    pred_band = cv2.dilate(pred_b.astype(np.uint8), kernel) > 0
    return (
        int((pred_b & gt_band).sum()),
        int(pred_b.sum()),
        int((gt_b & pred_band).sum()),
        int(gt_b.sum()),
    )


class BoundaryFScoreEvaluator(DatasetEvaluator):
    """Boundary F-score (in %) of ``outputs["sem_seg"]`` against the dataset's
    ``sem_seg_file_name``.

    Reports ``{"boundary": {"BF": F, "BP": precision, "BR": recall}}``.
    """

    def __init__(self, dataset_name, band=2, distributed=True):
        meta = MetadataCatalog.get(dataset_name)
        self._ignore = meta.ignore_label
        self._gt_file = {
            d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)
        }
        self._band = band
        self._distributed = distributed

    def reset(self):
        self._counts = np.zeros(4, dtype=np.int64)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            gt = load_image_into_numpy_array(self._gt_file[inp["file_name"]], dtype=np.int64)
            if gt.ndim == 3:
                gt = gt[:, :, 0]
            self._counts += np.array(boundary_counts(pred, gt, self._band, self._ignore))

    def evaluate(self):
        counts = self._counts
        if self._distributed:
            gathered = comm.gather(counts)
            if not comm.is_main_process():
                return {}
            counts = np.sum(list(itertools.chain([np.zeros(4, np.int64)], gathered)), axis=0)
        precision = counts[0] / max(counts[1], 1)
        recall = counts[2] / max(counts[3], 1)
        f = 2 * precision * recall / max(precision + recall, 1e-12)
        return {"boundary": {"BF": 100 * f, "BP": 100 * precision, "BR": 100 * recall}}


class CityscapesScriptsEvaluator(CityscapesSemSegEvaluator):
    """Detectron2's :class:`CityscapesSemSegEvaluator` (cityscapesscripts' IoU, iIoU, IoU_sup,
    iIoU_sup over the ``*_gtFine_labelIds.png``), reporting under ``"cityscapes_sem_seg"``.

    Detectron2 reports it under ``"sem_seg"``, the key of :class:`SemSegEvaluator` too, so the
    two cannot run side by side in ``DatasetEvaluators``; renamed, both report.
    """

    KEY = "cityscapes_sem_seg"

    def evaluate(self):
        res = super().evaluate()
        return {self.KEY: res["sem_seg"]} if res else res
