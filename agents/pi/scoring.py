"""The offline PI's scores, computed from evidence (never constants), and its local-search refinements.

- **novelty**: from the idea archive. Never tried on this template: 8; tried
  by another project (proposed again only when repeats are asked for): 2.
  The literature agent's verdict comes later and can still stop an idea.
- **feasibility**: from the expected run time. A knob that does not change
  the compute costs what the baseline costs; one that does scales it by the
  value's ratio to the baseline's (larger width, more steps: longer); a code
  change costs what the baseline costs when its declared variant says it
  leaves the compute alone, else 1.5x (unknown). With the baseline's wall time
  known, ``10 * (1 - expected / time budget)``; without it, from the ratio
  alone. Clamped to 1-10.
- **interestingness**: from the outcomes (this project's and the archive's)
  for the same knob or for code variants. On an ordered knob the best value so
  far is the reference: one step from a value that beat the baseline is 9, two
  steps 7, further 5; when nothing on that knob beat the baseline, the first
  untried step is 5, further 3. A choice knob: 6 when one of its values won, 3
  when all lost. No evidence on that lever: None (not scored).
"""

from __future__ import annotations

import math
from typing import Any

from agents.minds.base import IdeaContext
from bus.schema import Idea, IdeaOutcome, Knob, TemplateSpec, signature_of

VARIANT_COST = 1.5  # a code variant's compute relative to the baseline's, before it ran


def declared_variants(spec: TemplateSpec) -> list[tuple[str, str]]:
    """(name, summary) of the code variants a template declares, if its spec has any."""
    variants = getattr(spec, "variants", None) or {}
    items = variants.items() if isinstance(variants, dict) else [(getattr(v, "name", ""), v) for v in variants]
    out = []
    for name, v in items:
        summary = v if isinstance(v, str) else getattr(v, "summary", "") or getattr(v, "description", "")
        if name:
            out.append((str(name), str(summary)))
    return sorted(out)


def _on_grid(x: float, step: int, ends: tuple[int, int]) -> int | None:
    """``x`` rounded to a multiple of ``step``, the step halved until that lands strictly between ``ends``."""
    lo, hi = sorted(ends)
    while step >= 1:
        value = int(round(x / step)) * step
        if lo < value < hi:
            return value
        step //= 2
    return None


def int_neighbours(knob: Knob, best: int, known: list[int]) -> list[int]:
    """An int knob's values next to ``best`` (which beat the baseline), inside its declared space.

    With ``choices`` the neighbours are the declared values on either side of the best.
    Otherwise the halfway point to each known neighbour (geometric on a ``log`` knob), or one
    step past the edge of what is known, kept on the coarsest grid the declared values share
    (their greatest common divisor: 32 and 128 stay multiples of 32, so a width that heads must
    divide stays divisible), a finer one only where that grid has no point in between.
    """
    lo = knob.min if knob.min is not None else -math.inf
    hi = knob.max if knob.max is not None else math.inf
    if knob.choices:
        grid = sorted({int(c) for c in knob.choices if lo <= c <= hi})
        if best not in grid:
            return []
        i = grid.index(best)
        return [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid) and grid[j] not in known]
    declared = [int(v) for v in [knob.default, *knob.candidates] if int(v) != 0]
    step = max(math.gcd(*declared), 1) if declared else 1
    geometric = knob.log and min(known) > 0
    i = known.index(best)
    out: list[int] = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(known):
            other = known[j]
            mid = math.sqrt(best * other) if geometric else (best + other) / 2
            value = _on_grid(mid, step, (best, other)) if abs(best - other) > 1 else None
        else:  # one step past the edge, as far as the inner neighbour is
            inner = known[i + 1] if j < 0 else known[i - 1]
            value = int(round(best * best / inner)) if geometric else 2 * best - inner
        if value is not None and lo <= value <= hi and value not in known and value not in out:
            out.append(value)
    return out


def _clamp(x: float) -> int:
    return max(1, min(10, int(round(x))))


def _numeric(knob: Knob) -> bool:
    return knob.type in ("float", "int")


class Scorer:
    def __init__(self, ctx: IdeaContext):
        self.ctx = ctx
        self.spec = ctx.spec
        # Every knob's value in the baseline as it runs under the project's profile: the reference point.
        self.base = ctx.spec.effective(ctx.profile or None)
        self.tried_elsewhere = {r.signature for r in ctx.prior}
        # knob -> value -> improvements seen for ideas that changed only that knob
        self.points: dict[str, dict[Any, list[float]]] = {}
        self.variants: list[IdeaOutcome] = []
        for o in ctx.measured():
            if o.code is not None:
                self.variants.append(o)
            elif len(o.changes) == 1:
                [(name, value)] = o.changes.items()
                self.points.setdefault(name, {}).setdefault(value, []).append(float(o.improvement or 0.0))

    # ------------------------------------------------------------ the knob's evidence

    def _means(self, name: str) -> dict[Any, float]:
        base = self.base[name]
        means = {v: sum(xs) / len(xs) for v, xs in self.points.get(name, {}).items()}
        means.setdefault(base, 0.0)  # the baseline is the reference point: improvement 0
        return means

    def best(self, name: str) -> tuple[Any, bool]:
        """The best value of a knob so far, and whether it beat the baseline."""
        means = self._means(name)
        base = self.base[name]
        value = max(means, key=lambda v: (means[v], v == base))
        return value, means[value] > 0

    def refinements(self, name: str, knob: Knob, base: Any) -> list[Any]:
        """Values next to the best one so far, once it beat the baseline: a local search in the declared space.

        A float knob gets the values halfway between the best and its nearest known
        neighbours (geometric halfway on a ``log`` knob), or one step past the edge of
        what is known. An int knob gets the same, on its grid (``int_neighbours``), or,
        when it declares ``choices``, the declared values next to the best. Never
        outside ``min``/``max``, never a value already known (tried, a candidate, the baseline's).
        """
        if knob.type not in ("float", "int") or name not in self.points:
            return []
        best, improved = self.best(name)
        if not improved:
            return []
        known = sorted({float(v) for v in [*self._means(name), *knob.candidates, base]})
        if knob.type == "int":
            return int_neighbours(knob, int(best), [int(v) for v in known])
        b = float(best)
        i = known.index(b)
        geometric = knob.log and known[0] > 0

        def between(x: float, y: float) -> float:
            return math.sqrt(x * y) if geometric else (x + y) / 2

        def beyond(edge: float, inner: float) -> float:  # one step past the edge, as far as its neighbour is
            return edge * edge / inner if geometric else 2 * edge - inner

        lo = knob.min if knob.min is not None else -math.inf
        hi = knob.max if knob.max is not None else math.inf
        out = []
        for j in (i - 1, i + 1):
            # known holds the baseline's value and the best (which differ), so an inner neighbour always exists
            value = between(b, known[j]) if 0 <= j < len(known) else beyond(b, known[i + 1] if j < 0 else known[i - 1])
            value = float(f"{value:.3g}")
            if lo <= value <= hi and value not in known:
                out.append(value)
        return out

    # ------------------------------------------------------------ the three scores

    def novelty(self, idea: Idea) -> int:
        return 2 if signature_of(idea) in self.tried_elsewhere else 8

    def feasibility(self, idea: Idea) -> int:
        ratio = 1.0
        if idea.code is not None:
            variant = (getattr(self.spec, "variants", None) or {}).get(idea.code.variant or "")
            # A declared variant says whether it changes the compute; code written from a summary might.
            ratio = VARIANT_COST if variant is None or getattr(variant, "changes_compute", True) else 1.0
        for name, value in idea.changes.items():
            knob = self.spec.knobs[name]
            base = self.base[name]
            if knob.changes_compute and _numeric(knob) and isinstance(base, (int, float)) and base > 0:
                ratio *= max(float(value) / float(base), 0.1)
            elif knob.changes_compute:
                ratio *= VARIANT_COST
        budget = self.spec.profile(self.ctx.profile or None).time_budget_s
        if self.ctx.baseline_wall_s:
            return _clamp(10 * (1 - self.ctx.baseline_wall_s * ratio / budget))
        return _clamp(9 - 2 * math.log2(ratio)) if ratio > 1 else 9

    def interestingness(self, idea: Idea) -> int | None:
        if idea.code is not None:
            if not self.variants:
                return None
            return 7 if any((o.improvement or 0) > 0 for o in self.variants) else 4
        if len(idea.changes) != 1:
            return None
        [(name, value)] = idea.changes.items()
        if name not in self.points:
            return None
        knob = self.spec.knobs[name]
        best, improved = self.best(name)
        if not _numeric(knob):
            return 6 if improved else 3
        known = sorted({float(v) for v in [*self._means(name), *knob.candidates, float(value)]})
        dist = abs(known.index(float(value)) - known.index(float(best)))
        if improved:
            return {1: 9, 2: 7}.get(dist, 5)
        return {1: 5}.get(dist, 3)

    def score(self, idea: Idea) -> Idea:
        return idea.model_copy(update={
            "interestingness": self.interestingness(idea),
            "feasibility": self.feasibility(idea),
            "novelty": self.novelty(idea),
        })


__all__ = ["Scorer", "declared_variants", "int_neighbours"]
