"""The analyst: compares every idea with the baseline over seeds, with each metric's direction.

Runs of the same idea are pooled by seed (a later run with more seeds adds to
an earlier one; a seed run twice keeps the later value), so a revision that
asks for more seeds sharpens the same comparison instead of starting a new one.

Flags are typed (``bus.schema.AnalysisFlag``): a kind, the arm, run, metric
and seed counts they are about, and a readable detail; the writer and reviewer
act on the fields, and people read ``flag.text`` (the kind's prefix, such as
``too few seeds:``, then the detail).

Before any statistics, validity checks (``agents.analyst.validity``) flag runs
whose primary metric had not settled (not_converged) and seeds whose curves
collapsed (unstable). Each metric's kind (``Metric.kind``) decides whether it is
tested: outcomes are; hardware metrics only between arms that ran on one node at
overlapping times; derived and fixed metrics never (``AnalysisReport.descriptive``).

Tests come in two families, each Holm-corrected on its own: the primary metric's
(the headline) and the other outcomes' (secondary). Arms that ran the same seeds
are compared by a paired t-test (effect size d_z), others by Welch's (Hedges' g);
each interval is the test's own t-interval at the level its corrected verdict was
decided at, so it excludes zero exactly when the verdict is significant. A variant
of another idea is compared with that parent too (control=<parent>). The positive
control ("positive-control") is its own test: if it does not differ from the
baseline, conclusions are withheld. An arm whose seeds were added after a look
has its alpha spent over the looks (Bonferroni: p x looks), so peeking cannot
manufacture a finding; a fresh-seed confirmation remains the clean test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from agents import stats
from agents.analyst import validity
from agents.analyst.figures import bar_chart, figure_name
from agents.base import Context, EmptyState, Role, on
from agents.minds.base import AnalystMind
from agents.plotting import Bar
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
from bus.schema.analysis import Descriptive, SeedPlan

ALPHA = 0.05  # the default; a template's alpha (TemplateSpec.alpha) decides
POSITIVE_CONTROL = "positive-control"  # the idea id the PI runs the template's positive_control under
MDE_FRACTION = 0.1  # the smallest effect a seed plan is powered for, as a fraction of the baseline's mean, unless declared
POWER = 0.8
Family = Literal["primary", "secondary"]
AnalystContext = Context[EmptyState, AnalystMind]


@dataclass
class Arm:
    """One idea's pooled per-seed values: metric -> seed -> value."""

    values: dict[str, dict[Any, float]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)  # the successful runs pooled here
    # The experiments that brought new seeds, first seen first: more than one means seeds were added after a look.
    experiments: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # the seeds its runs ran
    diffs: set[str] = field(default_factory=set)  # the code edits its runs made ("" never: knob-only runs add nothing)

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
        arm.runs.append(run)
        # A later experiment that brings seeds the arm has not had is a new look (a rerun of the same seeds is not).
        if run.experiment_id not in arm.experiments and not set(run.final_info.seeds or run.seeds) <= arm.seen:
            arm.experiments.append(run.experiment_id)
        arm.seen |= set(run.final_info.seeds or run.seeds)
        if run.diff:
            arm.diffs.add(run.diff)
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
        if idea in (BASELINE, POSITIVE_CONTROL):  # the positive control differs on purpose
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
        if idea in (BASELINE, POSITIVE_CONTROL) or idea in flagged:
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


@dataclass
class Pending:
    """A comparison with the values it came from, so its interval can be redrawn at its corrected level."""

    comparison: Comparison
    control: list[float]
    idea: list[float]
    paired: bool
    looks: int = 1


def pair(idea: str, control: str, arms: dict[str, Arm], metric: str, direction: Direction,
         alpha: float, family: Family, looks: int = 1) -> Pending | None:
    """One idea against one control arm on one metric, before correction (None when either arm lacks the metric)."""
    base, arm = arms[control], arms[idea]
    if not base.n(metric) or not arm.n(metric):
        return None
    paired = paired_values(base, arm, metric)
    b_vals, i_vals = paired if paired else (base.list(metric), arm.list(metric))
    r = stats.compare(b_vals, i_vals, direction, alpha=alpha, paired=paired is not None)
    c = Comparison(
        idea_id=idea, metric=metric, direction=direction,
        baseline_mean=r.baseline.mean, baseline_stderr=r.baseline.stderr,
        idea_mean=r.idea.mean, idea_stderr=r.idea.stderr,
        n_baseline=r.baseline.n, n_idea=r.idea.n,
        diff=r.diff, improvement=r.improvement, ci_low=r.ci_low, ci_high=r.ci_high,
        p_value=r.p_value, effect_size=r.effect_size, better=r.better, verdict=r.verdict, test=r.test,
        family=family, effect_kind=r.effect_kind, control=control, ci_level=1.0 - alpha, looks=looks,
    )
    return Pending(c, b_vals, i_vals, paired is not None, looks)


def correct(family: list[Pending], alpha: float, method: str) -> None:
    """Correct one family at once: verdicts from the corrected p, intervals at the level each verdict was decided at.

    Alpha is first spent over the looks at an arm (p x looks, Bonferroni), then
    Holm runs over the family; each interval is the test's own t-interval at
    the Holm step's level (``stats.holm_levels``) divided by the looks, so it
    excludes zero exactly when the corrected p is below alpha.
    """
    spent = [min(1.0, pd.comparison.p_value * pd.looks) for pd in family]
    adjusted = stats.holm(spent) if method == "holm" else spent
    levels = stats.holm_levels(spent, alpha) if method == "holm" else [alpha] * len(spent)
    for pd, p, level in zip(family, adjusted, levels, strict=True):
        c = pd.comparison
        c.p_adjusted = p
        c.verdict = stats.verdict_of(c.improvement, p, alpha)
        c.better = c.verdict == "better"
        c.ci_low, c.ci_high = stats.t_interval(pd.control, pd.idea, c.direction, alpha=level / pd.looks, paired=pd.paired)
        c.ci_level = 1.0 - level / pd.looks


def arm_changes(spec: TemplateSpec, arms: dict[str, Arm]) -> dict[str, frozenset[tuple[str, str]]]:
    """What each arm changes off the baseline: knob=value pairs, and its code diff (how a variant's parent is found)."""
    base = baseline_config(spec, arms.get(BASELINE))
    return {
        idea: frozenset({(k, repr(v)) for k, v in arm.overrides.items() if v != base.get(k)} | {("code", d) for d in arm.diffs})
        for idea, arm in arms.items()
    }


def tested(spec: TemplateSpec, metric: str, arms: dict[str, Arm], idea: str, control: str) -> bool:
    """Whether this metric is tested for this pair: outcomes always, hardware only on one node at overlapping times."""
    kind = spec.metrics[metric].kind
    return kind == "outcome" or (kind == "hardware" and validity.same_node_overlapping(arms[control].runs, arms[idea].runs))


def compare_ideas(spec: TemplateSpec, arms: dict[str, Arm], alpha: float, flags: list[AnalysisFlag]) -> list[Pending]:
    """Every idea against the baseline, and a variant against its parent too, on every metric that may be tested.

    The positive control is in no family (it is checked on its own); hardware
    metrics are tested only for pairs that ran on one node at overlapping times;
    derived and fixed metrics never (they are reported descriptively).
    """
    directions, primary = metric_directions(spec)
    parent_of = validity.parents(arm_changes(spec, arms), {BASELINE, POSITIVE_CONTROL})
    out = []
    for idea, arm in arms.items():
        if idea in (BASELINE, POSITIVE_CONTROL):
            continue
        looks = max(1, len(arm.experiments))
        controls = [BASELINE] + ([parent_of[idea]] if idea in parent_of else [])
        for control in controls:
            for metric, direction in directions.items():
                if not tested(spec, metric, arms, idea, control):
                    continue
                family: Family = "primary" if metric == primary else "secondary"
                if (pd := pair(idea, control, arms, metric, direction, alpha, family, looks)) is not None:
                    out.append(pd)
    for idea, parent in parent_of.items():
        flags.append(AnalysisFlag(
            kind="wrong_control", idea_id=idea, control=parent,
            detail=f"idea {idea!r} is a variant of idea {parent!r} (it makes all of its changes and more), so its comparison "
            f"with the baseline measures both changes together; its own effect is its comparison with {parent!r} (control {parent!r})",
        ))
    return out


def describe_untested(spec: TemplateSpec, arms: dict[str, Arm], tested_pairs: set[tuple[str, str]], flags: list[AnalysisFlag]) -> list[Descriptive]:
    """Per-arm rows for every metric that is not tested (for some pair): hardware, derived and fixed metrics."""
    rows: list[Descriptive] = []
    for metric, m in spec.metrics.items():
        if m.kind == "outcome":
            continue
        ideas = [i for i in arms if i not in (BASELINE, POSITIVE_CONTROL) and arms[i].n(metric)]
        if m.kind == "hardware" and all((i, metric) in tested_pairs for i in ideas):
            continue
        reason = {
            "hardware": "it depends on the machine and its load, and the arms did not run on one node at overlapping "
            "times (or that was not recorded), so a difference would measure the machines, not the method",
            "derived": f"it is computed from {', '.join(m.derived_from)}, which are tested (or reported) themselves",
            "fixed": "it is the same in every arm by construction, so there is nothing to test",
        }[m.kind]
        for idea, arm in arms.items():
            if arm.n(metric):
                s = stats.summarize(arm.list(metric))
                rows.append(Descriptive(idea_id=idea, metric=metric, mean=s.mean, stderr=s.stderr, n=s.n, reason=reason))
        if m.kind == "hardware":
            flags.append(AnalysisFlag(kind="hardware_metric", metric=metric,
                                      detail=f"{metric!r} is reported per arm and kept out of every test family: {reason}"))
    return rows


def check_positive_control(report: AnalysisReport, spec: TemplateSpec, arms: dict[str, Arm], alpha: float) -> None:
    """The positive control against the baseline on the primary metric, as its own test: no difference withholds conclusions."""
    primary = spec.primary_metric
    if POSITIVE_CONTROL not in arms:
        return
    pd = pair(POSITIVE_CONTROL, BASELINE, arms, primary, spec.metrics[primary].direction, alpha, "primary")
    if pd is not None:
        correct([pd], alpha, "none")
        report.positive_control = pd.comparison
    if pd is None or pd.comparison.verdict == "inconclusive":
        p = f"p = {pd.comparison.p_value:.3g}" if pd else "no values"
        report.flags.append(AnalysisFlag(
            kind="no_separation", idea_id=POSITIVE_CONTROL, metric=primary,
            detail=f"the positive control (a setting known to differ) did not differ from the baseline on {primary!r} ({p}, alpha {alpha:g}), "
            "so this testbed cannot tell settings apart here: every verdict is computed but no conclusion is drawn from it",
        ))
        report.conclusions_withheld = True


def seed_plan(spec: TemplateSpec, arms: dict[str, Arm], alpha: float, family_size: int) -> SeedPlan | None:
    """Seeds per arm for power 0.8 against the declared (or default) smallest effect, from the baseline's spread.

    Planned at alpha / family_size, the level the smallest p of the primary
    family is tested at under Holm (a Bonferroni-safe plan); None when the
    baseline has fewer than 2 values or no effect size can be stated.
    """
    primary = spec.primary_metric
    values = arms[BASELINE].list(primary)
    if len(values) < 2:
        return None
    sd = float(np.std(values, ddof=1))
    mde = spec.metrics[primary].min_effect or MDE_FRACTION * abs(float(np.mean(values)))
    if mde <= 0:
        return None
    level = alpha / max(1, family_size)
    n = stats.sample_size(sd, mde, alpha=level, power=POWER)
    return SeedPlan(metric=primary, baseline_sd=sd, min_detectable_effect=mde, power=POWER, alpha=level, seeds=max(spec.seeds, n))


def seeds_added_flags(arms: dict[str, Arm], primary: str) -> list[AnalysisFlag]:
    return [
        AnalysisFlag(
            kind="seeds_added", idea_id=idea, metric=primary, seeds=arm.n(primary),
            detail=f"idea {idea!r} ran its seeds in {len(arm.experiments)} experiments ({', '.join(arm.experiments)}): seeds were added "
            f"after the earlier ones were analysed, so its alpha is spent over the {len(arm.experiments)} looks (each p x "
            f"{len(arm.experiments)} before the family's correction, intervals to match); a fresh-seed confirmation is the clean test",
        )
        for idea, arm in arms.items()
        if idea not in (BASELINE, POSITIVE_CONTROL) and len(arm.experiments) > 1
    ]


def analyse(report: AnalysisReport, spec: TemplateSpec, arms: dict[str, Arm], alpha: float) -> None:
    """Comparisons in their families, descriptive rows, the positive control, the seed plan and their flags."""
    pending = compare_ideas(spec, arms, alpha, report.flags)
    for family in ("primary", "secondary"):
        correct([pd for pd in pending if pd.comparison.family == family], alpha, report.correction)
    report.comparisons = [pd.comparison for pd in pending]
    tested_pairs = {(c.idea_id, c.metric) for c in report.comparisons}
    report.descriptive = describe_untested(spec, arms, tested_pairs, report.flags)
    check_positive_control(report, spec, arms, alpha)
    n_primary = sum(1 for c in report.comparisons if c.family == "primary")
    report.seed_plan = seed_plan(spec, arms, alpha, n_primary)
    report.flags += seeds_added_flags(arms, spec.primary_metric)
    report.flags += [
        AnalysisFlag(
            kind="zero_variance", idea_id=c.idea_id, metric=c.metric,
            detail=f"every seed of {c.idea_id!r} and of the baseline gave the same {c.metric!r}; "
            f"p = {c.p_value:g} and the effect size = {c.effect_size:g} by convention, not from a test",
        )
        for c in report.comparisons
        if c.baseline_stderr == 0.0 and c.idea_stderr == 0.0 and c.n_baseline > 1 and c.n_idea > 1
    ]


def confirm(report: AnalysisReport, runs: list[RunRecord], spec: TemplateSpec, flags: list[AnalysisFlag], alpha: float) -> None:
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
    direction = spec.metrics[primary].direction
    family = [pd for idea in arms if idea not in (BASELINE, POSITIVE_CONTROL)
              if (pd := pair(idea, BASELINE, arms, primary, direction, alpha, "primary")) is not None]
    correct(family, alpha, report.correction)
    report.confirmations = [pd.comparison for pd in family]
    found = {c.idea_id: c for c in report.confirmations}
    for c in report.comparisons:
        if c.metric == primary and c.control == BASELINE and c.idea_id in found:
            c.replicated = c.verdict != "inconclusive" and found[c.idea_id].verdict == c.verdict


def build_report(project: str, request: AnalysisRequest, alpha: float | None = None) -> tuple[AnalysisReport, dict[str, Arm]]:
    """The report without figures or summary (those need the store and the mind); ``alpha``: the template's unless given."""
    spec = request.spec
    alpha = spec.alpha if alpha is None else alpha
    flags: list[AnalysisFlag] = []
    confirming = set(request.confirmation)
    exploratory = [r for r in request.runs if r.experiment_id not in confirming]
    arms = pool(exploratory, flags)
    measured = [r for arm in arms.values() for r in arm.runs]
    flags += validity.convergence_flags(measured, spec) + validity.unstable_flags(measured, spec)
    report = AnalysisReport(
        project=project, round=request.round, primary_metric=spec.primary_metric, alpha=alpha, correction="holm",
        comparisons=[], runs=request.runs, flags=flags,
    )
    if BASELINE in arms:
        analyse(report, spec, arms, alpha)
    else:
        report.flags.insert(0, AnalysisFlag(kind="missing_baseline", detail="no successful baseline run, so no idea could be compared"))
    report.flags += fairness_flags(spec, arms) + compute_flags(spec, arms)
    report.flags += recorded_compute_flags(exploratory, report.flags) + seed_flags(arms, spec.primary_metric)
    confirm(report, [r for r in request.runs if r.experiment_id in confirming], spec, report.flags, alpha)
    return report, arms


async def draw_figures(ctx: AnalystContext, report: AnalysisReport, arms: dict[str, Arm], directions: dict[str, Direction]) -> list[str]:
    names = []
    for metric, direction in directions.items():
        by_idea = {c.idea_id: c for c in report.comparisons if c.metric == metric and c.control == BASELINE}
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
