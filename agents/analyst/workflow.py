"""The analyst: compares every idea with the baseline over seeds, with each metric's direction.

Runs of the same idea are pooled by seed (a later run with more seeds adds to
an earlier one; a seed run twice keeps the later value), so a revision that
asks for more seeds sharpens the same comparison instead of starting a new one.

Flags are typed (``bus.schema.AnalysisFlag``): a kind, the arm, run, metric
and seed counts they are about, and a readable detail; the writer and reviewer
act on the fields, and people read ``flag.text`` (the kind's prefix, such as
``too few seeds:``, then the detail).

p-values are corrected over every comparison of the report (Holm by default,
named in ``AnalysisReport.correction``), and the verdicts use the corrected
values; arms that ran the same seeds are compared by a paired test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agents import stats
from agents.analyst.figures import Bar, bar_chart, figure_name
from agents.base import Context, EmptyState, Role, on
from agents.minds.base import AnalystMind
from bus.schema import (
    BASELINE,
    MIN_SEEDS,
    AnalysisDone,
    AnalysisFlag,
    AnalysisReport,
    AnalysisRequest,
    Comparison,
    Direction,
    Envelope,
    Knob,
    RunRecord,
    StepFailed,
    TemplateSpec,
)

ALPHA = 0.05
AnalystContext = Context[EmptyState, AnalystMind]


@dataclass
class Arm:
    """One idea's pooled per-seed values: metric -> seed -> value."""

    values: dict[str, dict[Any, float]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def n(self, metric: str) -> int:
        return len(self.values.get(metric, {}))

    def list(self, metric: str) -> list[float]:
        return list(self.values.get(metric, {}).values())


def metric_directions(spec: TemplateSpec) -> tuple[dict[str, Direction], str]:
    """Each metric's better direction, and the primary metric (the spec guarantees exactly one)."""
    return {name: m.direction for name, m in spec.metrics.items()}, spec.primary_metric


def pool(runs: list[RunRecord], flags: list[AnalysisFlag]) -> dict[str, Arm]:
    """Successful runs grouped by idea in first-seen order; failures become flags."""
    arms: dict[str, Arm] = {}
    for run in runs:
        if run.status == "failed":
            flags.append(AnalysisFlag(kind="failed_run", job_id=run.job_id, idea_id=run.idea_id,
                                      detail=f"{run.job_id} (idea {run.idea_id!r}): {run.reason or 'no reason recorded'}"))
            continue
        if run.final_info is None:
            flags.append(AnalysisFlag(kind="failed_run", job_id=run.job_id, idea_id=run.idea_id,
                                      detail=f"{run.job_id} (idea {run.idea_id!r}): succeeded but wrote no final_info; ignored"))
            continue
        arm = arms.setdefault(run.idea_id, Arm())
        arm.overrides.update(run.overrides)
        fi = run.final_info
        for metric, stat in fi.metrics.items():
            slot = arm.values.setdefault(metric, {})
            if not stat.values:
                flags.append(AnalysisFlag(kind="no_per_seed_values", job_id=run.job_id, idea_id=run.idea_id, metric=metric,
                                          detail=f"run {run.job_id} reported only a mean for {metric!r}; it counts as one observation"))
                slot[("mean", run.job_id)] = stat.mean
                continue
            seeds: list[Any] = fi.seeds if len(fi.seeds) == len(stat.values) else run.seeds
            if len(seeds) != len(stat.values):
                seeds = [("index", run.job_id, k) for k in range(len(stat.values))]
            for seed, value in zip(seeds, stat.values, strict=True):
                if seed in slot and metric == next(iter(fi.metrics)):
                    flags.append(AnalysisFlag(kind="duplicate_seed", job_id=run.job_id, idea_id=run.idea_id,
                                              detail=f"idea {run.idea_id!r} seed {seed} ran again in {run.job_id}; kept the later value"))
                slot[seed] = float(value)
    return arms


def baseline_config(spec: TemplateSpec, arm: Arm | None) -> dict[str, Any]:
    config = {**spec.defaults(), **spec.baseline}
    if arm is not None:
        config.update(arm.overrides)
    return config


def _changed_knobs(spec: TemplateSpec, arms: dict[str, Arm]) -> Iterator[tuple[str, str, Knob | None, Any, Any]]:
    """(idea, knob, the knob's spec if declared, baseline value, idea value) for every knob an idea moves off the baseline."""
    knobs = spec.knobs
    base = baseline_config(spec, arms.get(BASELINE))
    for idea, arm in arms.items():
        if idea == BASELINE:
            continue
        for k, v in arm.overrides.items():
            if v != base.get(k):
                yield idea, k, knobs.get(k), base.get(k), v


def fairness_flags(spec: TemplateSpec, arms: dict[str, Arm]) -> list[AnalysisFlag]:
    return [
        AnalysisFlag(
            kind="unfair_baseline", idea_id=idea,
            detail=f"idea {idea!r} changes the fairness knob {k!r} "
            f"(baseline {was!r}, idea {v!r}), so the arms differ in compute or data, not only in method",
        )
        for idea, k, knob, was, v in _changed_knobs(spec, arms)
        if knob is not None and knob.fairness
    ]


def compute_flags(spec: TemplateSpec, arms: dict[str, Arm]) -> list[AnalysisFlag]:
    """Ideas that change a knob marked ``changes_compute`` (and not already flagged unfair): their arm spends different compute."""
    return [
        AnalysisFlag(
            kind="compute_changed", idea_id=idea,
            detail=f"idea {idea!r} changes {k!r} (baseline {was!r}, idea {v!r}), which changes the "
            "compute per run, so the comparison is not at equal compute and no claim may say it was",
        )
        for idea, k, knob, was, v in _changed_knobs(spec, arms)
        if knob is not None and knob.changes_compute and not knob.fairness
    ]


def recorded_compute(runs: list[RunRecord]) -> dict[str, dict[str, float]]:
    """Each arm's compute per run as its experiment recorded it (final_info.json ``compute``), from its latest successful run."""
    out: dict[str, dict[str, float]] = {}
    for run in runs:
        if run.status == "succeeded" and run.final_info is not None and run.final_info.compute:
            out[run.idea_id] = dict(run.final_info.compute)
    return out


def recorded_compute_flags(runs: list[RunRecord], already: list[AnalysisFlag]) -> list[AnalysisFlag]:
    """Ideas whose runs recorded a different compute than the baseline's: a code change that spends more (or less) is
    flagged like a ``changes_compute`` knob, since no knob declaration can tell for code.

    Only measures both arms record are compared; an idea already flagged for a knob is not flagged twice.
    """
    compute = recorded_compute(runs)
    base = compute.get(BASELINE)
    if base is None:
        return []
    flagged = {f.idea_id for f in already if f.kind in ("compute_changed", "unfair_baseline")}
    out = []
    for idea, used in compute.items():
        if idea == BASELINE or idea in flagged:
            continue
        differ = [k for k in sorted(set(base) & set(used)) if not math.isclose(base[k], used[k], rel_tol=1e-9, abs_tol=1e-12)]
        if differ:
            what = "; ".join(f"{k}: baseline {base[k]:g}, idea {used[k]:g}" for k in differ)
            out.append(AnalysisFlag(
                kind="compute_changed", idea_id=idea,
                detail=f"idea {idea!r} recorded different compute per run than the baseline ({what}), so the comparison "
                "is not at equal compute and no claim may say it was",
            ))
    return out


def seed_flags(arms: dict[str, Arm], primary: str) -> list[AnalysisFlag]:
    out = []
    for idea, arm in arms.items():
        n = arm.n(primary)
        if n < MIN_SEEDS:
            out.append(AnalysisFlag(kind="too_few_seeds", idea_id=idea, metric=primary, seeds=n, required_seeds=MIN_SEEDS,
                                    detail=f"{idea!r} has {n} seed(s) for {primary!r}; at least {MIN_SEEDS} are needed"))
    base = arms.get(BASELINE)
    if base is not None:
        for idea, arm in arms.items():
            b, n = base.n(primary), arm.n(primary)
            if idea != BASELINE and b < n:
                out.append(AnalysisFlag(kind="baseline_fewer_seeds", idea_id=idea, metric=primary, seeds=n, baseline_seeds=b,
                                        detail=f"baseline {b} vs idea {idea!r} {n} for {primary!r}"))
    return out


def paired_values(base: Arm, arm: Arm, metric: str) -> tuple[list[float], list[float]] | None:
    """Both arms' values in one seed order when they ran exactly the same real seeds, else None.

    Only integer seeds pair: a mean-only run or a run whose seeds were not
    recorded is keyed by a tuple, and cannot be matched with the other arm.
    """
    b, i = base.values.get(metric, {}), arm.values.get(metric, {})
    if len(b) < 2 or set(b) != set(i) or not all(isinstance(s, int) for s in b):
        return None
    seeds = sorted(b)
    return [b[s] for s in seeds], [i[s] for s in seeds]


def correct(comparisons: list[Comparison], alpha: float, method: str) -> None:
    """Set every comparison's corrected p-value and verdict, over the whole family at once."""
    raw = [c.p_value for c in comparisons]
    adjusted = stats.holm(raw) if method == "holm" else raw
    for c, p in zip(comparisons, adjusted, strict=True):
        c.p_adjusted = p
        c.verdict = stats.verdict_of(c.improvement, p, alpha)
        c.better = c.verdict == "better"


def compare_arms(arms: dict[str, Arm], directions: dict[str, Direction], alpha: float, correction: str = "holm") -> list[Comparison]:
    """Every idea against the baseline on every metric, then corrected as one family.

    The family is everything the paper reports (all ideas x all metrics), so a
    p = 0.03 among ten comparisons is not a finding.
    """
    base = arms[BASELINE]
    out = []
    for idea, arm in arms.items():
        if idea == BASELINE:
            continue
        for metric, direction in directions.items():
            if not base.n(metric) or not arm.n(metric):
                continue
            pair = paired_values(base, arm, metric)
            b_vals, i_vals = pair if pair else (base.list(metric), arm.list(metric))
            r = stats.compare(b_vals, i_vals, direction, alpha=alpha, seed=stats.stable_seed(idea, metric), paired=pair is not None)
            out.append(
                Comparison(
                    idea_id=idea, metric=metric, direction=direction,
                    baseline_mean=r.baseline.mean, baseline_stderr=r.baseline.stderr,
                    idea_mean=r.idea.mean, idea_stderr=r.idea.stderr,
                    n_baseline=r.baseline.n, n_idea=r.idea.n,
                    diff=r.diff, improvement=r.improvement, ci_low=r.ci_low, ci_high=r.ci_high,
                    p_value=r.p_value, effect_size=r.effect_size, better=r.better, verdict=r.verdict, test=r.test,
                )
            )
    correct(out, alpha, correction)
    return out


def confirm(report: AnalysisReport, runs: list[RunRecord], directions: dict[str, Direction], flags: list[AnalysisFlag], alpha: float) -> None:
    """Compare the confirmation runs (fresh seeds) on the primary metric and mark each idea's primary comparison.

    An exploratory "better" or "worse" is replicated when the confirmation, corrected
    over its own family, reaches the same verdict; anything else is not replicated.
    """
    if not runs:
        return
    arms = pool(runs, flags)
    if BASELINE not in arms:
        flags.append(AnalysisFlag(kind="confirmation_without_baseline", detail="no successful baseline confirmation run, so nothing was confirmed"))
        return
    primary = report.primary_metric
    confirmations = [c for c in compare_arms(arms, {primary: directions[primary]}, alpha, report.correction)]
    report.confirmations = confirmations
    found = {c.idea_id: c for c in confirmations}
    for c in report.comparisons:
        if c.metric == primary and c.idea_id in found:
            c.replicated = c.verdict != "inconclusive" and found[c.idea_id].verdict == c.verdict


def build_report(project: str, request: AnalysisRequest, alpha: float = ALPHA) -> tuple[AnalysisReport, dict[str, Arm]]:
    """The report without figures or summary (those need the store and the mind)."""
    directions, primary = metric_directions(request.spec)
    flags: list[AnalysisFlag] = []
    confirming = set(request.confirmation)
    exploratory = [r for r in request.runs if r.experiment_id not in confirming]
    arms = pool(exploratory, flags)
    comparisons: list[Comparison] = []
    if BASELINE in arms:
        comparisons = compare_arms(arms, directions, alpha)
        flags += [
            AnalysisFlag(
                kind="zero_variance", idea_id=c.idea_id, metric=c.metric,
                detail=f"every seed of {c.idea_id!r} and of the baseline gave the same {c.metric!r}; "
                f"p = {c.p_value:g} and Hedges' g = {c.effect_size:g} by convention, not from a test",
            )
            for c in comparisons
            if c.baseline_stderr == 0.0 and c.idea_stderr == 0.0 and c.n_baseline > 1 and c.n_idea > 1
        ]
    else:
        flags.insert(0, AnalysisFlag(kind="missing_baseline", detail="no successful baseline run, so no idea could be compared"))
    flags += fairness_flags(request.spec, arms) + compute_flags(request.spec, arms)
    flags += recorded_compute_flags(exploratory, flags) + seed_flags(arms, primary)
    report = AnalysisReport(
        project=project, round=request.round, primary_metric=primary, alpha=alpha, correction="holm",
        comparisons=comparisons, runs=request.runs, flags=flags,
    )
    confirm(report, [r for r in request.runs if r.experiment_id in confirming], directions, report.flags, alpha)
    return report, arms


async def draw_figures(ctx: AnalystContext, report: AnalysisReport, arms: dict[str, Arm], directions: dict[str, Direction]) -> list[str]:
    names = []
    for metric, direction in directions.items():
        by_idea = {c.idea_id: c for c in report.comparisons if c.metric == metric}
        bars = []
        for idea, arm in arms.items():
            if not arm.n(metric):
                continue
            s = stats.summarize(arm.list(metric))
            c = by_idea.get(idea)
            bars.append(Bar(idea, s.mean, s.stderr, s.n, None if idea == BASELINE else (c.p_value if c else None), c.verdict if c else ""))
        if bars:
            names.append(await ctx.artifacts.put(figure_name(report.project, report.round, metric), bar_chart(metric, direction, bars)))
    return names


class Analyst(Role):
    name = "analyst"

    @on(AnalysisRequest)
    async def analyse(self, body: AnalysisRequest, env: Envelope, ctx: AnalystContext) -> None:
        directions, _ = metric_directions(body.spec)
        try:
            report, arms = build_report(ctx.project, body)
        except stats.StatsError as e:
            ctx.log.warning("analysis_failed", reason=str(e))
            ctx.send(StepFailed(step="analysis", reason=str(e), ref=body.ref), to="pi")
            return
        report.figures = await draw_figures(ctx, report, arms, directions)
        report.summary = await ctx.mind.summarize(report)
        ctx.log.info("analysis_done", comparisons=len(report.comparisons), flags=len(report.flags), figures=len(report.figures))
        ctx.send(AnalysisDone(report=report), to="pi")


ROLE = Analyst
