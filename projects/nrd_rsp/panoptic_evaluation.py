"""Panoptic quality with a choice of backend (``TEST.PANOPTIC_EVAL``).

* ``panopticapi`` (default): the reference, one process per image chunk. Its ``pq_compute``
  starts ``multiprocessing.cpu_count()`` processes, which runs large nodes out of memory
  (open-mmlab/mmdetection#7309); ``workers`` caps that number (0: one per core, as panopticapi).
* ``hotcoco`` (``pip install hotcoco``): a Rust implementation with panopticapi's arguments and
  results, threads in one process (all cores; ``RAYON_NUM_THREADS`` caps them if set before the
  first evaluation). ``workers`` does not apply to it.

:class:`PanopticEvaluator` is Detectron2's ``COCOPanopticEvaluator`` (same prediction files,
results dict and printed table) with its ``pq_compute`` call routed to :func:`pq_compute`.

A leaf of the package: imports detectron2, panopticapi, hotcoco and :mod:`.errors` only.
"""

import logging
import multiprocessing
from typing import Optional
from unittest import mock

from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi import evaluation as panopticapi_evaluation

from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "PanopticEvaluator",
    "build_panoptic_evaluator",
    "check_backend",
    "pq_compute",
]

logger = logging.getLogger(__name__)

BACKENDS = ("panopticapi", "hotcoco")
# Bound at import: PanopticEvaluator.evaluate() patches the module attribute with pq_compute below.
_panopticapi_pq_compute = panopticapi_evaluation.pq_compute


def check_backend(backend: str, workers: int) -> None:
    """Raise :class:`ConfigError` unless ``backend`` and ``workers`` are usable here."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"TEST.PANOPTIC_EVAL.BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"TEST.PANOPTIC_EVAL.WORKERS must be an integer >= 0, got {workers!r}")
    if backend == "hotcoco":
        _hotcoco_pq_compute()


def _hotcoco_pq_compute():
    """hotcoco's ``pq_compute``, or a :class:`ConfigError` that says how to install it."""
    try:
        from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
    except ImportError as e:
        raise ConfigError(
            "TEST.PANOPTIC_EVAL.BACKEND hotcoco needs the hotcoco package: pip install hotcoco "
            f"({e})"
        ) from e
    return hotcoco_pq_compute


class _CappedMultiprocessing:
    """Stands in for ``multiprocessing`` inside panopticapi.evaluation: ``cpu_count()`` returns the
    cap, and the pools it opens are kept so that they can be joined afterwards."""

    def __init__(self, processes: int):
        self.processes = processes
        self.pools = []

    def cpu_count(self) -> int:
        return self.processes

    def Pool(self, processes: int):  # noqa: N802 (multiprocessing's name)
        pool = multiprocessing.Pool(processes=processes)
        self.pools.append(pool)
        return pool


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
    *,
    backend: str = "panopticapi",
    workers: int = 0,
) -> dict:
    """panopticapi's ``pq_compute`` (same arguments, same ``All``/``Things``/``Stuff`` results as
    fractions) on ``backend``; ``workers`` > 0 caps panopticapi's processes."""
    check_backend(backend, workers)
    if backend == "hotcoco":
        res = _hotcoco_pq_compute()(gt_json_file, pred_json_file, gt_folder, pred_folder)
        for deviation in res.get("reference_deviations", ()):
            logger.warning(f"hotcoco differs from panopticapi here: {deviation}")
        return res
    capped = _CappedMultiprocessing(workers or multiprocessing.cpu_count())
    try:
        with mock.patch.object(panopticapi_evaluation, "multiprocessing", capped):
            return _panopticapi_pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder)
    finally:
        for pool in capped.pools:
            pool.close()
            pool.join()


class PanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` whose PQ comes from ``backend`` (``"panopticapi"`` or
    ``"hotcoco"``), with at most ``workers`` panopticapi processes (0: one per core)."""

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        backend: str = "panopticapi",
        workers: int = 0,
    ):
        check_backend(backend, workers)
        super().__init__(dataset_name, output_dir)
        self._backend = backend
        self._workers = workers

    def _pq_compute(self, gt_json_file, pred_json_file, gt_folder=None, pred_folder=None):
        return pq_compute(
            gt_json_file, pred_json_file, gt_folder, pred_folder,
            backend=self._backend, workers=self._workers,
        )  # fmt: skip

    def evaluate(self):
        # The parent imports panopticapi's pq_compute when it needs it: hand it ours instead.
        with mock.patch.object(panopticapi_evaluation, "pq_compute", self._pq_compute):
            return super().evaluate()


def build_panoptic_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None):
    """:class:`PanopticEvaluator` from ``cfg.TEST.PANOPTIC_EVAL.{BACKEND, WORKERS}`` (defaults
    ``panopticapi`` and 0 where the config has no such node)."""
    node = cfg.TEST.get("PANOPTIC_EVAL") or {}
    return PanopticEvaluator(
        dataset_name,
        output_dir,
        backend=node.get("BACKEND", "panopticapi"),
        workers=node.get("WORKERS", 0),
    )
