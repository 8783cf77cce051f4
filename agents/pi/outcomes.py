"""What came of each idea, for the PI's next wave and for the idea archive.

After the analysis the outcome of an idea is its comparison in the analyst's
report (corrected p-value, replication). Between waves there is no report
yet, so the PI reads the runs itself: the same two-arm statistics, marked
``source="runs"`` and uncorrected (``p_adjusted`` None), enough to steer the
next wave and never quoted as a finding.
"""

from __future__ import annotations

from typing import Protocol

from agents import stats
from bus.schema import BASELINE, AnalysisReport, ArchiveRecord, Direction, Idea, IdeaOutcome, OutcomeStatus, RunRecord


class Archive(Protocol):
    """The idea archive across projects (``bus.store.IdeaArchive`` in the lab)."""

    async def put(self, record: ArchiveRecord) -> None: ...
    async def records(self, template: str) -> list[ArchiveRecord]: ...


def from_report(idea: Idea, report: AnalysisReport) -> IdeaOutcome | None:
    """The idea's outcome on the primary metric as the report states it; None when the report has no comparison."""
    for c in report.comparisons:
        if c.idea_id == idea.id and c.metric == report.primary_metric:
            return IdeaOutcome(
                idea_id=idea.id, title=idea.title, changes=idea.changes, code=idea.code,
                status=c.verdict, metric=c.metric, improvement=c.improvement, effect_size=c.effect_size,
                ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value, p_adjusted=c.p_adjusted,
                replicated=c.replicated, source="analysis",
            )
    return None


def _values(runs: list[RunRecord], arm: str, metric: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for run in runs:
        if run.idea_id != arm or run.status != "succeeded" or run.final_info is None:
            continue
        stat = run.final_info.metrics.get(metric)
        if stat is None:
            continue
        seeds = run.final_info.seeds if len(run.final_info.seeds) == len(stat.values) else run.seeds
        if len(seeds) == len(stat.values):
            out.update({s: float(v) for s, v in zip(seeds, stat.values, strict=True)})
    return out


def from_runs(idea: Idea, runs: list[RunRecord], metric: str, direction: Direction, alpha: float = 0.05) -> IdeaOutcome | None:
    """An interim outcome read from the runs (exploratory seeds only), before any analysis; None if unmeasurable."""
    b, i = _values(runs, BASELINE, metric), _values(runs, idea.id, metric)
    if len(b) < 2 or len(i) < 2:
        return None
    paired = set(b) == set(i)
    b_vals, i_vals = ([b[s] for s in sorted(b)], [i[s] for s in sorted(b)]) if paired else (list(b.values()), list(i.values()))
    try:
        r = stats.compare(b_vals, i_vals, direction, alpha=alpha, seed=stats.stable_seed(idea.id, metric), paired=paired)
    except stats.StatsError:
        return None
    return IdeaOutcome(
        idea_id=idea.id, title=idea.title, changes=idea.changes, code=idea.code,
        status=r.verdict, metric=metric, improvement=r.improvement, effect_size=r.effect_size,
        ci_low=r.ci_low, ci_high=r.ci_high, p_value=r.p_value, source="runs",
    )


def unmeasured(idea: Idea, status: OutcomeStatus, reason: str = "") -> IdeaOutcome:
    return IdeaOutcome(idea_id=idea.id, title=idea.title, changes=idea.changes, code=idea.code, status=status, reason=reason)
