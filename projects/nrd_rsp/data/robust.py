"""Fault-tolerant, resumable training data: checked image/label reading, bad-sample skipping and a
sample stream that is a pure function of ``(seed, global sample position)``.

Why: Detectron2's ``TrainingSampler`` restarts its index stream at ``--resume``, the mappers draw
their augmentations from per-worker global RNGs and ``AspectRatioGroupedDataset`` forms batches in
the order the workers deliver samples, so a resumed run sees other batches than an uninterrupted
one; and one unreadable image kills the whole job. Here:

* **Position stream.** :class:`ResumableTrainingSampler` yields ``(p, dataset_index)`` for global
  positions ``p = start + rank, start + rank + world_size, ...``. The index of ``p`` comes from a
  permutation of epoch ``p // N`` seeded with ``(seed, epoch)`` (or, for Detectron2's other
  samplers, from their seeded index stream). :class:`ResumableMapDataset` seeds ``random``,
  ``numpy`` and ``torch`` from ``(seed, p, attempt)`` right before mapping sample ``p`` and
  restores the previous RNG states afterwards, so the mapped sample is the same whatever the
  number of data loader workers, and resuming at iteration ``i`` restarts at ``p = i * batch``.
* **Aspect-ratio grouping.** :class:`GroupedResumableSampler` forms the batches before mapping,
  in the sampler: this rank's positions go, in stream order, into two buckets by the orientation
  of their dataset dict (Detectron2's rule: ``width > height`` or not) and a full bucket is the
  next batch, as in ``AspectRatioGroupedDataset``. The batches are thus a pure function of
  ``(seed, rank, iteration)``, whatever the worker timing and ``NUM_WORKERS``; a resumed run
  replays the (cheap, index-only) bucketing from position 0 and skips the batches already
  trained on (1.2 s to resume at the end of a COCO 3x schedule, 270k x 16 positions).
* **Bad samples.** Only *data faults* are skipped: the mapper raises :class:`BadSampleError`
  (unreadable/corrupt image or label, label size != image size, image size != the dataset's,
  an image a resize would leave without a pixel row: :func:`apply_augmentations_checked`).
  :class:`ResumableMapDataset` then maps a substitute (of the same orientation group, so that a
  grouped batch keeps one orientation) drawn from ``(seed, p, attempt)`` (still deterministic)
  and attaches the skipped file to the output;
  :class:`ResumableTrainLoader` (main process) strips it, warns once per file, counts, and
  records a fatal error when more than ``DATALOADER.MAX_SKIPPED_FRACTION`` of the samples seen
  were skipped (the trainer stops all ranks on it, see ``nrd_rsp.engine``). Any other exception
  from a mapper is a bug, not bad data: it propagates with its traceback and stops training.
"""
import contextlib
import itertools
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata

from PIL import Image

from detectron2.data import DatasetFromList, build_batch_data_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import _train_loader_from_config
from detectron2.utils import comm

__all__ = [
    "BadSampleError",
    "TooManyBadSamplesError",
    "read_image_checked",
    "read_label_checked",
    "check_image_size_or_skip",
    "apply_augmentations_checked",
    "orientation_groups",
    "mix_seed",
    "seeded_rng",
    "ResumableTrainingSampler",
    "GroupedResumableSampler",
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
        msg = f"cannot read {what} '{file_name}': {type(e).__name__}: {e}"
        raise BadSampleError(msg, file_name) from e


def read_label_checked(file_name: str, image_hw: Tuple[int, int],
                       what: str = "label") -> np.ndarray:
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
        first = label[:, :, 0]
        grey = label.shape[2] < 3 or all(np.array_equal(first, label[:, :, c]) for c in (1, 2))
        if not grey:
            raise BadSampleError(
                f"{what} '{file_name}' is a colour image; expected a single-channel map of class "
                "ids", file_name,
            )
        label = first
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


def _check_output_size(tfm, image_hw: Tuple[int, int], file_name: str) -> None:
    """Raise :class:`BadSampleError` when a transform of ``tfm`` would give an empty image."""
    for t in tfm.transforms if isinstance(tfm, T.TransformList) else [tfm]:
        new_h, new_w = getattr(t, "new_h", 1), getattr(t, "new_w", 1)  # ResizeTransform
        if new_h < 1 or new_w < 1:
            raise BadSampleError(
                f"image '{file_name}' of size {tuple(image_hw)} (H, W) would be resized to "
                f"({new_h}, {new_w}) by {type(t).__name__}: too elongated for the training resize",
                file_name,
            )


class _SizeCheckedInput:
    """An ``AugInput`` proxy whose ``transform`` first checks the output size
    (:func:`_check_output_size`); every other attribute is the wrapped input's."""

    def __init__(self, aug_input: T.AugInput, file_name: str):
        self._aug_input = aug_input
        self._file_name = file_name

    def __getattr__(self, name):
        return getattr(self._aug_input, name)

    def transform(self, tfm) -> None:
        _check_output_size(tfm, self._aug_input.image.shape[:2], self._file_name)
        self._aug_input.transform(tfm)


def apply_augmentations_checked(augmentations: T.Augmentation, aug_input: T.AugInput,
                                file_name: str) -> T.Transform:
    """``augmentations(aug_input)`` (in place, returns the transforms), raising
    :class:`BadSampleError` naming ``file_name`` before a resize would leave the image without a
    pixel row or column (e.g. a 1 x 600 image whose short side rounds to 0), a data fault that
    PIL would report as a bare ``ValueError``. Each augmentation runs its own ``__call__``, with
    the same random draws as unchecked."""
    return augmentations(_SizeCheckedInput(aug_input, file_name))


_EXIF_ORIENTATION = 274  # the EXIF "Orientation" tag
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # its values that swap width and height


def _image_hw_from_header(file_name: str) -> Tuple[int, int]:
    """(H, W) of an image file as ``read_image`` returns it (EXIF orientation applied), from the
    header only; (0, 0) when it cannot be read (the mapper will report the file)."""
    try:
        with Image.open(file_name) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _EXIF_TRANSPOSED:
                w, h = h, w
        return h, w
    except Exception:  # unreadable: any group will do, the sample is skipped when mapped
        return 0, 0


def orientation_groups(dataset: Sequence[dict]) -> np.ndarray:
    """Detectron2's aspect-ratio group of every dataset dict (``AspectRatioGroupedDataset``):
    0 if ``width > height`` (landscape), else 1.

    Dicts without ``height``/``width`` get the size from the image file's header.
    Returns:
        uint8 array of shape (N,).
    """
    missing = sum(1 for d in dataset if "height" not in d or "width" not in d)
    if missing:
        logger.info(f"Aspect-ratio grouping: reading the size of {missing} images from their files")
    groups = np.empty(len(dataset), dtype=np.uint8)
    for i, d in enumerate(dataset):
        if "height" in d and "width" in d:
            h, w = d["height"], d["width"]
        else:
            h, w = _image_hw_from_header(d["file_name"])
        groups[i] = 0 if w > h else 1
    return groups


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
        *,
        size: int,
        seed: int,
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
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

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

    def rank_stream(self, start: int) -> Iterator[Tuple[int, int]]:
        """This rank's ``(p, index)`` for ``p >= start``: every ``world_size``-th one from
        ``start + rank``."""
        return itertools.islice(self.global_stream(start), self.rank, None, self.world_size)

    def __iter__(self):
        yield from self.rank_stream(self.start_position)


class GroupedResumableSampler(torchdata.Sampler):
    """This rank's stream of :class:`ResumableTrainingSampler` regrouped into batches of one
    aspect-ratio group, yielded item by item, a whole batch after another, from batch
    ``start_iter`` on.

    The rank's positions go, in stream order, into one bucket per group (``group_ids[index]``);
    a bucket that reaches ``batch_size`` items is the next batch and starts empty again
    (Detectron2's ``AspectRatioGroupedDataset``, but over dataset indices, before mapping). The
    ``i``-th batch therefore depends on ``(seed, rank, i)`` only; starting at ``start_iter``
    replays the bucketing of the batches before it.
    """

    def __init__(self, *, base: ResumableTrainingSampler, group_ids: Sequence[int], batch_size: int,
                 start_iter: int = 0):
        if batch_size <= 0:
            raise ValueError(f"GroupedResumableSampler: batch size {batch_size} is not positive")
        self.base = base
        self.group_ids = np.asarray(group_ids, dtype=np.int64).tolist()  # list: fast indexing
        self.batch_size = int(batch_size)
        self.start_iter = int(start_iter)

    @property
    def seed(self) -> int:
        return self.base.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.base.seed = int(value)

    def batches(self) -> Iterator[List[Tuple[int, int]]]:
        """This rank's batches of ``(p, index)``, from the first one."""
        buckets: dict = {}
        for p, idx in self.base.rank_stream(0):
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append((p, idx))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self):
        for batch in itertools.islice(self.batches(), self.start_iter, None):
            yield from batch


class ResumableMapDataset(torchdata.Dataset):
    """``dataset[(p, index)]`` = ``mapper(dicts[index])`` under RNGs seeded from ``(seed, p)``.

    A :class:`BadSampleError` from the mapper (a data fault) or a ``None`` result (Detectron2's
    convention for "drop this sample") is not fatal: a substitute index drawn from
    ``(seed, p, attempt)`` is mapped instead and ``(file, reason)`` is appended to the output's
    ``SKIPPED_KEY`` list. With ``group_ids`` the first ``max_attempts // 2`` substitutes come
    from the same group (a grouped batch keeps one orientation), the others from all indices
    (a group of only bad files does not stop training). After ``max_attempts`` failures in a
    row it raises :class:`TooManyBadSamplesError`. Any other exception is a bug in the mapper
    and propagates unchanged.
    """

    def __init__(self, *, dataset: Sequence[dict], mapper: Callable[[dict], Optional[dict]],
                 seed: int, group_ids: Optional[Sequence[int]] = None,
                 max_attempts: int = MAX_ATTEMPTS):
        self._dataset = dataset
        self._mapper = mapper
        self.seed = int(seed)
        self._max_attempts = max_attempts
        self._group_ids = None if group_ids is None else np.asarray(group_ids)
        self._members = None if group_ids is None else {
            int(g): np.flatnonzero(self._group_ids == g) for g in np.unique(self._group_ids)
        }

    def __len__(self):
        return len(self._dataset)

    def _substitute(self, index: int, attempt: int) -> int:
        """A random index (global RNGs, seeded by the caller), of the group of ``index`` while
        ``attempt < max_attempts // 2``."""
        if self._members is None or attempt >= self._max_attempts // 2:
            return int(np.random.randint(len(self._dataset)))
        members = self._members[int(self._group_ids[index])]
        return int(members[np.random.randint(len(members))])

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
                else:
                    reason = f"the mapper returned None for '{d.get('file_name')}'"
                if out is not None:
                    out[SKIPPED_KEY] = skipped
                    return out
                skipped.append((d.get("file_name", f"dataset index {index}"), reason))
                index = self._substitute(index, attempt)  # seeded by (p, attempt)
        raise TooManyBadSamplesError(
            f"{self._max_attempts} samples in a row could not be loaded at stream position {p}; "
            f"the last: {skipped[-1][1]}. Check the dataset files."
        )


class ResumableTrainLoader:
    """Iterable of training batches (lists of dicts) around a torch ``DataLoader`` over
    :class:`ResumableMapDataset` and a :class:`ResumableTrainingSampler` (or a
    :class:`GroupedResumableSampler` around one).

    In the main process it strips the skipped-file records from every sample, warns once per
    skipped file, keeps ``num_seen`` / ``num_skipped`` and sets ``fatal_error`` (instead of
    raising, so that all ranks can stop together) once the skipped fraction exceeds
    ``max_skipped_fraction`` after ``min_samples`` samples. ``configure(start_iter=, seed=)``
    must be called before iterating to resume the stream.
    """

    def __init__(self, *, build_loader: Callable[[], Iterator], sampler: torchdata.Sampler,
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
        """Start the stream at iteration ``start_iter`` (position ``start_iter * batch``, or batch
        ``start_iter`` of a grouped sampler) with ``seed``. Takes effect at the next ``iter()``."""
        if isinstance(self.sampler, GroupedResumableSampler):
            self.sampler.start_iter = int(start_iter)
        else:
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
                logger.warning(
                    f"Skipping a bad training sample: {reason} ({self.num_skipped} skipped so far)"
                )
        seen, bad = self.num_seen, self.num_skipped
        too_many = seen >= self.min_samples and bad > self.max_skipped_fraction * seen
        if self.fatal_error is None and too_many:
            self.fatal_error = (
                f"{bad} of the {seen} training samples loaded so far were unusable "
                f"({100.0 * bad / seen:.1f}% > DATALOADER.MAX_SKIPPED_FRACTION "
                f"{self.max_skipped_fraction}); e.g. {next(iter(self.skipped_files))}. "
                "Fix or remove the files (or raise DATALOADER.MAX_SKIPPED_FRACTION)."
            )
        return sample

    def __iter__(self):
        for batch in self._build_loader():
            yield [self._record(s) for s in batch]


def _build_sampler(cfg, mapper, dataset: list, seed: int) -> ResumableTrainingSampler:
    """The position stream for ``DATALOADER.SAMPLER_TRAIN`` (``TrainingSampler`` re-implemented
    position-addressable; the other samplers' seeded index streams used as they are)."""
    if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
        return ResumableTrainingSampler(size=len(dataset), seed=seed)
    d2_sampler = _train_loader_from_config(cfg, mapper, dataset=dataset)["sampler"]
    if not hasattr(d2_sampler, "_infinite_indices"):
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN} has no index stream to resume"
        )
    logger.info(f"Resumable stream over the index stream of {type(d2_sampler).__name__}")
    return ResumableTrainingSampler(size=len(dataset), seed=seed,
                                    index_stream=d2_sampler._infinite_indices)


def build_resumable_train_loader(cfg, mapper, dataset: Optional[list] = None,
                                 seed: Optional[int] = None) -> ResumableTrainLoader:
    """The training loader of ``cfg`` as a :class:`ResumableTrainLoader`.

    Uses Detectron2's dataset building, sampler choice (``DATALOADER.SAMPLER_TRAIN``) and
    ``build_batch_data_loader``. ``DATALOADER.ASPECT_RATIO_GROUPING`` groups in the sampler
    (:class:`GroupedResumableSampler`: deterministic and resumable) when
    ``DATALOADER.DETERMINISTIC`` is on, and with Detectron2's ``AspectRatioGroupedDataset``
    (batches depend on worker timing) when it is off.
    """
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    if dataset is None:
        keypoints = cfg.MODEL.KEYPOINT_ON
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if keypoints else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    sampler = _build_sampler(cfg, mapper, dataset, seed)
    grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING
    group_ids = orientation_groups(dataset) if grouping else None
    if grouping and cfg.DATALOADER.DETERMINISTIC:
        batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        sampler = GroupedResumableSampler(base=sampler, group_ids=group_ids, batch_size=batch_size)
    mapped = ResumableMapDataset(dataset=DatasetFromList(dataset, copy=False), mapper=mapper,
                                 seed=seed, group_ids=group_ids)

    def build():
        # Grouped sampler: whole batches in order, which build_batch_data_loader keeps together
        # (each worker takes chunks of one batch). A private generator: creating the loader's
        # iterator must not consume the global torch RNG.
        return build_batch_data_loader(
            mapped, sampler, cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=grouping and not cfg.DATALOADER.DETERMINISTIC,
            num_workers=cfg.DATALOADER.NUM_WORKERS, seed=mix_seed(sampler.seed, 1),
        )

    return ResumableTrainLoader(
        build_loader=build, sampler=sampler, dataset=mapped,
        batch_size_total=cfg.SOLVER.IMS_PER_BATCH,
        max_skipped_fraction=cfg.DATALOADER.MAX_SKIPPED_FRACTION,
        min_samples=cfg.DATALOADER.SKIP_CHECK_MIN_SAMPLES,
    )
