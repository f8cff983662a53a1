"""What the benchmark scripts share: the environment stamp of their results, markdown tables and
timed steps in interleaved rounds.

The scripts of ``benchmarks/`` import it as ``common`` (their folder is first on ``sys.path`` when
they run; a script loaded by path puts it there itself). Timing and memory themselves live in the
package (:mod:`nrd_rsp.analysis.speed`, shared with ``tools/benchmark.py``); this module adds
what only reports need. Torch, detectron2 and the package are imported only when a stamp or a
step needs them, so that rendering a report from its JSON stays light.
"""

import contextlib
import datetime
import importlib
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = [
    "ROOT",
    "STAMP_FIELDS",
    "cpu_name",
    "environment",
    "fmt",
    "markdown_table",
    "package_versions",
    "run_interleaved",
]


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo``; elsewhere the platform's processor)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), name)
    return name


def package_versions(*names, **labelled):
    """``{name: version}`` of ``names``, then ``{label: version}`` of ``labelled`` (label = name,
    e.g. ``opencv="cv2"``): the module's ``__version__`` where the name imports as a module, else
    the installed distribution's version (``panopticapi-lite``); "n/a" if neither."""
    out = {}
    for label, name in [(n, n) for n in names] + list(labelled.items()):
        try:
            out[label] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            try:
                out[label] = version(name)
            except PackageNotFoundError:
                out[label] = "n/a"
    return out


def _device(device):
    import torch

    from nrd_rsp.analysis import device_description

    return device_description(torch.device(device))


def _memory_gib():
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def _load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# name: value of the stamp, from the device the results are measured on
STAMP_FIELDS = {
    "date": lambda device: datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    "device": _device,
    "torch": lambda device: package_versions("torch")["torch"],
    "detectron2": lambda device: package_versions("detectron2")["detectron2"],
    "cuda_available": lambda device: importlib.import_module("torch").cuda.is_available(),
    "load_average": lambda device: _load_average(),
    "cpu": lambda device: cpu_name(),
    "cpu_count": lambda device: os.cpu_count(),
    "memory_gib": lambda device: _memory_gib(),
    "python": lambda device: platform.python_version(),
    "platform": lambda device: platform.platform(),
}


def environment(*fields, device="cpu"):
    """The environment stamp of a benchmark's results: ``{field: value}`` for ``fields`` (in
    that order; all of :data:`STAMP_FIELDS` without any).

    ``date`` is local time to the minute ("YYYY-MM-DD HH:MM"; ``[:10]`` is the day), ``device``
    :func:`nrd_rsp.analysis.device_description` of ``device`` (on CPU it includes torch's
    thread count, so set that first), ``load_average`` the 1-minute load (NaN where the system
    has none), ``cpu`` :func:`cpu_name`, ``memory_gib`` the physical memory.
    """
    unknown = [f for f in fields if f not in STAMP_FIELDS]
    if unknown:
        raise KeyError(f"Unknown stamp fields {unknown}; known: {', '.join(STAMP_FIELDS)}")
    return {f: STAMP_FIELDS[f](device) for f in (fields or STAMP_FIELDS)}


def fmt(value, spec="{:.2f}"):
    """``spec.format(value)``, "n/a" for None (a value that was not measured)."""
    return "n/a" if value is None else spec.format(value)


_ALIGN = {"l": ":---", "r": "---:", "": "---"}


def markdown_table(headers, rows, align=None):
    """Lines of a markdown table: the header, the separator and one line per row of cells.

    ``align`` gives each column "l" (``:---``), "r" (``---:``) or "" (``---``); a string such as
    ``"lrr"`` works too. Default: unaligned. Cells are written as given (str of the value)."""
    align = list(align) if align is not None else [""] * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"{len(headers)} columns, but {len(align)} alignments")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(_ALIGN[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"{len(headers)} columns, but a row of {len(row)}: {row}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def run_interleaved(steps, rounds, warmup, log=None):
    """Time ``{key: step}`` (each call runs one step and returns its seconds, e.g. a
    :class:`nrd_rsp.analysis.speed.MeasuredStep`) in interleaved rounds
    (:func:`nrd_rsp.analysis.speed.interleaved_rounds`: ``warmup`` untimed rounds, then
    ``rounds`` timed ones, the first step rotating); returns ``{key: [seconds per round]}``.
    ``log(message)``, if given, gets one line per timed round: elapsed time and milliseconds."""
    from nrd_rsp.analysis.speed import interleaved_rounds

    t0 = time.perf_counter()

    def progress(r, this_round):
        log(
            f"round {r + 1}/{rounds} ({time.perf_counter() - t0:.0f}s): "
            + ", ".join(f"{k} {1e3 * t:.0f}" for k, t in this_round.items())
            + " ms"
        )

    return interleaved_rounds(
        steps, rounds=rounds, warmup=warmup, on_round=progress if log is not None else None
    )
