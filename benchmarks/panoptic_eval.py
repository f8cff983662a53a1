#!/usr/bin/env python
"""Panoptic evaluation (PQ) time and peak memory at COCO val scale, by backend and worker count.

    python benchmarks/panoptic_eval.py                   # 5,000 images of 256x320, 3 rounds
    python benchmarks/panoptic_eval.py --images 200 --rounds 1 --output-dir /tmp/b

Writes a synthetic COCO-style panoptic dataset: ``--images`` ground-truth images of ``--size``
with COCO's 133 categories (Detectron2's ``COCO_CATEGORIES``): wavy stuff bands with void
borders and a void patch, overlapping thing ellipses, a crowd region in about one image in five.
Then one imperfect prediction per image (:func:`perturb`: segments dropped, relabelled, shifted,
crowds predicted as instances, spurious segments added). Both as panoptic PNG + JSON.

Each row (``ROWS``: panopticapi with 1, 2 and all cores, hotcoco with all cores and with one
thread) times ``nrd_rsp.panoptic_evaluation.pq_compute`` on those files in a fresh process;
the peak memory of that process and its children is sampled from ``/proc``. Rounds interleave
the rows (each round runs every row once, in an order rotated per round); the tables give the
per-row medians and the ratios to panopticapi with all cores. Writes ``panoptic_eval.md`` and
``panoptic_eval.json`` to ``--output-dir`` (default ``benchmarks/results``).

The summary and the report are in ``panoptic_eval_report.py``. ``tests/test_panoptic_eval.py``
uses :func:`write_ground_truth` and :func:`write_predictions` for its toy predictions.
"""

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple

import numpy as np
from panoptic_eval_report import summarize, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = [(split, k) for split in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq")]

Row = namedtuple("Row", "key label backend workers env")
ROWS = [
    Row("panopticapi_w1", "panopticapi, WORKERS 1", "panopticapi", 1, {}),
    Row("panopticapi_w2", "panopticapi, WORKERS 2", "panopticapi", 2, {}),
    Row("panopticapi_all", "panopticapi, WORKERS 0 (all cores)", "panopticapi", 0, {}),
    Row("hotcoco", "hotcoco (all cores)", "hotcoco", 0, {}),
    Row("hotcoco_t1", "hotcoco, RAYON_NUM_THREADS=1", "hotcoco", 0, {"RAYON_NUM_THREADS": "1"}),
]
SAMPLE_INTERVAL_S = 0.05  # of the peak-memory sampler


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------
def coco_categories():
    """COCO's 133 panoptic categories: id, name, isthing, color."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in COCO_CATEGORIES]


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _segments_info(ids, category_of, crowd=()):
    """COCO panoptic ``segments_info`` of the non-void segments of ``ids`` (area, bbox xywh)."""
    infos = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        ys, xs = np.nonzero(ids == seg_id)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        infos.append({"id": int(seg_id), "category_id": category_of[int(seg_id)],
                      "iscrowd": int(seg_id in crowd), "bbox": bbox,
                      "area": int(ys.size)})  # fmt: skip
    return infos


def synthetic_scene(rng, h, w, categories):
    """Ground-truth id map and ``segments_info`` of one scene (2-4 stuff bands, 0-6 things, a
    crowd region in ~1/5 of the scenes, void borders and a void patch)."""
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    n_bands = int(rng.integers(2, 5))
    edges = np.sort(rng.choice(np.arange(4, h - 4), n_bands - 1, replace=False))
    yy, xx = np.mgrid[:h, :w]
    wavy = yy + np.round(3 * np.sin(xx / rng.uniform(4, 12) + rng.uniform(0, 6))).astype(int)
    ids = np.searchsorted(edges, wavy, side="right") + 1
    category_of = {i + 1: int(c) for i, c in enumerate(rng.choice(stuff, n_bands, replace=False))}
    ids[np.isin(wavy, edges)] = 0  # void band borders
    vy, vx = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 8))
    ids[vy : vy + 5, vx : vx + 7] = 0
    n_things, crowd = int(rng.integers(0, 7)), ()
    for k in range(n_things + (rng.random() < 0.2)):
        seg_id = n_bands + 1 + k
        cy, cx = rng.uniform(0.2, 0.9) * h, rng.uniform(0, 1) * w
        ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.2) * w
        ids[_ellipse(h, w, cy, cx, ry, rx)] = seg_id
        category_of[seg_id] = int(rng.choice(things))
        crowd = (seg_id,) if k == n_things else crowd  # the extra one is a crowd region
    return ids, _segments_info(ids, category_of, crowd)


def perturb(ids, segments, rng, categories):
    """An imperfect prediction of the ground truth (``ids``, ``segments``): each segment is
    dropped (void), relabelled, or (things) shifted with some probability; crowd regions become
    two instances; 0-2 spurious segments are added. Returns (id map, ``segments_info``)."""
    by_kind = {k: [c["id"] for c in categories if c["isthing"] == k] for k in (0, 1)}
    isthing = {c["id"]: c["isthing"] for c in categories}
    h, w = ids.shape
    pred, category_of, next_id = ids.copy(), {}, int(ids.max()) + 1
    for s in segments:
        mask, cat, u = ids == s["id"], s["category_id"], rng.random()
        category_of[s["id"]] = cat
        if u < 0.1:
            pred[mask] = 0
        elif u < 0.25:
            category_of[s["id"]] = int(rng.choice(by_kind[isthing[cat]]))
        elif isthing[cat] and u < 0.6:
            pred[mask & (pred == s["id"])] = 0
            dy, dx = (int(v) for v in rng.integers(-h // 6, h // 6 + 1, size=2))
            pred[np.roll(mask, (dy, dx), axis=(0, 1))] = s["id"]
        if s["iscrowd"]:  # the right half becomes a second instance
            pred[mask & (np.arange(w) >= w // 2)] = next_id
            category_of[next_id], next_id = cat, next_id + 1
    for _ in range(int(rng.integers(0, 3))):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        dy, dx = int(rng.integers(3, h // 3)), int(rng.integers(3, w // 3))
        pred[y0 : y0 + dy, x0 : x0 + dx] = next_id
        category_of[next_id], next_id = int(rng.choice(list(isthing))), next_id + 1
    return pred, [
        {k: s[k] for k in ("id", "category_id", "area")} for s in _segments_info(pred, category_of)
    ]


def _write_png(path, ids):
    from panopticapi.utils import id2rgb
    from PIL import Image

    Image.fromarray(id2rgb(ids)).save(path)


def _read_png(path):
    from panopticapi.utils import rgb2id
    from PIL import Image

    return rgb2id(np.asarray(Image.open(path), dtype=np.uint32))


def write_ground_truth(out_dir, num_images, size, seed=0, progress=False):
    """``out_dir/gt/*.png`` and ``out_dir/gt.json``: ``num_images`` synthetic scenes of ``size``
    (H, W) with COCO's categories. Returns (json path, PNG folder)."""
    from tqdm import tqdm

    categories, rng = coco_categories(), np.random.default_rng(seed)
    gt_dir = os.path.join(out_dir, "gt")
    os.makedirs(gt_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in tqdm(range(1, num_images + 1), desc="ground truth", disable=not progress):
        ids, segments = synthetic_scene(rng, size[0], size[1], categories)
        stem = f"{image_id:012d}"
        _write_png(os.path.join(gt_dir, stem + ".png"), ids)
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": size[0],
                       "width": size[1]})  # fmt: skip
        annotations.append({"image_id": image_id, "file_name": stem + ".png",
                            "segments_info": segments})  # fmt: skip
    gt_json = os.path.join(out_dir, "gt.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return gt_json, gt_dir


def write_predictions(gt_json, gt_dir, out_dir, seed=0, progress=False):
    """``out_dir/pred/*.png`` and ``out_dir/pred.json`` (the ground-truth JSON with the
    annotations replaced, as Detectron2's evaluator writes it): :func:`perturb` of every
    ground-truth image. Returns (json path, PNG folder)."""
    from tqdm import tqdm

    with open(gt_json) as f:
        data = json.load(f)
    rng, pred_dir = np.random.default_rng(seed), os.path.join(out_dir, "pred")
    os.makedirs(pred_dir, exist_ok=True)
    annotations = []
    for ann in tqdm(data["annotations"], desc="predictions", disable=not progress):
        ids = _read_png(os.path.join(gt_dir, ann["file_name"]))
        pred, segments = perturb(ids, ann["segments_info"], rng, data["categories"])
        _write_png(os.path.join(pred_dir, ann["file_name"]), pred)
        annotations.append(dict(ann, segments_info=segments))
    pred_json = os.path.join(out_dir, "pred.json")
    with open(pred_json, "w") as f:
        json.dump(dict(data, annotations=annotations), f)
    return pred_json, pred_dir


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def _proc_tree(pid):
    """``pid`` and its descendants (from /proc/*/stat)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(frontier)
    return tree


def _tree_memory(pid):
    """(RSS, anonymous PSS) in bytes summed over the process tree of ``pid``."""
    totals = {"Rss": 0, "Pss_Anon": 0}
    for p in _proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in totals:
                    totals[key] += int(value.split()[0]) * 1024  # kB
    return totals["Rss"], totals["Pss_Anon"]


class PeakMemory(threading.Thread):
    """Samples :func:`_tree_memory` every ``interval`` s: ``start_memory`` is the first sample,
    ``peak`` the maxima."""

    def __init__(self, pid, interval=SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.start_memory = self.peak = _tree_memory(pid)
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            rss, anon = _tree_memory(self.pid)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], anon))
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()


def run_row(row_key, data_dir):
    """Child process: import, say ``ready``, wait for ``go`` on stdin, time one ``pq_compute`` of
    the row on ``data_dir``, print the result as a JSON line."""
    from nrd_rsp.panoptic_evaluation import pq_compute

    row = next(r for r in ROWS if r.key == row_key)
    paths = [os.path.join(data_dir, p) for p in ("gt.json", "pred.json", "gt", "pred")]
    print("ready", flush=True)
    sys.stdin.readline()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        res = pq_compute(*paths, backend=row.backend, workers=row.workers)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    metrics = {f"{s}/{k}": res[s][k] for s, k in METRICS}
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "metrics": metrics}))


def _cpu_seconds():
    """User + system CPU seconds of this process, its threads and its joined children."""
    import resource

    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def measure(row, data_dir):
    """Run ``row`` in a fresh process; returns its seconds, metrics and the memory (MiB) of its
    process tree: at the start of the evaluation (after the imports) and the peak during it."""
    cmd = [sys.executable, os.path.abspath(__file__), "--run-row", row.key, "--data", data_dir]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=dict(os.environ, **row.env), text=True, stderr=err,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        ready = proc.stdout.readline()
        while ready and ready.strip() != "ready":  # anything the imports printed
            ready = proc.stdout.readline()
        sampler = PeakMemory(proc.pid)
        sampler.start()
        out, _ = proc.communicate("go\n")
        sampler.stop()
        if proc.returncode or ready.strip() != "ready":
            err.seek(0)
            raise RuntimeError(f"{row.key} failed:\n{err.read()[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    mib = [v / 2**20 for v in sampler.start_memory + sampler.peak]
    result.update(zip(("start_rss_mib", "start_anon_mib", "peak_rss_mib", "peak_anon_mib"), mib))
    result["anon_increase_mib"] = result["peak_anon_mib"] - result["start_anon_mib"]
    return result


def run_rounds(rows, data_dir, rounds):
    """Interleaved rounds: every row once per round, the order rotated by one each round.
    Returns {row key: [result of each round]}."""
    from tqdm import tqdm

    results = {r.key: [] for r in rows}
    with tqdm(total=rounds * len(rows), desc="evaluations") as bar:
        for i in range(rounds):
            for row in rows[i % len(rows) :] + rows[: i % len(rows)]:
                bar.set_postfix_str(f"round {i + 1}: {row.key}")
                results[row.key].append(measure(row, data_dir))
                bar.update()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--work-dir", default=None, help="for the data (default: a temporary folder)")
    p.add_argument("--run-row", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_row:
        return run_row(args.run_row, args.data)
    settings = {"images": args.images, "size": list(args.size), "rounds": args.rounds,
                "seed": args.seed, "interval_s": SAMPLE_INTERVAL_S,
                "rows": [r.key for r in ROWS]}  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="panoptic_eval_", dir=args.work_dir) as data_dir:
        gt_json, gt_dir = write_ground_truth(data_dir, args.images, args.size, args.seed, True)
        write_predictions(gt_json, gt_dir, data_dir, args.seed + 1, True)
        settings["generation_s"] = round(time.perf_counter() - start, 1)
        settings["load_average_start"] = round(os.getloadavg()[0], 2)
        results = run_rounds(ROWS, data_dir, args.rounds)
        settings["load_average_end"] = round(os.getloadavg()[0], 2)
    settings["total_s"] = round(time.perf_counter() - start, 1)
    os.makedirs(args.output_dir, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)]
                                   + list(sys.argv[1:] if argv is None else argv))  # fmt: skip
    md = write_report(args.output_dir, settings, summarize(ROWS, results), command)
    with open(md) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
