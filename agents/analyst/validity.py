"""Validity checks the analyst runs before any statistics, each ending in a typed flag.

- not_converged: the primary metric's curve (``Metric.curve``, else the metric's own) was still
  moving at the end of training. "Still moving": over the last ``TAIL`` (20%) of the recorded
  steps, the mean-over-seeds curve changed by more than ``CONVERGENCE_TOL`` (0.5%) of its size,
  ``|v_end - v_80%| / max(|v_end|, |v_80%|)``, with v_80% the last point at or before 80% of
  the way from the first recorded step to the last. A claim about such a run holds for this
  training budget only.
- unstable: a seed's curve of a declared metric reached its best and then collapsed. With a
  declared ``Metric.plateau`` (grokking's val_acc 0.99): the curve reached the plateau and ended
  worse than it by more than ``plateau_tol``. Without one: the seed ended having lost more than
  ``COLLAPSE_FRACTION`` (half) of the gain from its first point to its best.
- hardware metrics: compared only between arms that ran on one node (every run's
  ``JobEnvironment.hostname`` the same and non-empty) at overlapping times (each run's
  environment records ``started_at``, a Unix time, and [started_at, started_at + wall_s] of the
  two arms overlap). Anything else is not established, and the metric is reported descriptively.
- wrong_control: an idea whose changes include another idea's (a variant of a parent) is compared
  with that parent too, not only with the baseline.
- seeds_added: an arm whose exploratory seeds came from more than one experiment had seeds added
  after its earlier seeds were analysed; the alpha is spent over the looks (see the workflow).

The curves are the compact ones experiments write to final_info.json (``curves``:
[step, mean over seeds]; ``seed_curves``: [step, value] per seed), see the templates' ``compact_curves``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bus.schema import AnalysisFlag, RunRecord, TemplateSpec

# 0.5%: char_lm's --fast loss fell 1.1% over its last 20% under a cosine schedule, at 2.43 nats/char where
# the full run reaches ~1.5: a run that tired is still learning, and a claim about it is a claim about its budget.
CONVERGENCE_TOL = 0.005
TAIL = 0.2
COLLAPSE_FRACTION = 0.5

Curve = list[tuple[float, float]]


def _points(raw: Any) -> Curve:
    """[[step, value], ...] as pairs of floats; anything malformed is dropped (a curve is optional evidence)."""
    out: Curve = []
    for p in raw if isinstance(raw, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p):
            out.append((float(p[0]), float(p[1])))
    return sorted(out)


def mean_curve(run: RunRecord, name: str) -> Curve:
    extra = (run.final_info.model_extra or {}) if run.final_info is not None else {}
    curves = extra.get("curves")
    return _points(curves.get(name)) if isinstance(curves, dict) else []


def seed_curves(run: RunRecord, name: str) -> dict[str, Curve]:
    extra = (run.final_info.model_extra or {}) if run.final_info is not None else {}
    per = extra.get("seed_curves")
    by_seed = per.get(name) if isinstance(per, dict) else None
    if not isinstance(by_seed, dict):
        return {}
    return {str(seed): c for seed, raw in by_seed.items() if (c := _points(raw))}


def tail_change(curve: Curve) -> float | None:
    """The relative change over the last ``TAIL`` of the recorded steps, or None when the curve is too short to tell."""
    if len(curve) < 3 or curve[-1][0] <= curve[0][0]:
        return None
    cut = curve[-1][0] - TAIL * (curve[-1][0] - curve[0][0])
    before = [v for s, v in curve if s <= cut]
    if not before:
        return None
    start, end = before[-1], curve[-1][1]
    scale = max(abs(start), abs(end))
    return 0.0 if scale == 0.0 else abs(end - start) / scale


def convergence_flags(runs: Iterable[RunRecord], spec: TemplateSpec) -> list[AnalysisFlag]:
    """A not_converged flag for each run whose primary metric's curve was still moving at the end."""
    primary = spec.primary_metric
    name = spec.metrics[primary].curve or primary
    out = []
    for run in runs:
        curve = mean_curve(run, name)
        change = tail_change(curve)
        if change is not None and change > CONVERGENCE_TOL:
            out.append(AnalysisFlag(
                kind="not_converged", idea_id=run.idea_id, job_id=run.job_id, metric=name,
                detail=f"run {run.job_id} (idea {run.idea_id!r}): {name} moved {change:.1%} over the last {TAIL:.0%} of training "
                f"(to {curve[-1][1]:.4g} at step {curve[-1][0]:g}; above {CONVERGENCE_TOL:.0%}), so claims about {primary} "
                "hold for this training budget only, not for a trained model",
            ))
    return out


def _collapse(curve: Curve, higher: bool, plateau: float | None, tol: float) -> str | None:
    """Why this seed's curve collapsed, or None."""
    s = 1.0 if higher else -1.0
    best_step, best = max(curve, key=lambda p: s * p[1])
    final = curve[-1][1]
    if plateau is not None:
        reached = next((st for st, v in curve if s * (v - plateau) >= 0), None)
        if reached is not None and s * (plateau - final) > tol:
            return f"reached {plateau:g} at step {reached:g} (best {best:.4g} at step {best_step:g}) and ended at {final:.4g}"
        return None
    gain, lost = s * (best - curve[0][1]), s * (best - final)
    if gain > 0 and lost > COLLAPSE_FRACTION * gain:
        return f"reached its best {best:.4g} at step {best_step:g} and ended at {final:.4g}, losing {lost / gain:.0%} of its gain"
    return None


def unstable_flags(runs: Iterable[RunRecord], spec: TemplateSpec) -> list[AnalysisFlag]:
    """An unstable flag for each seed whose curve of a declared metric reached its best (or plateau) and then collapsed."""
    out = []
    for run in runs:
        for metric, m in spec.metrics.items():
            for seed, curve in seed_curves(run, metric).items():
                why = _collapse(curve, m.direction == "higher", m.plateau, m.plateau_tol)
                if why is None:
                    continue
                out.append(AnalysisFlag(
                    kind="unstable", idea_id=run.idea_id, job_id=run.job_id, metric=metric,
                    seed=int(seed) if seed.lstrip("-").isdigit() else None,
                    detail=f"run {run.job_id} (idea {run.idea_id!r}) seed {seed}: {metric} {why}; a final value or a "
                    "first-reached step from this run describes a collapse, not a stable result",
                ))
    return out


def _started(run: RunRecord) -> float | None:
    extra = (run.environment.model_extra or {}) if run.environment is not None else {}
    t = extra.get("started_at")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def same_node_overlapping(a: list[RunRecord], b: list[RunRecord]) -> bool:
    """Whether two arms' runs ran on one node at overlapping times (see the module docstring); False when unknown."""
    runs = a + b
    hosts = {r.environment.hostname if r.environment is not None else "" for r in runs}
    if not a or not b or len(hosts) != 1 or "" in hosts:
        return False
    starts = [_started(r) for r in runs]
    if any(t is None for t in starts):
        return False
    span = {id(r): (t, t + r.wall_s) for r, t in zip(runs, starts, strict=True) if t is not None}
    a_lo, a_hi = min(span[id(r)][0] for r in a), max(span[id(r)][1] for r in a)
    b_lo, b_hi = min(span[id(r)][0] for r in b), max(span[id(r)][1] for r in b)
    return a_lo < b_hi and b_lo < a_hi


def parents(changes: dict[str, frozenset[tuple[str, str]]], exclude: set[str]) -> dict[str, str]:
    """Each idea's parent: the idea whose (non-empty) changes are the largest strict subset of its own.

    ``changes``: per idea, what it changes off the baseline (knob=value pairs, and its code diff).
    Ideas in ``exclude`` (the baseline, the positive control) are nobody's parent. Ties go to the first seen.
    """
    out = {}
    for idea, mine in changes.items():
        if idea in exclude:
            continue
        candidates = [(len(c), p) for p, c in changes.items() if p != idea and p not in exclude and c and c < mine]
        if candidates:
            best = max(n for n, _ in candidates)
            out[idea] = next(p for n, p in candidates if n == best)
    return out
