"""The analyst's report: comparisons against the baseline, corrected p-values, typed flags."""

from __future__ import annotations

from typing import Literal

from bus.schema.base import Direction, Model
from bus.schema.results import RunRecord


class Comparison(Model):
    idea_id: str
    metric: str
    direction: Direction
    baseline_mean: float
    baseline_stderr: float
    idea_mean: float
    idea_stderr: float
    n_baseline: int
    n_idea: int
    diff: float  # idea - baseline
    improvement: float  # diff signed so that > 0 is better, whatever the direction
    ci_low: float  # bootstrap CI of the improvement
    ci_high: float
    p_value: float  # two-sided, uncorrected: Welch's t-test, or a paired t-test when the arms share seeds
    effect_size: float  # Hedges' g, signed like improvement
    better: bool  # improvement > 0 and p_adjusted < alpha
    verdict: Literal["better", "worse", "inconclusive"]  # from p_adjusted, never from the raw p-value
    test: Literal["welch", "paired"] = "welch"
    # p-value corrected for every comparison the report holds (AnalysisReport.correction);
    # None only in reports made before corrections existed.
    p_adjusted: float | None = None
    # Whether a confirmation run on fresh seeds reached the same significant verdict;
    # None: not confirmed (no confirmation ran for this idea). Only the primary metric is confirmed.
    replicated: bool | None = None


class AnalysisFlag(Model):
    """A problem the analyst found, typed so that the writer and reviewer act on it without parsing sentences."""

    kind: Literal["missing_baseline", "unfair_baseline", "compute_changed"]
    detail: str  # the readable sentence, as in AnalysisReport.flags
    idea_id: str = ""  # the arm it is about, where there is one

    @property
    def text(self) -> str:
        return f"{self.kind.replace('_', ' ')}: {self.detail}"


class AnalysisReport(Model):
    project: str
    round: int = 0
    primary_metric: str
    alpha: float = 0.05
    # How p-values are corrected for multiple comparisons across the whole
    # report: "holm" (family-wise error rate) or "none".
    correction: Literal["holm", "none"] = "holm"
    comparisons: list[Comparison]
    runs: list[RunRecord]
    flags: list[str] = []  # missing/unfair baselines, failed runs, too few seeds
    flag_items: list[AnalysisFlag] = []  # the flags someone acts on, typed (each also in flags as its text)
    # Confirmation runs on fresh seeds, idea vs baseline on the primary metric,
    # corrected as their own family; they decide Comparison.replicated.
    confirmations: list[Comparison] = []
    figures: list[str] = []  # object-store names
    summary: str = ""
