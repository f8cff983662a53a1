"""Reporting of benchmarks/panoptic_eval.py: the per-row summary of the runs (medians, speed-ups
and ratios to the baseline), the noise band and ``panoptic_eval.{md,json}``."""

import json
import os
import statistics

from common import environment, package_versions

BASELINE = "panopticapi_all"  # the row (panoptic_eval.ROWS) the ratios divide by


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
    env = environment("cpu", "cpu_count", "memory_gib", "python", "platform")
    return {"cpu": env["cpu"], "cores": env["cpu_count"], "memory_gib": env["memory_gib"],
            "python": env["python"], "platform": env["platform"],
            "versions": package_versions("panopticapi-lite", "hotcoco", "numpy")}  # fmt: skip


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
