"""Statistics of seeded benchmark runs: mean +- std per model, paired differences with a
Student-t confidence interval per comparison (same seeds on both sides, so seed effects shared
by the two models cancel)."""

import math
from typing import Dict, Optional, Sequence

from scipy import stats

__all__ = ["summarize", "paired_difference"]


def _finite(values: Sequence[Optional[float]]):
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def summarize(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """{"n", "mean", "std" (sample, ddof 1; None below 2 values), "min", "max"} of the finite
    values; None/NaN entries (a metric a run could not compute) are left out and counted out of
    ``n``."""
    v = _finite(values)
    if not v:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return {"n": len(v), "mean": mean, "std": std, "min": min(v), "max": max(v)}


def paired_difference(
    a: Sequence[Optional[float]], b: Sequence[Optional[float]], confidence: float = 0.95
) -> Dict[str, object]:
    """Mean of ``a[i] - b[i]`` over the seeds where both are finite, with its two-sided
    ``confidence`` interval ``mean +- t_{n-1} * sd / sqrt(n)``.

    Returns {"n", "mean", "ci_low", "ci_high", "significant"}; ``significant`` is whether the
    interval excludes 0 (the paired t-test at level 1 - confidence). Below 2 pairs the interval
    is None and nothing is significant.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if _finite([x]) and _finite([y])]
    d = [x - y for x, y in pairs]
    n = len(d)
    if n < 2:
        mean = d[0] if d else None
        return {"n": n, "mean": mean, "ci_low": None, "ci_high": None, "significant": False}
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return {
        "n": n,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "significant": bool(low > 0 or high < 0),
    }
