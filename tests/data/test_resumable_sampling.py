"""Aspect-ratio grouping that resumes: grouped batches are a pure function of seed and iteration
(with workers, after a resume, and equal to Detectron2's grouping without workers), and the
grouped sampler shards positions by rank without losing any."""

import itertools

import numpy as np
import torch
from sample_files import toy_cfg

from nrd_rsp.data.resumable_loader import build_resumable_train_loader
from nrd_rsp.data.resumable_sampling import GroupedResumableSampler, ResumableTrainingSampler
from nrd_rsp.errors import BadSampleError


# Mixed orientations: every third image is portrait. The fake mapper reads no file but draws
# from the global RNGs, which ResumableMapDataset seeds from (seed, position).
def _oriented_dicts(n=13):
    return [
        {
            "file_name": f"o{i}.png",
            "image_id": i,
            "height": 40 if i % 3 else 60,
            "width": 60 if i % 3 else 40,
        }
        for i in range(n)
    ]


def _oriented_mapper(d):
    if d["file_name"] == "o4.png":
        raise BadSampleError("cannot read image 'o4.png'", "o4.png")
    return {
        "file_name": d["file_name"],
        "width": d["width"],
        "height": d["height"],
        "draw": (float(torch.rand(1)), float(np.random.rand())),
    }


def _oriented_stream(cfg, n, start_iter=0, seed=3):
    loader = build_resumable_train_loader(
        cfg, _oriented_mapper, dataset=_oriented_dicts(), seed=seed, start_iter=start_iter
    )
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    return [[(s["file_name"], s["width"] > s["height"], s["draw"]) for s in b] for b in batches]


def test_grouped_batches_are_a_pure_function_of_seed_and_iteration():
    cfg = toy_cfg(**{"SOLVER.IMS_PER_BATCH": "3", "DATALOADER.ASPECT_RATIO_GROUPING": "True"})
    full = _oriented_stream(cfg, 12)
    assert all(len({landscape for _, landscape, _ in b}) == 1 for b in full)  # one orientation each
    assert {b[0][1] for b in full} == {True, False}
    assert "o4.png" not in {f for b in full for f, _, _ in b}  # substituted, same orientation
    # The same with two workers, and resumed at iterations 1, 4 and 7 (some samples of the
    # batches after them were drawn before them).
    cfg.DATALOADER.NUM_WORKERS = 2
    assert _oriented_stream(cfg, 12) == full
    cfg.DATALOADER.NUM_WORKERS = 0
    for start in (1, 4, 7):
        assert _oriented_stream(cfg, 4, start_iter=start) == full[start : start + 4], start
    assert _oriented_stream(cfg, 3, seed=4) != full[:3]
    # They are the batches of Detectron2's AspectRatioGroupedDataset (DETERMINISTIC off) when
    # the samples arrive in stream order (no workers) ...
    cfg.DATALOADER.DETERMINISTIC = False
    assert _oriented_stream(cfg, 12) == full
    # ... and without grouping the batches would mix orientations.
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    assert any(len({landscape for _, landscape, _ in b}) == 2 for b in _oriented_stream(cfg, 12))


def test_grouped_sampler_shards_positions_by_rank():
    groups = [i % 3 == 0 for i in range(13)]
    base = ResumableTrainingSampler(size=13, seed=3)
    base.rank, base.world_size = 1, 2
    sampler = GroupedResumableSampler(base=base, group_ids=groups, batch_size=2)
    batches = list(itertools.islice(sampler.batches(), 20))
    assert all(p % 2 == 1 for b in batches for p, _ in b)
    assert all(len({groups[i] for _, i in b}) == 1 for b in batches)
    positions = sorted(p for b in batches for p, _ in b)
    assert positions[:10] == list(range(1, 21, 2))  # a bucket waits; no position is lost
    sampler.start_iter = 7
    assert list(itertools.islice(sampler, 6)) == [x for b in batches[7:10] for x in b]
