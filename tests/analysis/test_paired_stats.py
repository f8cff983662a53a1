"""Seeded-benchmark statistics against independent references: NumPy for mean and std, SciPy's
paired t-test and t-interval for the confidence interval and its verdict."""

import math

import numpy as np
import pytest
from scipy import stats

from nrd_rsp.analysis.paired_stats import holm_adjust, paired_difference, summarize


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


def test_paired_p_value_matches_scipy():
    rng = np.random.default_rng(7)
    b = rng.normal(50, 5, size=5)
    a = b + rng.normal(1.0, 1.0, size=5)
    assert paired_difference(list(a), list(b))["p_value"] == pytest.approx(
        stats.ttest_rel(a, b).pvalue
    )


def test_holm_against_a_hand_computation():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4), sorted 0.005, 0.01, 0.03, 0.04:
    4 x 0.005 = 0.02; 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06.
    At alpha 0.05 the first two are significant; raw, all four are below 0.05."""
    got = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    expected = {"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06}
    for k, p in expected.items():
        assert got[k][0] == pytest.approx(p) and got[k][1] == (p <= 0.05)
    assert got["e"] == (None, False)
    try:  # statsmodels, where installed, agrees
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    reject, corrected, _, _ = multipletests([0.01, 0.04, 0.03, 0.005], method="holm")
    assert list(corrected) == pytest.approx([got[k][0] for k in "abcd"])
