"""Resumable training samplers: the position stream and its aspect-ratio grouping, pure
functions of ``(seed, rank, position)`` (see :mod:`nrd_rsp.data.resumable_loader`, which maps the
positions they yield).

* :class:`ResumableTrainingSampler` yields ``(p, dataset_index)`` for this rank's global positions
  ``p``; the index of ``p`` comes from a permutation of epoch ``p // N`` seeded with
  ``(seed, epoch)`` (or from Detectron2's other samplers' seeded index streams).
* :class:`GroupedResumableSampler` forms batches of one orientation (``width > height`` or not)
  in stream order, as Detectron2's ``AspectRatioGroupedDataset`` does, but before mapping.
"""

import contextlib
import itertools
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.utils import comm
from PIL import Image

__all__ = [
    "orientation_groups",
    "mix_seed",
    "seeded_rng",
    "ResumableTrainingSampler",
    "GroupedResumableSampler",
]

logger = logging.getLogger(__name__)

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
    """Seed ``random``, ``numpy`` and ``torch`` (CPU, and CUDA once initialised) with ``seed``
    inside the block and restore their previous states on exit, so that the block neither
    depends on nor disturbs them."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


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

    def __init__(
        self,
        *,
        base: ResumableTrainingSampler,
        group_ids: Sequence[int],
        batch_size: int,
        start_iter: int = 0,
    ):
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
