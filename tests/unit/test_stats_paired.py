"""Effect sizes and intervals that match their test, checked against SciPy; Holm-consistent levels; the seed plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from agents import stats

RNG = np.random.default_rng(7)
BASE = list(RNG.normal(1.0, 0.3, 8))
IDEA = [b + d for b, d in zip(BASE, RNG.normal(0.05, 0.08, 8), strict=True)]


@pytest.mark.parametrize("alpha", [0.05, 0.0125, 0.2])
def test_paired_interval_and_d_match_scipy_ttest_rel(alpha):
    res = sps.ttest_rel(IDEA, BASE)
    ci = res.confidence_interval(confidence_level=1.0 - alpha)
    assert stats.t_interval(BASE, IDEA, "higher", alpha=alpha, paired=True) == pytest.approx((ci.low, ci.high))
    # Lower is better: the improvement is baseline - idea, so the interval flips.
    assert stats.t_interval(BASE, IDEA, "lower", alpha=alpha, paired=True) == pytest.approx((-ci.high, -ci.low))
    d = np.subtract(IDEA, BASE)
    assert stats.paired_d(BASE, IDEA, "higher") == pytest.approx(d.mean() / d.std(ddof=1))
    assert stats.paired_d(BASE, IDEA, "higher") == pytest.approx(res.statistic / math.sqrt(len(d)))
    assert stats.paired_d(BASE, IDEA, "lower") == pytest.approx(-res.statistic / math.sqrt(len(d)))


def test_welch_interval_matches_scipy():
    idea = IDEA[:6]
    ci = sps.ttest_ind(idea, BASE, equal_var=False).confidence_interval(confidence_level=0.9)
    assert stats.t_interval(BASE, idea, "higher", alpha=0.1) == pytest.approx((ci.low, ci.high))


def test_compare_reports_the_effect_size_of_its_test():
    paired = stats.compare(BASE, IDEA, "higher", paired=True)
    welch = stats.compare(BASE, IDEA, "higher")
    assert (paired.effect_kind, welch.effect_kind) == ("paired_d", "hedges_g")
    assert paired.effect_size == pytest.approx(stats.paired_d(BASE, IDEA, "higher"))
    assert welch.effect_size == pytest.approx(stats.hedges_g(BASE, IDEA, "higher"))
    ci = sps.ttest_rel(IDEA, BASE).confidence_interval(0.95)
    assert (paired.ci_low, paired.ci_high) == pytest.approx((ci.low, ci.high))


@pytest.mark.parametrize("paired", [True, False])
def test_interval_excludes_zero_exactly_when_p_is_below_alpha(paired):
    rng = np.random.default_rng(3)
    for _ in range(200):
        b = rng.normal(0.0, 1.0, 5)
        i = b * rng.uniform(0, 1) + rng.normal(rng.normal(0, 0.8), 0.5, 5)
        alpha = float(rng.choice([0.05, 0.025, 0.01]))
        p = stats.paired_p(b, i) if paired else stats.welch_p(b, i)
        lo, hi = stats.t_interval(b, i, "higher", alpha=alpha, paired=paired)
        assert (lo > 0 or hi < 0) == (p < alpha)


def test_guards_give_finite_intervals_that_agree_with_p():
    assert stats.t_interval([1.0], [2.0], "higher") == (0.0, 1.0)  # p = 1: holds zero
    assert stats.t_interval([1.0, 2.0], [2.0, 3.0], "higher", paired=True) == (1.0, 1.0)  # p = 0: excludes it
    assert stats.t_interval([1.0, 2.0], [1.0, 2.0], "higher", paired=True) == (0.0, 0.0)  # p = 1: holds it
    assert stats.paired_d([1.0, 2.0], [2.0, 3.0], "lower") == -stats.EFFECT_CAP
    assert stats.paired_d([1.0, 2.0], [1.0, 2.0], "higher") == 0.0


def test_holm_levels_make_intervals_agree_with_corrected_verdicts():
    """On constructed families, the interval at each test's Holm level excludes zero iff its Holm-adjusted p < alpha."""
    rng = np.random.default_rng(11)
    seen = {True: 0, False: 0}
    for _ in range(150):
        m = int(rng.integers(2, 7))
        arms = []
        for _ in range(m):
            b = rng.normal(0.0, 1.0, 6)
            arms.append((b, b + rng.normal(rng.choice([0.0, 0.4, 1.0]), 0.5, 6)))
        ps = [stats.paired_p(b, i) for b, i in arms]
        adjusted, levels = stats.holm(ps), stats.holm_levels(ps, 0.05)
        for (b, i), p_adj, level in zip(arms, adjusted, levels, strict=True):
            lo, hi = stats.t_interval(b, i, "higher", alpha=level, paired=True)
            assert (lo > 0 or hi < 0) == (p_adj < 0.05)
            seen[p_adj < 0.05] += 1
    assert seen[True] > 20 and seen[False] > 20  # both cases were exercised


def test_holm_levels_by_hand():
    # Step 0 (0.01 < 0.05/3) rejects; step 1 (0.03 >= 0.05/2) fails, so step 2 is drawn at step 1's level too.
    assert stats.holm_levels([0.03, 0.01, 0.04], 0.05) == pytest.approx([0.025, 0.05 / 3, 0.025])
    assert stats.holm_levels([0.001, 0.002], 0.05) == pytest.approx([0.025, 0.05])
    assert stats.holm_levels([0.2], 0.05) == [0.05]


def test_sample_size_reaches_the_power_it_promises():
    n = stats.sample_size(1.0, 1.0, alpha=0.05, power=0.8)
    assert n == 17  # the textbook answer for d = 1 (16.7 rounded up)

    def power(k: int) -> float:
        df, nc = 2 * k - 2, 1.0 / math.sqrt(2.0 / k)
        crit = sps.t.ppf(0.975, df)
        return sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)

    assert power(n) >= 0.8 > power(n - 1)
    assert stats.sample_size(0.1, 1.0) == 2 and stats.sample_size(0.0, 1.0) == 2
    assert stats.sample_size(0.01186, 0.3975) == 2  # a huge effect: scipy's tail is NaN there, the power is 1
    assert stats.sample_size(1.0, 0.5, alpha=0.01) > stats.sample_size(1.0, 0.5)
    with pytest.raises(stats.StatsError):
        stats.sample_size(1.0, 0.0)
