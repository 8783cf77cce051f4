"""The analyst's statistics on inputs whose answers are known."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from agents import stats

BASE = [0.80, 0.82, 0.81, 0.79]
IDEA = [0.85, 0.86, 0.88, 0.84, 0.87]


def test_summary_is_mean_and_standard_error():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.n == 4
    assert s.stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert stats.summarize([5.0]).stderr == 0.0


def test_welch_matches_scipy():
    assert stats.welch_p(BASE, IDEA) == pytest.approx(sps.ttest_ind(IDEA, BASE, equal_var=False).pvalue)


def test_hedges_g_by_hand():
    nb, ni = len(BASE), len(IDEA)
    sp = math.sqrt(((nb - 1) * np.var(BASE, ddof=1) + (ni - 1) * np.var(IDEA, ddof=1)) / (nb + ni - 2))
    d = (np.mean(IDEA) - np.mean(BASE)) / sp
    g = d * (1 - 3 / (4 * (nb + ni) - 9))
    assert stats.hedges_g(BASE, IDEA, "higher") == pytest.approx(g)
    assert stats.hedges_g(BASE, IDEA, "lower") == pytest.approx(-g)


def test_higher_is_better():
    r = stats.compare(BASE, IDEA, "higher", seed=1)
    assert r.diff == pytest.approx(np.mean(IDEA) - np.mean(BASE))
    assert r.improvement == pytest.approx(r.diff) and r.improvement > 0
    assert r.effect_size > 0 and r.p_value < 0.05
    assert r.better and r.verdict == "better"
    assert r.ci_low > 0 and r.ci_low < r.improvement < r.ci_high


def test_lower_loss_is_an_improvement():
    base_loss, idea_loss = [1.00, 1.05, 0.98, 1.02], [0.70, 0.72, 0.69, 0.71]
    r = stats.compare(base_loss, idea_loss, "lower", seed=1)
    assert r.diff < 0  # the loss went down...
    assert r.improvement == pytest.approx(-r.diff) and r.improvement > 0  # ...which is better
    assert r.effect_size > 0 and r.ci_low > 0
    assert r.verdict == "better" and r.better


def test_higher_loss_is_worse():
    r = stats.compare([0.70, 0.72, 0.69, 0.71], [1.00, 1.05, 0.98, 1.02], "lower")
    assert r.improvement < 0 and r.effect_size < 0 and r.ci_high < 0
    assert r.verdict == "worse" and not r.better


def test_overlapping_arms_are_inconclusive():
    r = stats.compare([0.5, 0.7, 0.6], [0.55, 0.72, 0.58], "higher")
    assert r.p_value > 0.05 and r.verdict == "inconclusive" and not r.better
    assert r.ci_low < 0 < r.ci_high


def test_bootstrap_is_seeded_and_deterministic():
    a = stats.bootstrap_ci(BASE, IDEA, "higher", seed=7)
    assert a == stats.bootstrap_ci(BASE, IDEA, "higher", seed=7)
    assert a != stats.bootstrap_ci(BASE, IDEA, "higher", seed=8)
    lo, hi = stats.bootstrap_ci(BASE, IDEA, "lower", seed=7)
    assert (lo, hi) == pytest.approx((-a[1], -a[0]))
    assert stats.stable_seed("idea", "acc") == stats.stable_seed("idea", "acc")


def test_zero_variance_equal_means_gives_p_one():
    r = stats.compare([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "higher")
    assert (r.p_value, r.effect_size, r.ci_low, r.ci_high) == (1.0, 0.0, 0.0, 0.0)
    assert r.verdict == "inconclusive"


def test_zero_variance_different_means_gives_p_zero_and_capped_g():
    r = stats.compare([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], "lower")
    assert r.p_value == 0.0 and r.effect_size == stats.EFFECT_CAP
    assert r.verdict == "better"
    assert all(math.isfinite(x) for x in (r.p_value, r.effect_size, r.ci_low, r.ci_high))


def test_one_constant_arm_still_uses_welch():
    p = stats.welch_p([1.0, 1.0, 1.0], [1.1, 1.2, 1.3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on the constant arm; we must not
        expected = sps.ttest_ind([1.1, 1.2, 1.3], [1.0, 1.0, 1.0], equal_var=False).pvalue
    assert p == pytest.approx(expected)


def test_single_seed_gives_no_evidence():
    r = stats.compare([0.8], [0.9, 0.95, 0.97], "higher")
    assert r.p_value == 1.0 and r.effect_size == 0.0 and r.verdict == "inconclusive"
    assert r.baseline.stderr == 0.0


def test_bad_input_is_one_readable_error():
    with pytest.raises(stats.StatsError, match="no values"):
        stats.compare([], [1.0], "higher")
    with pytest.raises(stats.StatsError, match="direction"):
        stats.compare([1.0, 2.0], [1.0, 2.0], "up")  # type: ignore[arg-type]
    with pytest.raises(stats.StatsError, match="non-finite"):
        stats.summarize([1.0, float("nan")])


def test_large_finite_effect_is_not_capped():
    g = stats.hedges_g([0.8, 0.8001, 0.8002], [0.9, 0.9001, 0.9002], "higher")
    assert g > stats.EFFECT_CAP


# ------------------------------------------------ multiple comparisons and paired tests

PAIRED_BASE = [0.71, 0.80, 0.65, 0.90, 0.77, 0.83]
PAIRED_IDEA = [0.74, 0.82, 0.69, 0.91, 0.80, 0.85]  # a small shift on top of large seed-to-seed spread


def test_paired_matches_scipy_ttest_rel():
    assert stats.paired_p(PAIRED_BASE, PAIRED_IDEA) == pytest.approx(sps.ttest_rel(PAIRED_IDEA, PAIRED_BASE).pvalue)


def test_pairing_finds_an_effect_that_seed_spread_hides_from_welch():
    welch = stats.compare(PAIRED_BASE, PAIRED_IDEA, "higher", seed=1)
    paired = stats.compare(PAIRED_BASE, PAIRED_IDEA, "higher", seed=1, paired=True)
    assert welch.test == "welch" and welch.verdict == "inconclusive" and welch.p_value > 0.5
    assert paired.test == "paired" and paired.verdict == "better" and paired.p_value < 0.01
    # Each effect size and interval belongs to its test: the paired one is d_z = t / sqrt(n) and its
    # t-interval excludes zero as its p does; Welch's is Hedges' g and its interval holds zero as its p says.
    t = sps.ttest_rel(PAIRED_IDEA, PAIRED_BASE).statistic
    assert paired.effect_kind == "paired_d" and paired.effect_size == pytest.approx(t / math.sqrt(len(PAIRED_BASE)))
    assert welch.effect_kind == "hedges_g" and welch.effect_size == pytest.approx(stats.hedges_g(PAIRED_BASE, PAIRED_IDEA, "higher"))
    assert paired.ci_low > 0 and welch.ci_low < 0 < welch.ci_high


def test_paired_guards():
    assert stats.paired_p([1.0, 2.0], [1.0, 2.0]) == 1.0  # no difference at all
    assert stats.paired_p([1.0, 2.0], [2.0, 3.0]) == 0.0  # every seed improves by the same amount
    assert stats.paired_p([1.0], [2.0]) == 1.0
    with pytest.raises(stats.StatsError, match="equal length"):
        stats.paired_p([1.0, 2.0, 3.0], [1.0, 2.0])


def holm_by_hand(p):
    """Holm's step-down procedure written out as in the textbook, for comparison."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    prev = 0.0
    for k, idx in enumerate(order):
        prev = max(prev, min(1.0, (m - k) * p[idx]))
        adj[idx] = prev
    return adj.tolist()


def test_holm_by_hand_and_against_bonferroni_and_bh():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    adj = stats.holm(p)
    # sorted: 0.005*5=0.025, 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> 0.09 (monotone), 0.2*1=0.2
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    assert adj == pytest.approx(holm_by_hand(p))
    bonferroni = [min(1.0, x * len(p)) for x in p]
    bh = sps.false_discovery_control(p, method="bh")
    # Holm is never more lenient than Bonferroni's bound nor less strict than BH's FDR control
    assert all(b >= h - 1e-12 for b, h in zip(bonferroni, adj, strict=True))
    assert all(h >= q - 1e-12 for h, q in zip(adj, bh, strict=True))
    assert stats.holm([]) == [] and stats.holm([0.7]) == [0.7]
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1


def test_one_p_of_003_among_ten_comparisons_is_not_significant():
    p = [0.03, 0.2, 0.35, 0.41, 0.5, 0.62, 0.7, 0.81, 0.9, 0.95]
    adj = stats.holm(p)
    assert adj[0] == pytest.approx(0.3)
    assert stats.verdict_of(0.1, p[0], 0.05) == "better"  # uncorrected it would be a "finding"
    assert stats.verdict_of(0.1, adj[0], 0.05) == "inconclusive"
