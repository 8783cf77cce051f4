"""Two-arm statistics for comparing an idea with the baseline, direction-aware.

Everything here is pure and deterministic so the analyst's numbers can be
checked by hand. The one convention that matters: ``improvement`` is the
difference signed so that > 0 is better, whatever the metric's direction, so
a lower loss is a positive improvement and nobody downstream has to remember
which way a metric points.

Degenerate inputs never produce NaN or infinity (they would not survive JSON
and would print as nonsense in the paper):

- an arm with fewer than 2 values: no variance estimate, so no test; the
  p-value is 1.0 (no evidence either way) and the effect size 0.0.
- both arms with zero variance: if the means are equal, p = 1.0 and g = 0.0;
  if they differ, every seed of one arm beats every seed of the other by the
  same amount, so p = 0.0 and g is set to ``EFFECT_CAP`` with the sign of the
  improvement (Hedges' g itself would divide by zero). The same holds for
  paired differences that are all equal (d_z, p and the interval).

Effect sizes and intervals match the test that decides the verdict: a paired
t-test reports Cohen's d_z (mean paired difference / SD of the differences)
and the paired t-interval of the mean difference; Welch's test reports Hedges'
g and the Welch t-interval. An interval at level 1 - a excludes zero exactly
when the same test's p < a, so the workflow draws it at the Holm step's level
(``holm_levels``) and it excludes zero exactly when the corrected verdict is
significant. The seeded bootstrap (``bootstrap_ci``) stays available as an
extra, never as the interval beside a verdict.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from bus.errors import LabError

Direction = Literal["higher", "lower"]
Verdict = Literal["better", "worse", "inconclusive"]
Test = Literal["welch", "paired"]
EffectKind = Literal["hedges_g", "paired_d"]

EFFECT_CAP = 10.0  # |g| reported when the pooled standard deviation is zero (only then)
N_BOOTSTRAP = 4000


class StatsError(LabError, ValueError):
    """Input the statistics cannot be computed from (e.g. an empty arm)."""


@dataclass(frozen=True)
class Summary:
    mean: float
    stderr: float
    n: int


@dataclass(frozen=True)
class TwoArm:
    """Idea vs baseline on one metric; every float is finite."""

    baseline: Summary
    idea: Summary
    diff: float
    improvement: float
    ci_low: float
    ci_high: float
    p_value: float
    effect_size: float
    better: bool
    verdict: Verdict
    test: Test = "welch"
    effect_kind: EffectKind = "hedges_g"


def sign(direction: Direction) -> float:
    if direction not in ("higher", "lower"):
        raise StatsError(f"direction must be 'higher' or 'lower', got {direction!r}")
    return 1.0 if direction == "higher" else -1.0


def _array(values: Sequence[float], label: str) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        raise StatsError(f"{label}: no values")
    if not np.all(np.isfinite(a)):
        raise StatsError(f"{label}: non-finite values {a.tolist()}")
    return a


def summarize(values: Sequence[float]) -> Summary:
    """Mean and standard error of the mean (sample sd / sqrt(n); 0 for n = 1)."""
    a = _array(values, "summary")
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
    return Summary(float(a.mean()), se, int(a.size))


def _constant(a: np.ndarray) -> bool:
    return bool(np.ptp(a) == 0.0)


def welch_p(baseline: Sequence[float], idea: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value, with the guards in the module docstring."""
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    if b.size < 2 or i.size < 2:
        return 1.0
    if _constant(b) and _constant(i):
        return 1.0 if b[0] == i[0] else 0.0
    # Welch by hand (the same formula as scipy's ttest_ind(equal_var=False)),
    # because scipy warns about "catastrophic cancellation" when one arm is
    # constant, which is a legitimate input here (a deterministic baseline).
    vb, vi = b.var(ddof=1) / b.size, i.var(ddof=1) / i.size
    se2 = vb + vi
    t = float(i.mean() - b.mean()) / math.sqrt(se2)
    df = se2**2 / (vb**2 / (b.size - 1) + vi**2 / (i.size - 1))
    p = float(2.0 * sps.t.sf(abs(t), df))
    return p if math.isfinite(p) else 1.0


def paired_p(baseline: Sequence[float], idea: Sequence[float]) -> float:
    """Two-sided paired t-test p-value over per-seed differences (idea - baseline, same seed order).

    The same formula as scipy's ``ttest_rel``, by hand for the same reason as
    ``welch_p``; constant differences follow the module docstring's guards.
    """
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    if b.size != i.size:
        raise StatsError(f"a paired test needs arms of equal length, got {b.size} and {i.size}")
    if b.size < 2:
        return 1.0
    d = i - b
    if _constant(d):
        return 1.0 if d[0] == 0.0 else 0.0
    t = float(d.mean()) / (float(d.std(ddof=1)) / math.sqrt(d.size))
    p = float(2.0 * sps.t.sf(abs(t), d.size - 1))
    return p if math.isfinite(p) else 1.0


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The k-th smallest of m p-values is multiplied by (m - k + 1), capped at 1,
    and made monotone so an adjusted p never drops below a smaller raw one's.
    Comparing each adjusted p with alpha controls the family-wise error rate.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda k: p_values[k])
    out = [1.0] * m
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[k])))
        out[k] = running
    return out


def verdict_of(improvement: float, p: float, alpha: float) -> Verdict:
    """"better"/"worse" only when ``p`` (the corrected one, where there is one) is below alpha."""
    if p < alpha and improvement > 0:
        return "better"
    if p < alpha and improvement < 0:
        return "worse"
    return "inconclusive"


def hedges_g(baseline: Sequence[float], idea: Sequence[float], direction: Direction) -> float:
    """Bias-corrected standardized mean difference, signed like the improvement."""
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    s = sign(direction)
    if b.size < 2 or i.size < 2:
        return 0.0
    nb, ni = b.size, i.size
    pooled = math.sqrt(((nb - 1) * b.var(ddof=1) + (ni - 1) * i.var(ddof=1)) / (nb + ni - 2))
    diff = s * float(i.mean() - b.mean())
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(EFFECT_CAP, diff)
    correction = 1.0 - 3.0 / (4.0 * (nb + ni) - 9.0)
    return correction * diff / pooled


def bootstrap_ci(
    baseline: Sequence[float],
    idea: Sequence[float],
    direction: Direction,
    *,
    level: float = 0.95,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
    paired: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the improvement, resampling each arm on its own
    (or, when ``paired``, resampling seeds, so both arms keep their pairing).

    Seeded, so the same inputs always give the same interval.
    """
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    if not 0.0 < level < 1.0:
        raise StatsError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if paired:
        if b.size != i.size:
            raise StatsError(f"a paired interval needs arms of equal length, got {b.size} and {i.size}")
        idx = rng.integers(0, b.size, size=(n_boot, b.size))
        bm, im = b[idx].mean(axis=1), i[idx].mean(axis=1)
    else:
        bm = rng.choice(b, size=(n_boot, b.size), replace=True).mean(axis=1)
        im = rng.choice(i, size=(n_boot, i.size), replace=True).mean(axis=1)
    imp = sign(direction) * (im - bm)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(imp, [tail, 1.0 - tail])
    return float(lo), float(hi)


def stable_seed(*parts: str) -> int:
    """A seed from strings that is the same in every process (``hash()`` is salted)."""
    return zlib.crc32("/".join(parts).encode())


def paired_d(baseline: Sequence[float], idea: Sequence[float], direction: Direction) -> float:
    """Cohen's d_z: the mean paired difference over the SD of the differences, signed like the improvement.

    The effect size of a paired t-test (t = d_z * sqrt(n)); differences that are all
    equal follow the module docstring's guards (0, or ``EFFECT_CAP`` with the improvement's sign).
    """
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    if b.size != i.size:
        raise StatsError(f"a paired effect size needs arms of equal length, got {b.size} and {i.size}")
    if b.size < 2:
        return 0.0
    d = sign(direction) * (i - b)
    if _constant(d):
        return 0.0 if d[0] == 0.0 else math.copysign(EFFECT_CAP, float(d[0]))
    return float(d.mean()) / float(d.std(ddof=1))


def t_interval(
    baseline: Sequence[float], idea: Sequence[float], direction: Direction, *, alpha: float = 0.05, paired: bool = False
) -> tuple[float, float]:
    """The (1 - alpha) t-interval of the improvement: paired (mean of the per-seed differences) or Welch's.

    The same statistic and degrees of freedom as ``paired_p``/``welch_p``, so it
    excludes zero exactly when that p-value is below ``alpha`` (scipy's
    ``ttest_rel``/``ttest_ind(equal_var=False)`` ``confidence_interval`` gives the
    same bounds, for the idea minus the baseline). Guards: an arm with fewer than
    2 values has no variance estimate, so the interval spans from 0 to the point
    estimate (it holds 0, as p = 1 says); a zero standard error gives the point itself.
    """
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    b, i = _array(baseline, "baseline"), _array(idea, "idea")
    s = sign(direction)
    if paired and b.size != i.size:
        raise StatsError(f"a paired interval needs arms of equal length, got {b.size} and {i.size}")
    imp = s * float(i.mean() - b.mean())
    if b.size < 2 or i.size < 2:
        return min(imp, 0.0), max(imp, 0.0)
    if paired:
        d = i - b
        se, df = float(d.std(ddof=1)) / math.sqrt(d.size), float(d.size - 1)
    else:
        vb, vi = b.var(ddof=1) / b.size, i.var(ddof=1) / i.size
        se = math.sqrt(vb + vi)
        df = (vb + vi) ** 2 / (vb**2 / (b.size - 1) + vi**2 / (i.size - 1)) if se > 0 else 1.0
    if se == 0.0:
        return imp, imp
    half = float(sps.t.ppf(1.0 - alpha / 2.0, df)) * se
    return imp - half, imp + half


def holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
    """The level each test of a Holm family is decided at, in the input order, for intervals that agree with it.

    Holm tests the k-th smallest of m p-values (k from 0) at alpha / (m - k) and
    stops at the first that fails (step s); every later one is accepted. So a
    rejected test's interval is drawn at its step's level alpha / (m - k), and
    every accepted one at the failing step's level alpha / (m - s), which is no
    larger than its own and which its p (>= the failing one) does not beat.
    Then an interval excludes zero exactly when the Holm-adjusted p < alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda k: p_values[k])
    out = [alpha] * m
    stop = m
    for rank, k in enumerate(order):
        if stop == m and not p_values[k] < alpha / (m - rank):
            stop = rank
        out[k] = alpha / (m - min(rank, stop))
    return out


def sample_size(sd: float, effect: float, *, alpha: float = 0.05, power: float = 0.8, max_n: int = 1000) -> int:
    """Seeds per arm for a two-sided two-sample t-test to detect ``effect`` (metric units) with this power.

    The smallest n >= 2 whose power, from the noncentral t distribution
    (df = 2n - 2, noncentrality effect / (sd * sqrt(2 / n))), reaches ``power``;
    ``max_n`` when none up to it does. A paired design needs no more than this
    when the arms' seed-to-seed variation is shared (the differences vary less
    than each arm), so it is the plan for both tests. ``sd`` = 0: 2.
    """
    if effect <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise StatsError(f"a sample size needs effect > 0 and alpha, power in (0, 1); got {effect}, {alpha}, {power}")
    if sd <= 0:
        return 2
    for n in range(2, max_n + 1):
        df = 2 * n - 2
        nc = effect / (sd * math.sqrt(2.0 / n))
        crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))
        # scipy's noncentral t returns NaN far in a tail (a large noncentrality): the far tail is 0 there, the near one 1.
        upper, lower = float(sps.nct.sf(crit, df, nc)), float(sps.nct.cdf(-crit, df, nc))
        upper = upper if math.isfinite(upper) else float(nc > crit)
        achieved = upper + (lower if math.isfinite(lower) else 0.0)
        if achieved >= power:
            return n
    return max_n


def compare(
    baseline: Sequence[float],
    idea: Sequence[float],
    direction: Direction,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    paired: bool = False,
) -> TwoArm:
    """Everything the analyst reports for one idea/metric pair, before any correction.

    ``paired``: the arms ran the same seeds and ``baseline[k]``/``idea[k]``
    share seed k, so the test runs on per-seed differences (seed-to-seed
    variation that both arms share cancels out), the effect size is d_z and the
    interval is the paired t-interval. Otherwise Welch's test, Hedges' g and
    Welch's interval. The interval is at level 1 - ``alpha`` (uncorrected:
    the analyst redraws it at the corrected level). ``seed`` is kept for
    callers that passed it (the bootstrap used it); the t-statistics need none.
    """
    sb, si = summarize(baseline), summarize(idea)
    diff = si.mean - sb.mean
    improvement = sign(direction) * diff
    p = paired_p(baseline, idea) if paired else welch_p(baseline, idea)
    effect = paired_d(baseline, idea, direction) if paired else hedges_g(baseline, idea, direction)
    lo, hi = t_interval(baseline, idea, direction, alpha=alpha, paired=paired)
    verdict = verdict_of(improvement, p, alpha)
    return TwoArm(sb, si, diff, improvement, lo, hi, p, effect, verdict == "better", verdict,
                  "paired" if paired else "welch", "paired_d" if paired else "hedges_g")
