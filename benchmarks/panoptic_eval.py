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

``tests/test_panoptic_eval.py`` uses :func:`write_ground_truth` and :func:`write_predictions`
for its toy predictions.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple

import numpy as np

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
BASELINE = "panopticapi_all"
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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summarize(rows, results):
    """Per row: the runs' seconds, median, min and max, median memory, the speed-up over
    ``BASELINE`` (of the medians, and in each round), the memory increase ratio to it and the
    largest metric difference to it."""
    med = {k: {m: statistics.median(r[m] for r in runs) for m in runs[0] if m != "metrics"}
           for k, runs in results.items()}  # fmt: skip
    base, first = med[BASELINE], results[BASELINE][0]["metrics"]
    summary = {}
    for row in rows:
        runs = results[row.key]
        seconds = [r["seconds"] for r in runs]
        summary[row.key] = dict(
            med[row.key], label=row.label, backend=row.backend, workers=row.workers, env=row.env,
            seconds=seconds, median_s=med[row.key]["seconds"], min_s=min(seconds),
            max_s=max(seconds), speedup=base["seconds"] / med[row.key]["seconds"],
            round_speedups=[b["seconds"] / r["seconds"] for b, r in zip(results[BASELINE], runs)],
            cpu_ratio=med[row.key]["cpu_seconds"] / base["cpu_seconds"],
            anon_increase_ratio=med[row.key]["anon_increase_mib"] / base["anon_increase_mib"],
            max_metric_diff=max(abs(r["metrics"][m] - first[m]) for r in runs for m in first),
        )  # fmt: skip
    return summary


def noise_band(summary, cores):
    """The largest per-round deviation from 1x of the speed-ups of the rows that run the
    baseline's configuration (WORKERS 2 on 2 cores), or None without such a row."""
    base = summary[BASELINE]
    same = [
        s for k, s in summary.items()
        if k != BASELINE and (s["backend"], s["env"]) == (base["backend"], base["env"])
        and (s["workers"] or cores) == (base["workers"] or cores)
    ]  # fmt: skip
    return max((abs(1 - r) for s in same for r in s["round_speedups"]), default=None)


def within_noise(summary, band):
    """Rows whose median speed-up is within ``band`` of 1x; without a band, the rows that were
    faster than the baseline in one round and slower in another."""
    return [
        k for k, s in summary.items()
        if k != BASELINE and (abs(1 - s["speedup"]) <= band if band is not None
                              else min(s["round_speedups"]) <= 1 <= max(s["round_speedups"]))
    ]  # fmt: skip


def machine():
    """CPU model, cores, memory, Python and the backends' versions."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), cpu)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {p: version(p) for p in ("panopticapi-lite", "hotcoco", "numpy")}
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions}  # fmt: skip


def _table(summary):
    lines = [
        "| Row | Seconds, median (min-max) | Speed-up (per round) | CPU s (ratio) "
        "| Peak memory MiB | Memory increase MiB (ratio) | Peak RSS sum MiB | Max metric diff |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['label']} | {s['median_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) "
            f"| {s['speedup']:.2f}x ({min(s['round_speedups']):.2f}-"
            f"{max(s['round_speedups']):.2f}) | {s['cpu_seconds']:.2f} ({s['cpu_ratio']:.2f}) "
            f"| {s['peak_anon_mib']:.0f} | {s['anon_increase_mib']:.0f} "
            f"({s['anon_increase_ratio']:.2f}) | {s['peak_rss_mib']:.0f} "
            f"| {s['max_metric_diff']:.1e} |"
        )
    return lines


def _noise_lines(summary, cores):
    band = noise_band(summary, cores)
    noise = within_noise(summary, band)
    labels = "; ".join(summary[k]["label"] for k in noise) or "none"
    if band is None:
        return noise, [f"Within noise (faster in one round, slower in another): {labels}."]
    return noise, [
        f"Noise: with {cores} cores, {summary[BASELINE]['label']} and WORKERS {cores} run the "
        f"same configuration, and their times differed by up to {100 * band:.0f}% in a round. "
        f"Speed-ups within that of 1x are noise: {labels}. The others are beyond it; the CPU "
        "seconds, less sensitive to the other jobs, are the steadier comparison."
    ]


def _notes(settings, summary):
    return [
        f"Speed-up: the median time of the baseline ({summary[BASELINE]['label']}) over the "
        "row's; in brackets, the range of that ratio over the rounds. CPU s: user + system "
        "seconds of the process, its threads and its workers (median; ratio to the baseline). "
        f"Memory, of the run's process and its children, from /proc every "
        f"{settings['interval_s']} s during the evaluation: *peak memory* is their anonymous "
        "memory (the sum of `Pss_Anon`: heap and stacks, pages that forked workers still share "
        "with their parent counted once; libraries and page cache left out). The process has "
        "imported detectron2 and torch, as a training process has: about "
        f"{summary[BASELINE]['start_anon_mib']:.0f} MiB at the start of the evaluation. "
        "*Memory increase* is the peak minus that start (median over the runs; the ratio is to "
        "the baseline's). *Peak RSS sum* adds up the RSS of the processes, shared pages and "
        "libraries once per process, as per-process monitors do. Max metric diff: the largest "
        "|difference| of PQ, SQ, RQ (all, things, stuff; fractions) to the baseline's first run.",
    ]


def write_report(out_dir, settings, summary, command):
    """``panoptic_eval.md`` and ``panoptic_eval.json`` in ``out_dir``."""
    info = machine()
    noise, noise_lines = _noise_lines(summary, info["cores"])
    md = [
        "# Panoptic evaluation: backends and worker counts",
        "",
        f"Command: `{command}` ({settings['total_s'] / 60:.1f} minutes in all).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, shared with "
        f"other jobs (1-minute load average {settings['load_average_start']} before the runs, "
        f"{settings['load_average_end']} after); Python {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + ".",
        "",
        f"Data: {settings['images']} synthetic images of {settings['size'][0]}x"
        f"{settings['size'][1]} (all distinct, seed {settings['seed']}; COCO val images average "
        "about 480x580) with COCO's 133 categories, one imperfect prediction each, as panoptic "
        "PNG + JSON (see the script's docstring; generated in "
        f"{settings['generation_s']} s). {settings['rounds']} interleaved rounds (every row "
        "once per round, order rotated; few, to keep the whole benchmark near 10 minutes on "
        "this shared machine); each run is a fresh process timing "
        "`nrd_rsp.panoptic_evaluation.pq_compute` only (reading the JSONs and PNGs, matching, "
        "the pool's start-up; not the interpreter or imports). WORKERS 0 is one process per "
        f"core: {info['cores']} here.",
        "",
        *_table(summary),
        "",
        *_notes(settings, summary),
        "",
        *noise_lines,
        "",
    ]
    with open(os.path.join(out_dir, "panoptic_eval.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out_dir, "panoptic_eval.json"), "w") as f:
        json.dump(
            {
                "command": command,
                "machine": info,
                "settings": settings,
                "baseline": BASELINE,
                "within_noise": noise,
                "rows": summary,
            },
            f,
            indent=1,
        )
    return os.path.join(out_dir, "panoptic_eval.md")


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
