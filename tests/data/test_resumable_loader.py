"""The resumable training loader: bad samples skipped with one warning each, the skipped-fraction
limit, a sample stream that is a pure function of (seed, position) across workers and resumes,
and a mapper bug that stops training with its traceback instead of being skipped."""

import logging
import re
import traceback

import numpy as np
import pytest
import torch
from sample_files import toy_cfg, train_mapper, write_dataset

from nrd_rsp.data.resumable_loader import build_resumable_train_loader


def test_training_loader_skips_bad_samples_with_one_warning_each(tmp_path, caplog):
    dicts, bad_files = write_dataset(tmp_path)
    cfg = toy_cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "INPUT.SIZE_DIVISIBILITY": "16",
            "DATALOADER.MAX_SKIPPED_FRACTION": "0.5",
            "DATALOADER.SKIP_CHECK_MIN_SAMPLES": "4",
        }
    )
    loader = build_resumable_train_loader(cfg, train_mapper(cfg), dataset=dicts)
    good = {d["file_name"] for i, d in enumerate(dicts) if i not in (3, 7)}
    with caplog.at_level(logging.WARNING):
        it = iter(loader)
        batches = [next(it) for _ in range(15)]  # 30 samples = 3 epochs
    assert all(len(b) == 2 for b in batches)
    assert all(
        s["file_name"] in good and s["image"].shape == (3, 16, 16) for b in batches for s in b
    )
    for f in bad_files:  # one warning per file, although each is drawn 3 times
        assert sum(f in r.getMessage() for r in caplog.records) == 1
    assert loader.num_skipped >= 6 and loader.num_seen == 30 + loader.num_skipped
    assert loader.fatal_error is None


def test_too_many_skipped_samples_is_an_error_naming_the_count_and_key(tmp_path):
    dicts, _ = write_dataset(tmp_path, n=6, bad=(0, 1, 2))
    cfg = toy_cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "DATALOADER.MAX_SKIPPED_FRACTION": "0.1",
            "DATALOADER.SKIP_CHECK_MIN_SAMPLES": "8",
        }
    )
    loader = build_resumable_train_loader(cfg, train_mapper(cfg), dataset=dicts)
    it = iter(loader)
    while loader.fatal_error is None:
        assert loader.num_seen < 8 + 2 * 16  # set at the first batch past SKIP_CHECK_MIN_SAMPLES
        next(it)
        if loader.num_seen < 8:
            assert loader.fatal_error is None  # not before SKIP_CHECK_MIN_SAMPLES
    msg = loader.fatal_error
    m = re.search(r"(\d+) of the (\d+) training samples loaded so far were unusable", msg)
    bad, seen = int(m.group(1)), int(m.group(2))
    assert seen >= 8 and bad / seen > 0.1 and bad <= loader.num_skipped
    assert "DATALOADER.MAX_SKIPPED_FRACTION 0.1" in msg and "s0.png" in msg


def _stream(loader, n):
    it = iter(loader)
    return [[(s["file_name"], s["image"], s["sem_seg"]) for s in next(it)] for _ in range(n)]


@pytest.mark.parametrize("grouping", ["True", "False"])  # grouped sampler, or positions
def test_sample_stream_is_a_pure_function_of_position(tmp_path, grouping):
    dicts, _ = write_dataset(tmp_path, n=7, bad=(2,))
    cfg = toy_cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "INPUT.SIZE_DIVISIBILITY": "16",
            "DATALOADER.ASPECT_RATIO_GROUPING": grouping,
        }
    )
    full = _stream(build_resumable_train_loader(cfg, train_mapper(cfg), dataset=dicts), 9)
    # Other RNG consumers in between do not matter; two workers give the same batches.
    np.random.rand(5), torch.rand(3)
    cfg.DATALOADER.NUM_WORKERS = 2
    workers = _stream(build_resumable_train_loader(cfg, train_mapper(cfg), dataset=dicts), 9)
    # Resuming at iteration 5 continues the same stream.
    cfg.DATALOADER.NUM_WORKERS = 0
    resumed_loader = build_resumable_train_loader(
        cfg, train_mapper(cfg), dataset=dicts, seed=3, start_iter=5
    )
    resumed = _stream(resumed_loader, 4)
    for a, b in zip(full, workers):
        for (fa, ia, sa), (fb, ib, sb) in zip(a, b):
            assert fa == fb and torch.equal(ia, ib) and torch.equal(sa, sb)
    for a, b in zip(full[5:], resumed):
        for (fa, ia, sa), (fb, ib, sb) in zip(a, b):
            assert fa == fb and torch.equal(ia, ib) and torch.equal(sa, sb)
    # Each epoch visits every good sample; different seeds give different orders.
    first_epoch = [f for b in full[:3] for f, _, _ in b][:6]
    other = build_resumable_train_loader(cfg, train_mapper(cfg), dataset=dicts, seed=4)
    assert [f for b in _stream(other, 3) for f, _, _ in b][:6] != first_epoch


class _BuggyMapper:
    """The semantic mapper with a bug that hits one sample in ten ('s3'): a KeyError."""

    def __init__(self, cfg):
        self.mapper = train_mapper(cfg)

    def __call__(self, d):
        if d["image_id"] == "s3":
            return d["sem_seg_label_file"]  # a typo'd key: KeyError
        return self.mapper(d)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_mapper_bug_stops_training_with_its_traceback(tmp_path, workers):
    dicts, _ = write_dataset(tmp_path, bad=())
    cfg = toy_cfg(
        **{
            "INPUT.RESIZE_BASE_SIZE": "(24, 30)",
            "INPUT.CROP.SIZE": "(16, 16)",
            "DATALOADER.NUM_WORKERS": str(workers),
        }
    )
    loader = build_resumable_train_loader(cfg, _BuggyMapper(cfg), dataset=dicts)
    it = iter(loader)
    with pytest.raises(KeyError) as e:
        for _ in range(5):  # one epoch: 's3' is drawn
            next(it)
    if workers:  # re-raised by the DataLoader, with the worker's traceback in the message
        assert "Traceback" in str(e.value) and "sem_seg_label_file" in str(e.value)
        assert "in __call__" in str(e.value)
    else:
        assert e.value.args == ("sem_seg_label_file",)
        assert "__call__" in [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert loader.num_skipped == 0 and loader.skipped_files == {}
