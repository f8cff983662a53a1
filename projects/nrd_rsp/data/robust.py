"""Fault-tolerant, resumable training data: checked image/label reading, bad-sample skipping and a
sample stream that is a pure function of ``(seed, global sample position)``.

Why: Detectron2's ``TrainingSampler`` restarts its index stream at ``--resume`` and the mappers
draw their augmentations from per-worker global RNGs, so a resumed run sees other batches than an
uninterrupted one; and one unreadable image kills the whole job. Here:

* **Position stream.** :class:`ResumableTrainingSampler` yields ``(p, dataset_index)`` for global
  positions ``p = start + rank, start + rank + world_size, ...``. The index of ``p`` comes from a
  permutation of epoch ``p // N`` seeded with ``(seed, epoch)`` (or, for Detectron2's other
  samplers, from their seeded index stream). :class:`ResumableMapDataset` seeds ``random``,
  ``numpy`` and ``torch`` from ``(seed, p, attempt)`` right before mapping sample ``p`` and
  restores the previous RNG states afterwards, so the mapped sample is the same whatever the
  number of data loader workers, and resuming at iteration ``i`` restarts at ``p = i * batch``.
* **Bad samples.** A mapper raises :class:`BadSampleError` (unreadable/corrupt image or label,
  label size != image size). :class:`ResumableMapDataset` then maps a substitute sample drawn
  from ``(seed, p, attempt)`` (still deterministic) and attaches the skipped file to the output;
  :class:`ResumableTrainLoader` (main process) strips it, warns once per file, counts, and
  records a fatal error when more than ``DATALOADER.MAX_SKIPPED_FRACTION`` of the samples seen
  were skipped (the trainer stops all ranks on it, see ``nrd_rsp.engine``).
"""
import contextlib
import itertools
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata

from detectron2.data import DatasetFromList, build_batch_data_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data.build import _train_loader_from_config
from detectron2.utils import comm

__all__ = [
    "BadSampleError",
    "TooManyBadSamplesError",
    "read_image_checked",
    "read_label_checked",
    "mix_seed",
    "seeded_rng",
    "ResumableTrainingSampler",
    "ResumableMapDataset",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
]

logger = logging.getLogger(__name__)

SKIPPED_KEY = "_nrd_rsp_skipped"  # per-sample list of (file, reason) that were skipped for it
MAX_ATTEMPTS = 16  # substitutes tried for one position before giving up


class BadSampleError(ValueError):
    """One sample cannot be used: unreadable/corrupt image or label, or inconsistent sizes.

    Takes a single message (so that PyTorch can re-raise it from a data loader worker); the
    offending path is in ``file_name`` and in the message.
    """

    def __init__(self, message: str, file_name: Optional[str] = None):
        super().__init__(message)
        self.file_name = file_name


class TooManyBadSamplesError(RuntimeError):
    """More than ``DATALOADER.MAX_SKIPPED_FRACTION`` of the training samples were unusable."""


def read_image_checked(file_name: str, fmt: Optional[str], what: str = "image") -> np.ndarray:
    """Detectron2's ``read_image`` (EXIF orientation; grayscale ``L``, ``RGBA``, palette ``P`` ...
    converted by PIL to ``fmt``: alpha dropped, palette looked up, gray replicated), raising
    :class:`BadSampleError` naming the file for a missing, unreadable or truncated file.

    Returns:
        HWC uint8 array for ``fmt`` in (RGB, BGR, L), (H, W) or (H, W, C) for ``fmt=None``.
    """
    try:
        return utils.read_image(file_name, format=fmt)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt files
        raise BadSampleError(f"cannot read {what} '{file_name}': {type(e).__name__}: {e}", file_name) from e


def read_label_checked(file_name: str, image_hw: Tuple[int, int], what: str = "label") -> np.ndarray:
    """Read a label map as stored (palette PNGs give their indices, not colours) and check it.

    Args:
        file_name: the label PNG.
        image_hw: (H, W) of the image it annotates.
    Returns:
        (H, W) array of label ids.
    Raises:
        BadSampleError: unreadable file, a colour (RGB with different channels) label, or a size
            different from the image's.
    """
    label = read_image_checked(file_name, None, what)
    if label.ndim == 3:
        if label.shape[2] >= 3 and not (
            np.array_equal(label[:, :, 0], label[:, :, 1]) and np.array_equal(label[:, :, 0], label[:, :, 2])
        ):
            raise BadSampleError(
                f"{what} '{file_name}' is a colour image; expected a single-channel map of class ids", file_name
            )
        label = label[:, :, 0]
    if tuple(label.shape) != tuple(image_hw):
        raise BadSampleError(
            f"{what} '{file_name}' has size {tuple(label.shape)} (H, W) but its image has size "
            f"{tuple(image_hw)}",
            file_name,
        )
    return label


def check_image_size_or_skip(dataset_dict: dict, image: np.ndarray) -> None:
    """Detectron2's ``check_image_size`` (image vs. ``height``/``width`` of the dict), raising
    :class:`BadSampleError` instead of ``SizeMismatchError``."""
    try:
        utils.check_image_size(dataset_dict, image)
    except utils.SizeMismatchError as e:
        raise BadSampleError(str(e), dataset_dict.get("file_name")) from e


def mix_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from non-negative integers (NumPy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Seed ``random``, ``numpy`` and ``torch`` (CPU) with ``seed`` inside the block and restore
    their previous states on exit, so that the block neither depends on nor disturbs them."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class ResumableTrainingSampler(torchdata.Sampler):
    """Infinite stream of ``(position, dataset index)`` for this rank, starting at a settable
    global position.

    Positions ``start + rank + k * world_size`` go to ``rank`` (Detectron2's ``TrainingSampler``
    sharding). Position ``p`` gets the index at offset ``p % N`` of the permutation of epoch
    ``p // N`` seeded with ``(seed, epoch)`` (``shuffle``), or ``p % N``; with ``index_stream``
    (a callable returning a seeded infinite index iterator, e.g. a Detectron2 sampler's), the
    ``p``-th index of that stream.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        *,
        shuffle: bool = True,
        index_stream: Optional[Callable[[], Iterator[int]]] = None,
        start_position: int = 0,
    ):
        if size <= 0:
            raise ValueError(f"ResumableTrainingSampler needs a non-empty dataset, got size={size}")
        self._size = int(size)
        self.seed = int(seed)
        self._shuffle = shuffle
        self._index_stream = index_stream
        self.start_position = int(start_position)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def _epoch_indices(self, epoch: int) -> List[int]:
        if not self._shuffle:
            return list(range(self._size))
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self._size, generator=g).tolist()

    def global_stream(self, start: int) -> Iterator[Tuple[int, int]]:
        """``(p, index)`` for every ``p >= start`` (all ranks)."""
        if self._index_stream is not None:
            indices = itertools.islice(self._index_stream(), start, None)
            yield from zip(itertools.count(start), indices)
            return
        epoch, offset = divmod(start, self._size)
        p = start
        while True:
            for idx in self._epoch_indices(epoch)[offset:]:
                yield p, idx
                p += 1
            epoch, offset = epoch + 1, 0

    def __iter__(self):
        start = self.start_position
        yield from itertools.islice(self.global_stream(start), self._rank, None, self._world_size)


class ResumableMapDataset(torchdata.Dataset):
    """``dataset[(p, index)]`` = ``mapper(dicts[index])`` under RNGs seeded from ``(seed, p)``.

    An exception from the mapper (:class:`BadSampleError` for bad files, anything else a sample
    cannot survive) or a ``None`` result is not fatal: a substitute
    index drawn from ``(seed, p, attempt)`` is mapped instead and ``(file, reason)`` is appended
    to the output's ``SKIPPED_KEY`` list. After ``max_attempts`` failures in a row it raises
    :class:`TooManyBadSamplesError`.
    """

    def __init__(self, dataset: Sequence[dict], mapper: Callable[[dict], Optional[dict]], seed: int,
                 max_attempts: int = MAX_ATTEMPTS):
        self._dataset = dataset
        self._mapper = mapper
        self.seed = int(seed)
        self._max_attempts = max_attempts

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        p, index = (key if isinstance(key, tuple) else (int(key), int(key)))
        skipped = []
        for attempt in range(self._max_attempts):
            d = self._dataset[index]
            with seeded_rng(mix_seed(self.seed, p, attempt)):
                try:
                    out = self._mapper(d)
                except BadSampleError as e:
                    out, reason = None, str(e)
                except Exception as e:  # e.g. a degenerate size an augmentation cannot handle
                    out, reason = None, f"cannot map '{d.get('file_name')}': {type(e).__name__}: {e}"
                else:
                    reason = f"the mapper returned None for '{d.get('file_name')}'"
                if out is not None:
                    out[SKIPPED_KEY] = skipped
                    return out
                skipped.append((d.get("file_name", f"dataset index {index}"), reason))
                index = int(np.random.randint(len(self._dataset)))  # the substitute, seeded by (p, attempt)
        raise TooManyBadSamplesError(
            f"{self._max_attempts} samples in a row could not be loaded at stream position {p}; "
            f"the last: {skipped[-1][1]}. Check the dataset files."
        )


class ResumableTrainLoader:
    """Iterable of training batches (lists of dicts) around a torch ``DataLoader`` over
    :class:`ResumableMapDataset` / :class:`ResumableTrainingSampler`.

    In the main process it strips the skipped-file records from every sample, warns once per
    skipped file, keeps ``num_seen`` / ``num_skipped`` and sets ``fatal_error`` (instead of
    raising, so that all ranks can stop together) once the skipped fraction exceeds
    ``max_skipped_fraction`` after ``min_samples`` samples. ``configure(start_iter=, seed=)``
    must be called before iterating to resume the stream.
    """

    def __init__(self, build_loader: Callable[[], Iterator], sampler: ResumableTrainingSampler,
                 dataset: ResumableMapDataset, batch_size_total: int, max_skipped_fraction: float,
                 min_samples: int):
        self._build_loader = build_loader
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size_total = batch_size_total
        self.max_skipped_fraction = max_skipped_fraction
        self.min_samples = min_samples
        self.num_seen = 0
        self.num_skipped = 0
        self.skipped_files: dict = {}  # file -> reason (first)
        self.fatal_error: Optional[str] = None

    def configure(self, *, start_iter: int, seed: int) -> None:
        """Start the stream at iteration ``start_iter`` (position ``start_iter * batch``) with
        ``seed``. Takes effect at the next ``iter()``."""
        self.sampler.start_position = int(start_iter) * self.batch_size_total
        self.sampler.seed = int(seed)
        self.dataset.seed = int(seed)

    def _record(self, sample: dict) -> dict:
        skipped = sample.pop(SKIPPED_KEY, ())
        self.num_seen += 1 + len(skipped)
        for file_name, reason in skipped:
            self.num_skipped += 1
            if file_name not in self.skipped_files:
                self.skipped_files[file_name] = reason
                logger.warning(f"Skipping a bad training sample: {reason} ({self.num_skipped} skipped so far)")
        seen, bad = self.num_seen, self.num_skipped
        if self.fatal_error is None and seen >= self.min_samples and bad > self.max_skipped_fraction * seen:
            self.fatal_error = (
                f"{bad} of the {seen} training samples loaded so far were unusable ({100.0 * bad / seen:.1f}% > "
                f"DATALOADER.MAX_SKIPPED_FRACTION {self.max_skipped_fraction}); e.g. {next(iter(self.skipped_files))}. "
                "Fix or remove the files (or raise DATALOADER.MAX_SKIPPED_FRACTION)."
            )
        return sample

    def __iter__(self):
        for batch in self._build_loader():
            yield [self._record(s) for s in batch]


def build_resumable_train_loader(cfg, mapper, dataset: Optional[list] = None, seed: Optional[int] = None):
    """The training loader of ``cfg`` as a :class:`ResumableTrainLoader`.

    Uses Detectron2's dataset building, sampler choice (``DATALOADER.SAMPLER_TRAIN``: the
    ``TrainingSampler`` stream is re-implemented position-addressable; the others' seeded streams
    are used as they are) and ``build_batch_data_loader``. Aspect-ratio grouping (whose batches
    depend on worker timing) is used only when ``DATALOADER.DETERMINISTIC`` is off.
    """
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
        sampler = ResumableTrainingSampler(len(dataset), seed)
    else:
        d2_sampler = _train_loader_from_config(cfg, mapper, dataset=dataset)["sampler"]
        if not hasattr(d2_sampler, "_infinite_indices"):
            raise ValueError(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN} has no index stream to resume")
        logger.info(f"Resumable stream over the index stream of {type(d2_sampler).__name__}")
        sampler = ResumableTrainingSampler(len(dataset), seed, index_stream=d2_sampler._infinite_indices)
    mapped = ResumableMapDataset(DatasetFromList(dataset, copy=False), mapper, seed)
    grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING and not cfg.DATALOADER.DETERMINISTIC
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING and not grouping:
        logger.info("DATALOADER.DETERMINISTIC: aspect-ratio grouping is off (its batches depend on worker timing)")

    def build():
        # A private generator: creating the loader's iterator must not consume the global torch RNG.
        return build_batch_data_loader(
            mapped, sampler, cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=grouping,
            num_workers=cfg.DATALOADER.NUM_WORKERS, seed=mix_seed(sampler.seed, 1),
        )

    return ResumableTrainLoader(
        build, sampler, mapped, cfg.SOLVER.IMS_PER_BATCH,
        max_skipped_fraction=cfg.DATALOADER.MAX_SKIPPED_FRACTION,
        min_samples=cfg.DATALOADER.SKIP_CHECK_MIN_SAMPLES,
    )

