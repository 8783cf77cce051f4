"""Paired comparisons for `lab evolve`: the difference of two candidates on the seeds both ran, with its interval."""

from __future__ import annotations

import math
import statistics

from scipy import stats as sstats

from bus.schema import Direction
from bus.schema.evolve import Candidate, Comparison


def paired(a: Candidate, b: Candidate, direction: Direction, level: float = 0.95) -> Comparison | None:
    """``a`` against ``b`` on their shared seeds (positive: ``a`` better); None with fewer than two shared seeds."""
    bv = dict(zip(b.seeds, b.values, strict=True))
    seeds = [s for s in a.seeds if s in bv]
    if len(seeds) < 2:
        return None
    av = dict(zip(a.seeds, a.values, strict=True))
    sign = 1.0 if direction == "higher" else -1.0
    d = [sign * (av[s] - bv[s]) for s in seeds]
    mean = statistics.fmean(d)
    sd = statistics.stdev(d)
    n = len(d)
    if sd == 0.0:
        lo = hi = mean
        p = 1.0 if mean == 0.0 else 0.0
    else:
        se = sd / math.sqrt(n)
        half = float(sstats.t.ppf(0.5 + level / 2, n - 1)) * se
        lo, hi = mean - half, mean + half
        p = float(2 * sstats.t.sf(abs(mean / se), n - 1))
    return Comparison(a=a.id, b=b.id, split=a.split, seeds=seeds, a_values=[av[s] for s in seeds], b_values=[bv[s] for s in seeds],
                      diff=mean, lo=lo, hi=hi, p=p, level=level)


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of a mean (the mean itself with one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m
    half = float(sstats.t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return m - half, m + half


__all__ = ["interval", "paired"]
