"""Seeded-benchmark statistics against independent references: NumPy for mean and std, SciPy's
paired t-test and t-interval for the confidence interval and its verdict."""

import math

import numpy as np
import pytest
from scipy import stats

from nrd_rsp.analysis.paired_stats import paired_difference, summarize


def test_summarize_matches_numpy_and_skips_missing_values():
    v = [54.9, 49.2, 61.4, 52.0, 58.3]
    s = summarize(v + [None, float("nan")])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(np.mean(v)) and s["std"] == pytest.approx(np.std(v, ddof=1))
    assert (s["min"], s["max"]) == (49.2, 61.4)
    assert summarize([3.0])["std"] is None and summarize([])["mean"] is None


@pytest.mark.parametrize("seed", range(6))
def test_paired_interval_and_verdict_match_scipy(seed):
    rng = np.random.default_rng(seed)
    b = rng.normal(50, 5, size=5)
    a = b + rng.normal([0.0, 0.5, 3.0][seed % 3], 1.0, size=5)  # some differ, some do not
    d = paired_difference(list(a), list(b))
    low, high = stats.t.interval(0.95, 4, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert d["n"] == 5 and d["mean"] == pytest.approx(np.mean(a - b))
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert d["significant"] == (stats.ttest_rel(a, b).pvalue < 0.05)


def test_pairing_matters_and_incomplete_pairs_are_dropped():
    # b is a with a constant shift: unpaired, the spread across seeds hides it; paired, it is
    # exactly +1 with an interval of zero width.
    a = [40.0, 50.0, 60.0, 70.0, 80.0]
    b = [x - 1.0 for x in a]
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(1.0) and d["significant"]
    assert d["ci_low"] == pytest.approx(1.0) and d["ci_high"] == pytest.approx(1.0)
    assert stats.ttest_ind(a, b).pvalue > 0.5  # the unpaired test sees nothing
    d = paired_difference([1.0, None, 3.0, 5.0], [0.0, 2.0, float("nan"), 4.0])
    assert d["n"] == 2 and d["mean"] == pytest.approx(1.0)
    one = paired_difference([2.0], [1.0])
    assert one["mean"] == 1.0 and one["ci_low"] is None and not one["significant"]
    with pytest.raises(ValueError, match="3 values against 2"):
        paired_difference([1, 2, 3], [1, 2])
    assert math.isfinite(paired_difference([1, 2, 3], [1, 2, 3])["ci_low"])
