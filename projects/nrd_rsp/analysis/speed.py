"""Timing and memory: synchronised step timing, interleaved rounds and per-round ratios,
latency statistics, autocast, peak memory (CUDA allocator or the process's peak RSS) and a
description of the device.

On a shared machine the load changes over minutes, so latencies measured one model after the
other are not comparable. :func:`interleaved_rounds` runs every model once per round (round
robin, the starting model rotating from round to round); :func:`ratio_stats` then compares two
models round by round, so that a slow round slows both sides of each ratio."""

import contextlib
import os
import platform
import resource
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "MeasuredStep",
    "autocast",
    "current_rss_mib",
    "device_description",
    "interleaved_rounds",
    "latency_stats",
    "peak_memory",
    "quartiles",
    "ratio_stats",
    "reset_peak_memory",
    "round_ratios",
    "synchronize",
    "time_steps",
    "timed",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` in {"off", "fp16", "bf16"}. fp16 needs CUDA (CPU autocast
    supports bf16): ConfigError otherwise."""
    if amp == "off":
        return contextlib.nullcontext()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if amp not in dtypes:
        raise ConfigError(f"--amp must be off, fp16 or bf16, got '{amp}'.")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "--amp fp16 needs CUDA (autocast on CPU supports bf16 only); "
            "use --amp bf16 or --device cuda."
        )
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


def time_steps(
    step: Callable[[], None], iters: int, warmup: int, device: torch.device
) -> List[float]:
    """Run ``step`` ``warmup`` times, then ``iters`` times synchronising the device before and
    after each; returns the ``iters`` latencies in seconds."""
    if iters < 1 or warmup < 0:
        raise ConfigError(f"Need --iters >= 1 and --warmup >= 0, got {iters} and {warmup}.")
    for _ in range(warmup):
        step()
    run = timed(step, device)
    return [run() for _ in range(iters)]


def timed(step: Callable[[], None], device: torch.device) -> Callable[[], float]:
    """``step`` as a timed step: synchronises the device before and after it, returns seconds."""

    def run() -> float:
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start

    return run


class MeasuredStep:
    """A step timed with its peak memory, for :func:`interleaved_rounds`: each call resets the
    peak just before the step (:func:`reset_peak_memory`), times it (:func:`timed`) and returns
    its seconds. ``peaks`` and ``rises`` hold, per call, the peak memory (MiB) and its rise over
    the memory in use before the step; ``peak_kind`` says what the peak measures."""

    def __init__(self, step: Callable[[], None], device: torch.device):
        self.device = device
        self._timed = timed(step, device)
        self.peaks: List[float] = []
        self.rises: List[float] = []
        self.peak_kind = ""

    def __call__(self) -> float:
        baseline = reset_peak_memory(self.device)
        seconds = self._timed()
        peak, self.peak_kind = peak_memory(self.device)
        self.peaks.append(peak)
        self.rises.append(peak - baseline)
        return seconds

    @property
    def peak(self) -> float:
        """The largest peak over the calls (0 before the first)."""
        return max(self.peaks, default=0.0)

    @property
    def increase(self) -> float:
        """The largest rise over the calls (0 before the first)."""
        return max(self.rises, default=0.0)


def interleaved_rounds(
    timed_steps: Mapping[str, Callable[[], float]],
    rounds: int,
    warmup: int = 0,
    rotate: bool = True,
    on_round: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> Dict[str, List[float]]:
    """Time several steps in interleaved rounds; returns ``{key: [seconds of round 0, ...]}``.

    ``timed_steps`` maps a key to a callable that runs one step and returns its latency in
    seconds (:func:`timed`, or a step timed elsewhere, e.g. in a worker process). ``warmup``
    untimed rounds come first. Each round runs every step once, in the mapping's order rotated
    by the round's index when ``rotate`` (round r starts at key r mod n), so that no step always
    follows the same one. ``on_round(r, {key: seconds})`` is called after each timed round.
    """
    if rounds < 1 or warmup < 0:
        raise ConfigError(
            f"Need >= 1 timed rounds and >= 0 warm-up rounds, got {rounds}, {warmup}."
        )
    keys = list(timed_steps)
    times: Dict[str, List[float]] = {k: [] for k in keys}
    for r in range(-warmup, rounds):
        shift = r % len(keys) if rotate and keys else 0
        this_round = {}
        for key in keys[shift:] + keys[:shift]:
            this_round[key] = float(timed_steps[key]())
        if r >= 0:
            for key, t in this_round.items():
                times[key].append(t)
            if on_round is not None:
                on_round(r, this_round)
    return times


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), numpy's linear interpolation."""
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def round_ratios(times: Sequence[float], baseline_times: Sequence[float]) -> List[float]:
    """Per-round ratios ``times[r] / baseline_times[r]`` of two interleaved measurements."""
    if len(times) != len(baseline_times):
        raise ValueError(f"Rounds differ: {len(times)} against {len(baseline_times)}.")
    return [t / b for t, b in zip(times, baseline_times)]


def ratio_stats(times: Sequence[float], baseline_times: Sequence[float]) -> Dict[str, float]:
    """Median and interquartile range of the per-round ratios (:func:`round_ratios`):
    ``ratio_median``, ``ratio_q25``, ``ratio_q75``, ``ratio_iqr`` (q75 - q25), ``rounds``."""
    q25, median, q75 = quartiles(round_ratios(times, baseline_times))
    return {
        "ratio_median": median,
        "ratio_q25": q25,
        "ratio_q75": q75,
        "ratio_iqr": q75 - q25,
        "rounds": len(times),
    }


def latency_stats(times: Sequence[float], batch_size: int) -> Dict[str, float]:
    """Median / p90 latency (ms), the quartiles and interquartile range (ms), iterations/s and
    images/s from the median latency."""
    q25, median, q75 = quartiles(times)
    return {
        "latency_ms_median": median * 1e3,
        "latency_ms_p90": float(np.percentile(times, 90)) * 1e3,
        "latency_ms_q25": q25 * 1e3,
        "latency_ms_q75": q75 * 1e3,
        "latency_ms_iqr": (q75 - q25) * 1e3,
        "iters_per_s": 1.0 / median,
        "images_per_s": batch_size / median,
    }


_cpu_peak_reset = False  # whether the last reset_peak_memory(cpu) could reset the peak RSS


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_memory(device: torch.device) -> float:
    """Start a peak-memory measurement; returns the memory in use now (MiB), to subtract.

    CUDA: resets ``max_memory_allocated`` (baseline: ``memory_allocated``). CPU (Linux): writes
    ``5`` to ``/proc/self/clear_refs``, which resets the peak RSS that ``resource`` reports
    (baseline: the current RSS); elsewhere the peak stays that of the whole process.
    """
    global _cpu_peak_reset
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _cpu_peak_reset = True
    except OSError:
        _cpu_peak_reset = False
    return current_rss_mib()


def peak_memory(device: torch.device) -> Tuple[float, str]:
    """(peak memory in MiB since :func:`reset_peak_memory`, what it measures).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors, weights included). CPU: peak resident
    set size of the whole process (``resource`` ``ru_maxrss``: Python, libraries, weights and
    activations), since the reset when ``/proc/self/clear_refs`` allowed it, else since the
    process started.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    since = "since the measurement started" if _cpu_peak_reset else "since the process started"
    return rss_bytes / 2**20, f"CPU peak RSS of the process (resource.ru_maxrss, {since})"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name} ({torch.get_num_threads()} threads, {os.cpu_count()} cores visible)"
