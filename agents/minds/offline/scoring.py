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


def _clamp(x: float) -> int:
    return max(1, min(10, int(round(x))))


def _numeric(knob: Knob) -> bool:
    return knob.type in ("float", "int")


class Scorer:
    def __init__(self, ctx: IdeaContext):
        self.ctx = ctx
        self.spec = ctx.spec
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
        knob = self.spec.knobs[name]
        base = self.spec.baseline.get(name, knob.default)
        means = {v: sum(xs) / len(xs) for v, xs in self.points.get(name, {}).items()}
        means.setdefault(base, 0.0)  # the baseline is the reference point: improvement 0
        return means

    def best(self, name: str) -> tuple[Any, bool]:
        """The best value of a knob so far, and whether it beat the baseline."""
        means = self._means(name)
        knob = self.spec.knobs[name]
        base = self.spec.baseline.get(name, knob.default)
        value = max(means, key=lambda v: (means[v], v == base))
        return value, means[value] > 0

    def refinements(self, name: str, knob: Knob, base: Any) -> list[Any]:
        """Float values halfway between the best value so far and its nearest known neighbours, once it beat the baseline."""
        if knob.type != "float" or name not in self.points:
            return []
        best, improved = self.best(name)
        if not improved:
            return []
        known = sorted({float(v) for v in [*self._means(name), *knob.candidates, base]})
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
            base = self.spec.baseline.get(name, knob.default)
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


__all__ = ["Scorer", "declared_variants"]
