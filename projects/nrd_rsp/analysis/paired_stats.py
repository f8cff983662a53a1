"""Statistics of seeded benchmark runs: mean +- std per model, paired differences with a
Student-t confidence interval per comparison (same seeds on both sides, so seed effects shared
by the two models cancel), and Holm-Bonferroni adjusted verdicts over a family of comparisons."""

import math
from typing import Dict, Optional, Sequence

from scipy import stats

__all__ = ["summarize", "paired_difference", "holm_adjust"]


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

    Returns {"n", "mean", "ci_low", "ci_high", "significant", "p_value"}; ``significant`` is
    whether the interval excludes 0 (the paired t-test at level 1 - confidence), ``p_value`` that
    test's two-sided p-value. Below 2 pairs the interval and p-value are None and nothing is
    significant.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if _finite([x]) and _finite([y])]
    d = [x - y for x, y in pairs]
    n = len(d)
    if n < 2:
        mean = d[0] if d else None
        return {
            "n": n,
            "mean": mean,
            "ci_low": None,
            "ci_high": None,
            "significant": False,
            "p_value": None,
        }
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if sd > 0:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    else:  # every pair differs by the same amount
        p = 1.0 if mean == 0 else 0.0
    return {
        "n": n,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "significant": bool(low > 0 or high < 0),
        "p_value": p,
    }


def holm_adjust(p_values: Dict[str, Optional[float]], alpha: float = 0.05):
    """Holm-Bonferroni step-down over a family of tests: ``{key: (adjusted p, significant)}``.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; a test is significant when its adjusted value is at
    most ``alpha`` (the family-wise error rate). Keys whose p-value is None stay (None, False) and
    do not count in m.
    """
    finite = sorted((p, k) for k, p in p_values.items() if p is not None)
    m, running, out = len(finite), 0.0, {k: (None, False) for k in p_values}
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = (running, running <= alpha)
    return out
