"""The analyst's report: comparisons against the baseline, corrected p-values, typed flags."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import model_validator

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
    # The t-interval of the improvement that belongs to the test (paired or Welch's), drawn at the level its
    # corrected verdict was decided at (ci_level): it excludes zero exactly when the verdict is significant.
    # Reports made before this held a bootstrap interval at 1 - alpha.
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, uncorrected: Welch's t-test, or a paired t-test when the arms share seeds
    effect_size: float  # effect_kind's effect size, signed like improvement
    better: bool  # improvement > 0 and p_adjusted < alpha
    verdict: Literal["better", "worse", "inconclusive"]  # from p_adjusted, never from the raw p-value
    test: Literal["welch", "paired"] = "welch"
    # p-value corrected (AnalysisReport.correction) within this comparison's family, after spending alpha over
    # the looks at this arm (p x looks); None only in reports made before corrections existed.
    p_adjusted: float | None = None
    # Whether a confirmation run on fresh seeds reached the same significant verdict;
    # None: not confirmed (no confirmation ran for this idea). Only the primary metric is confirmed.
    replicated: bool | None = None
    # The test family this comparison was corrected in: the primary metric's (the headline),
    # or the secondary metrics' (a separate, labelled family). Hardware, derived and fixed
    # metrics are in neither (see TemplateSpec Metric.kind).
    family: Literal["primary", "secondary"] = "primary"
    # Which effect size effect_size is: Hedges' g (pooled SD, unpaired arms) or
    # Cohen's d_z (mean paired difference / SD of the differences) for a paired test.
    effect_kind: Literal["hedges_g", "paired_d"] = "hedges_g"
    # The arm the idea is compared with: "baseline", or the idea's parent for a variant of a variant.
    control: str = "baseline"
    # The confidence level of [ci_low, ci_high]: 1 - the alpha its test was decided at (the Holm step's, over looks).
    ci_level: float | None = None
    # How many analyses saw this idea's seeds: 1, or more when seeds were added after a look (flag seeds_added);
    # the alpha is spent over them (Bonferroni: p x looks before the family's correction).
    looks: int = 1


class Descriptive(Model):
    """A metric reported without a test (hardware-dependent, or fixed by construction): per arm, as measured."""

    idea_id: str
    metric: str
    mean: float
    stderr: float
    n: int
    reason: str  # why it is not tested, as a sentence ("throughput depends on the machine's load")


class SeedPlan(Model):
    """How many seeds an arm gets, planned before looking, from the baseline's variance."""

    metric: str
    baseline_sd: float
    min_detectable_effect: float  # in the metric's units
    power: float  # e.g. 0.8
    alpha: float
    seeds: int  # what the plan asks for (at least the template's minimum; at most the budget's max_seeds_per_arm once the PI fixed it)
    # What the power calculation asked for when the budget's max_seeds_per_arm cut it to ``seeds`` (None: not cut):
    # at ``seeds`` per arm the comparison has less than ``power`` for ``min_detectable_effect``.
    needed: int | None = None


FlagKind = Literal[
    "missing_baseline",  # no successful baseline run: nothing could be compared
    "unfair_baseline",  # an idea moved a fairness knob (idea_id)
    "compute_changed",  # an idea moved a knob that changes the compute per run (idea_id)
    "baseline_fewer_seeds",  # the baseline has fewer seeds than an idea (idea_id, seeds, baseline_seeds, metric)
    "too_few_seeds",  # an arm has fewer than required_seeds seeds (idea_id, seeds, required_seeds, metric)
    "failed_run",  # a run failed or wrote no final_info (job_id, idea_id)
    "no_per_seed_values",  # a run reported only a mean (job_id, metric)
    "duplicate_seed",  # a seed ran twice; the later value is kept (job_id, idea_id)
    "zero_variance",  # both arms constant: p and g by convention, not from a test (idea_id, metric)
    "confirmation_without_baseline",  # confirmation runs without a baseline: nothing was confirmed
    "not_converged",  # the metric was still moving at the end of training: claims hold for this budget only (idea_id, metric)
    "unstable",  # a run reached its best then collapsed (job_id, idea_id, metric)
    "no_separation",  # the positive control showed no difference: the testbed cannot separate, conclusions withheld
    "wrong_control",  # a variant of a parent was compared with the baseline only (idea_id)
    "hardware_metric",  # a hardware-dependent metric, arms not interleaved on one node: reported descriptively (metric)
    "seeds_added",  # seeds added after an inconclusive look: only fresh-seed confirmation counts (idea_id, metric)
    "other",  # free text from a report stored before flags were typed
]

# What a person reads before the detail; the kinds' names are for code, these are the printed words.
PREFIXES: dict[str, str] = {
    "missing_baseline": "missing baseline",
    "unfair_baseline": "unfair baseline",
    "compute_changed": "compute changed",
    "baseline_fewer_seeds": "baseline has fewer seeds",
    "too_few_seeds": "too few seeds",
    "failed_run": "failed run",
    "no_per_seed_values": "no per-seed values",
    "duplicate_seed": "duplicate seed",
    "zero_variance": "zero variance",
    "confirmation_without_baseline": "confirmation without baseline",
    "not_converged": "not converged",
    "unstable": "unstable",
    "no_separation": "testbed cannot separate",
    "wrong_control": "wrong control",
    "hardware_metric": "hardware-dependent metric",
    "seeds_added": "seeds added after a look",
}


class AnalysisFlag(Model):
    """A problem the analyst found, typed so that the writer and reviewer act on it without parsing sentences.

    ``text`` is the sentence a person reads (papers, logs, the web view): the
    kind's printed prefix, then ``detail``.
    """

    kind: FlagKind
    detail: str  # the readable sentence after the prefix
    idea_id: str = ""  # the arm it is about, where there is one
    job_id: str = ""  # the run it is about, where there is one
    metric: str = ""  # the metric it is about, where there is one
    seeds: int | None = None  # the arm's seed count (too_few_seeds; baseline_fewer_seeds: the idea's)
    baseline_seeds: int | None = None  # the baseline's seed count (baseline_fewer_seeds)
    required_seeds: int | None = None  # the least an arm needs (too_few_seeds)
    seed: int | None = None  # the seed it is about (unstable: the seed whose curve collapsed)
    control: str = ""  # the arm an idea should be compared with (wrong_control: its parent)

    @property
    def text(self) -> str:
        prefix = PREFIXES.get(self.kind)
        return f"{prefix}: {self.detail}" if prefix else self.detail


# How an old report's sentence of each kind names its arm, run and counts (see AnalysisReport._typed_flags).
_LEGACY_FIELDS: dict[str, re.Pattern[str]] = {
    "unfair_baseline": re.compile(r"^idea '(?P<idea_id>[^']*)'"),
    "compute_changed": re.compile(r"^idea '(?P<idea_id>[^']*)'"),
    "baseline_fewer_seeds": re.compile(r"^baseline (?P<baseline_seeds>\d+) vs idea '(?P<idea_id>[^']*)' (?P<seeds>\d+) for '(?P<metric>[^']*)'"),
    "too_few_seeds": re.compile(r"^'(?P<idea_id>[^']*)' has (?P<seeds>\d+) seed\(s\) for '(?P<metric>[^']*)'; at least (?P<required_seeds>\d+)"),
    "failed_run": re.compile(r"^(?P<job_id>\S+) \(idea '(?P<idea_id>[^']*)'\)"),
    "no_per_seed_values": re.compile(r"^run (?P<job_id>\S+) reported only a mean for '(?P<metric>[^']*)'"),
    "duplicate_seed": re.compile(r"^idea '(?P<idea_id>[^']*)' seed .* ran again in (?P<job_id>\S+); kept"),
    "zero_variance": re.compile(r"^every seed of '(?P<idea_id>[^']*)' and of the baseline gave the same '(?P<metric>[^']*)'"),
}


def legacy_flag(sentence: str) -> AnalysisFlag:
    """A flag sentence of a report stored before flags were typed, as a typed flag.

    The only place that reads a flag's sentence: the prefixes name the kind,
    and the detail's fixed wording the arm, run and counts where it has them.
    A sentence with no known prefix stays as it was, of kind ``other``.
    """
    for kind, prefix in PREFIXES.items():
        if sentence.startswith(prefix + ": "):
            detail = sentence[len(prefix) + 2 :]
            pattern = _LEGACY_FIELDS.get(kind)
            m = pattern.search(detail) if pattern else None
            fields = {k: v for k, v in m.groupdict().items() if v is not None} if m else {}
            return AnalysisFlag.model_validate({"kind": kind, "detail": detail, **fields})
    return AnalysisFlag(kind="other", detail=sentence)


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
    flags: list[AnalysisFlag] = []  # missing/unfair baselines, failed runs, too few seeds, ...; each reads as its .text
    # Confirmation runs on fresh seeds, idea vs baseline on the primary metric,
    # corrected as their own family; they decide Comparison.replicated.
    confirmations: list[Comparison] = []
    figures: list[str] = []  # object-store names
    summary: str = ""
    # Metrics reported without a test, per arm (hardware-dependent, fixed by construction).
    descriptive: list[Descriptive] = []
    # The seed count and the reasoning behind it; None in reports made before plans existed.
    seed_plan: SeedPlan | None = None
    # A validity check failed (a no_separation flag): the writer states no verdict, the reviewer does not accept one.
    conclusions_withheld: bool = False
    # The positive control against the baseline on the primary metric: its own single test at alpha, in no family;
    # None when no positive control ran.
    positive_control: Comparison | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_flags(cls, data: Any) -> Any:
        """Load a report stored before flags were typed: ``flags`` as sentences, some also typed in ``flag_items``."""
        if not isinstance(data, dict) or ("flag_items" not in data and not any(isinstance(f, str) for f in data.get("flags") or [])):
            return data
        data = dict(data)
        typed = {f.text: f for f in map(AnalysisFlag.model_validate, data.pop("flag_items", None) or [])}
        data["flags"] = [(typed.get(f) or legacy_flag(f)) if isinstance(f, str) else f for f in data.get("flags") or []]
        return data
