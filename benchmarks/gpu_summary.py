#!/usr/bin/env python
"""Summary of ``benchmarks/gpu_check.sh``: reads what the check wrote to ``--output-dir``
(``steps.tsv``, ``preflight.json``, ``parity.json``, ``amp_diffs.json``, ``step_*.json`` of
``benchmarks/gpu_steps.py``, ``decoders_{fp32,bf16}/decoders.json``) and writes ``summary.md``
there: device, versions, the steps with their status and duration, CPU-vs-CUDA parity, AMP-vs-
float32 differences, one row per config (float32 / bf16 / fp16 training step time and peak
memory) and the decoders table. Whatever a step did not write is left out or shown as n/a."""

import argparse
import glob
import json
import os
import sys


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fmt(value, fmt="{:.1f}"):
    return "n/a" if value is None else fmt.format(value)


def _ratio(r, prefix, suffix=""):
    median = r.get(f"{prefix}median{suffix}")
    if median is None:
        return "n/a"
    return f"{median:.2f} ({r[f'{prefix}q25{suffix}']:.2f}-{r[f'{prefix}q75{suffix}']:.2f})"


def _steps(out_dir):
    steps = []
    try:
        with open(os.path.join(out_dir, "steps.tsv")) as f:
            for line in f:
                name, rc, seconds, command = line.rstrip("\n").split("\t", 3)
                steps.append((name, rc, int(seconds), command))
    except OSError:
        pass
    return steps


def _results(out_dir):
    """The decoders' raw results by AMP (None where missing) and the training results."""
    dec = {
        amp: _load(os.path.join(out_dir, f"decoders_{amp}", "decoders.json"))
        for amp in ("fp32", "bf16")
    }
    trains = []
    for path in sorted(glob.glob(os.path.join(out_dir, "train_*.json"))):
        raw = _load(path)
        if raw is not None:
            trains += raw.get("results", [raw])
    return dec, trains


def _device(out_dir, dec, trains):
    """(device, torch version) from the last of decoders, training and step results found."""
    device = torch_version = "unknown"
    for raw in dec.values():
        if raw:
            device, torch_version = raw["env"]["device"], raw["env"]["torch"]
            break
    if trains:
        device, torch_version = trains[0]["device_name"], trains[0]["torch"]
    for path in sorted(glob.glob(os.path.join(out_dir, "step_*.json"))):
        raw = _load(path)
        if raw:
            device, torch_version = raw["device"], raw["torch"]
            break
    return device, torch_version


def _commands(dec, trains):
    """What the decoders and training steps ran, as bullets."""
    lines = []
    if dec["fp32"]:
        argv = " ".join(dec["fp32"]["argv"])
        lines.append(
            f"* Decoders: `benchmarks/decoders.py {argv}` (fp32) and the same with "
            "`--amp bf16 --skip-flops`; semantic path, 19 classes, batch 1, interleaved "
            "rounds"
            + (
                " in one process (peak memory includes the other rows' models)."
                if "--in-process" in dec["fp32"]["argv"]
                else ", one worker process per row (peak memory: the row's own)."
            )
        )
    if trains:
        t = trains[0]
        lines.append(
            f"* Training: `tools/benchmark.py --task train --amp {t['amp']}` per dataset, its "
            "configs interleaved (ratios against the dataset's first config), "
            f"{t['warmup']} warm-up + {t['iters']} timed rounds, batch {t['batch_size']}, "
            "the config's crop size, `MODEL.WEIGHTS \"\"`; peak memory: the config's own "
            "(weights, buffers, optimizer state + the largest rise during a timed step) and "
            "the process's peak."
        )
    return lines


def _decoders_section(dec):
    lines = ["", "## Decoders (inference, semantic path)", ""]
    by_amp = {amp: {r["key"]: r for r in raw["results"]} if raw else {} for amp, raw in dec.items()}
    keys = list(by_amp["fp32"]) + [k for k in by_amp["bf16"] if k not in by_amp["fp32"]]
    if not keys:
        return lines + ["No decoder results (see the steps above)."]
    size = None
    for raw in dec.values():
        if raw and "--time-size" in raw["argv"]:
            i = raw["argv"].index("--time-size")
            size = f"{raw['argv'][i + 1]}x{raw['argv'][i + 2]}"
    lines.append(
        f"Input {size or 'see the commands'}; latency: median (IQR) over the rounds; "
        "ratio: per-round latency / Semantic FPN of the same depth, median (q25-q75)."
    )
    lines += [
        "",
        "| Model | GFLOPs | fp32 latency (ms) | fp32 vs Sem. FPN | fp32 peak (MiB) "
        "| bf16 latency (ms) | bf16 vs Sem. FPN | bf16 peak (MiB) |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in keys:
        first = by_amp["fp32"].get(k) or by_amp["bf16"].get(k)
        cells = [first["label"], _fmt(first.get("gflops_total"))]
        for amp in ("fp32", "bf16"):
            r = by_amp[amp].get(k)
            if r is None:
                cells += ["n/a"] * 3
                continue
            cells += [
                f"{r['latency_ms_median']:.1f} ({r['latency_ms_iqr']:.1f})",
                _ratio(r, "latency_ratio_vs_semfpn_"),
                _fmt(r["peak_memory_mib"], "{:.0f}"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _training_section(trains):
    if not trains:
        return []
    lines = ["", "## One AMP training step per config (tools/benchmark.py)", ""]
    lines += [
        "| Config | Input (B x H x W) | Step (ms), median (IQR) | vs first of its dataset "
        "| Own memory (MiB) | Process peak (MiB) |",
        "|:---|:---|---:|---:|---:|---:|",
    ]
    for t in trains:
        h, w = t["input_size"]
        lines.append(
            f"| `{t['config_file']}` | {t['batch_size']} x {h} x {w} | "
            f"{t['latency_ms_median']:.1f} ({t['latency_ms_iqr']:.1f}) | "
            f"{_ratio(t, 'latency_ratio_', '_vs_baseline')} | "
            f"{t['own_memory_mib']:.0f} | {t['peak_memory_mib']:.0f} |"
        )
    return lines


def summarise(out_dir, mode):
    """Returns the markdown of the summary (and the device and torch version it found)."""
    dec, trains = _results(out_dir)
    device, torch_version = _device(out_dir, dec, trains)
    steps = _steps(out_dir)
    total = sum(s[2] for s in steps)
    lines = [
        "# GPU check (`benchmarks/gpu_check.sh`)",
        "",
        f"* Mode: {mode}.",
        f"* Device: {device}; torch {torch_version}.",
        f"* Total time of the steps: {total} s.",
    ]
    lines += _commands(dec, trains)
    lines += [
        "",
        "## Steps",
        "",
        "| Step | Exit status | Seconds | Command |",
        "|:---|---:|---:|:---|",
    ]
    lines += [f"| {n} | {rc} | {s} | `{c}` |" for n, rc, s, c in steps]
    lines += _check_sections(out_dir)
    lines += _decoders_section(dec) + _training_section(trains)
    lines.append("")
    return "\n".join(lines), device, torch_version


def _check_sections(out_dir):
    """Preflight, parity, AMP differences and per-config training steps (gpu_steps.py)."""
    lines = []
    pre = _load(os.path.join(out_dir, "preflight.json"))
    if pre:
        lines += ["", "## Preflight", ""]
        lines += [f"* {k}: {v}" for k, v in pre.items()]
    par = _load(os.path.join(out_dir, "parity.json"))
    if par:
        lines += ["", f"## CPU vs {par['device']} float32 (TF32 off): relative difference", ""]
        lines += [f"* {k}: {v:.2e}" for k, v in par.items() if isinstance(v, float)]
    amp = _load(os.path.join(out_dir, "amp_diffs.json"))
    if amp:
        lines += ["", "## AMP vs float32, one training step: relative difference", ""]
        lines += ["| Config | AMP | Loss terms | Gradient |", "|:---|:---|:---|---:|"]
        for config, rows in amp["configs"].items():
            for name, r in rows.items():
                terms = ", ".join(f"{k} {v:.1e}" for k, v in r["losses"].items())
                lines.append(f"| `{config}` | {name} | {terms} | {r['grad']:.2e} |")
    rows = [_load(p) for p in sorted(glob.glob(os.path.join(out_dir, "step_*.json")))]
    rows = [r for r in rows if r]
    if rows:
        lines += ["", "## Training step per config (batch 2, one process each)", ""]
        head = "| Config | Input | " + " | ".join(
            f"{a} step (ms) | {a} peak (MiB)" for a in ("off", "bf16", "fp16")
        )
        lines += [head + " |", "|:---|:---|" + "---:|" * 6]
        for r in rows:
            cells = [f"`{r['config_file']}`", "x".join(map(str, r["input_size"]))]
            for a in ("off", "bf16", "fp16"):
                m = r["rows"].get(a)
                cells += [_fmt(m and m["step_ms"]), _fmt(m and m["peak_mib"], "{:.0f}")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--mode", default="GPU")
    args = p.parse_args(argv)
    md, _, _ = summarise(args.output_dir, args.mode)
    with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
