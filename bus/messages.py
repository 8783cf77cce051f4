"""Every message the lab's services exchange, as one envelope around a discriminated union.

Why one union: a receiver validates a message in one step and dispatches on
``body.type``; an unknown or malformed body fails validation and goes to the
dead-letter subject instead of crashing a handler. Large things (papers,
figures, bundles) travel through the object store; messages carry their names.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

Role = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer"]
ROLES: tuple[Role, ...] = ("pi", "literature", "engineer", "analyst", "writer", "reviewer")
# Parties that are not agents: the human co-PI (through the CLI) and the job runner.
Sender = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer", "copi", "runner"]
Recipient = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer", "copi", "all"]
Direction = Literal["higher", "lower"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- shared pieces


class Budget(Model):
    max_ideas: int = Field(3, ge=1, le=50)
    max_runs: int = Field(20, ge=1, le=1000)
    max_revision_rounds: int = Field(2, ge=0, le=10)
    wall_time_s: float = Field(3600.0, gt=0)
    max_tokens: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)


class Idea(Model):
    id: str
    title: str
    hypothesis: str
    falsification: str
    # Knob name -> proposed value; the engineer checks them against the template.
    changes: dict[str, Any]
    rationale: str = ""
    interestingness: int = Field(5, ge=1, le=10)
    feasibility: int = Field(5, ge=1, le=10)
    novelty: int = Field(5, ge=1, le=10)


class Reference(Model):
    key: str
    title: str
    authors: list[str] = []
    year: int | None = None
    venue: str = ""
    abstract: str = ""
    bibtex: str
    source: str = "local"  # which source answered: semantic_scholar, openalex, local, template
    paper_id: str | None = None


class MetricStat(Model):
    mean: float
    stderr: float
    values: list[float] = []  # one per seed, in the order of FinalInfo.seeds


class FinalInfo(Model):
    """What a template's experiment.py writes to ``final_info.json``."""

    model_config = ConfigDict(extra="allow")
    metrics: dict[str, MetricStat]
    seeds: list[int]
    config: dict[str, Any] = {}


class JobEnvironment(Model):
    """The machine a job really ran on: the writer reports only this."""

    model_config = ConfigDict(extra="allow")
    hostname: str = ""
    platform: str = ""
    python: str = ""
    cpu: str = ""
    cpu_count: int = 0
    gpus: list[str] = []
    cuda: str | None = None
    driver: str | None = None
    device: str = "cpu"  # what the experiment used: cpu or cuda
    packages: dict[str, str] = {}
    executor: str = "local"


class RunRecord(Model):
    """One job: a configuration run over several seeds."""

    job_id: str
    experiment_id: str
    idea_id: str  # "baseline" for the baseline
    overrides: dict[str, Any]
    seeds: list[int]
    status: Literal["succeeded", "failed"]
    reason: str = ""
    final_info: FinalInfo | None = None
    environment: JobEnvironment | None = None
    artifacts: list[str] = []  # object-store names
    wall_s: float = 0.0
    attempt: int = 1  # this run's attempt: earlier ones were lost with their runner (see ``lost``) or fixed
    lost: list[str] = []  # earlier attempts whose runner died without a result, and why


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


class ReviewScores(Model):
    originality: int = Field(ge=1, le=4)
    quality: int = Field(ge=1, le=4)
    clarity: int = Field(ge=1, le=4)
    significance: int = Field(ge=1, le=4)
    soundness: int = Field(ge=1, le=4)
    presentation: int = Field(ge=1, le=4)
    contribution: int = Field(ge=1, le=4)
    overall: int = Field(ge=1, le=10)
    confidence: int = Field(ge=1, le=5)


class Review(Model):
    """One review in the NeurIPS form."""

    reviewer: str
    summary: str
    strengths: list[str]
    weaknesses: list[str]
    questions: list[str]
    limitations: str
    ethics: str
    scores: ReviewScores
    decision: Literal["accept", "reject"]


class RevisionItem(Model):
    id: str
    kind: Literal["more_seeds", "add_baseline", "rewrite_section", "add_limitation", "add_citation", "other"]
    text: str
    target: str = ""  # idea id, section name, ...


class MetaReview(Model):
    summary: str
    overall: float
    decision: Literal["accept", "reject", "revise"]
    revision_items: list[RevisionItem] = []


class ItemResponse(Model):
    item_id: str
    action: Literal["act", "rebut"]
    text: str


class CoPINote(Model):
    id: str
    text: str
    to: Recipient = "pi"
    received_at: datetime | None = None


class Usage(Model):
    """Tokens and money one agent spent on its mind."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens - other.prompt_tokens,
            completion_tokens=self.completion_tokens - other.completion_tokens,
            cost_usd=self.cost_usd - other.cost_usd,
        )


# ---------------------------------------------------------------- message kinds


class StartProject(Model):
    type: Literal["start_project"] = "start_project"
    template: str  # template name
    template_object: str  # object-store name of the template bundle (tar.gz)
    spec: dict[str, Any]  # the validated template.yaml
    direction: str = ""
    seed: int = 0
    budget: Budget = Budget()
    fast: bool = False  # apply the template's declared fast profile (smoke runs)
    profile: str = ""  # a template profile by name (fast, gpu, ...); "" is the template as declared
    mind: str = "offline"


class CoPINoteMsg(Model):
    type: Literal["copi_note"] = "copi_note"
    note: CoPINote


class NoteAck(Model):
    type: Literal["note_ack"] = "note_ack"
    note_id: str
    understood: str  # what the role will do about it
    constraints: dict[str, Any] = {}


class NoveltyCheck(Model):
    type: Literal["novelty_check"] = "novelty_check"
    idea: Idea
    template: str
    template_object: str = ""  # the template bundle; its references.bib is a source too
    task: str = ""  # the template's task description, for queries
    keywords: list[str] = []


class NoveltyVerdict(Model):
    type: Literal["novelty_verdict"] = "novelty_verdict"
    idea_id: str
    novel: bool
    justification: str
    references: list[Reference] = []
    sources: list[str] = []  # which sources answered, in order
    queries: list[str] = []


class ReferenceSearch(Model):
    """The PI asks for references a review wants (an ``add_citation`` item, an unsupported claim)."""

    type: Literal["reference_search"] = "reference_search"
    item_id: str  # the revision item this answers
    queries: list[str]
    template_object: str = ""  # the template bundle; its references.bib is a source too
    known: list[str] = []  # reference keys the paper already has: only new ones are wanted


class ReferencesFound(Model):
    type: Literal["references_found"] = "references_found"
    item_id: str
    references: list[Reference] = []  # new ones only (not in ReferenceSearch.known)
    sources: list[str] = []
    reason: str = ""  # why nothing was found, when nothing was


class ExperimentRequest(Model):
    type: Literal["experiment_request"] = "experiment_request"
    experiment_id: str
    idea: Idea | None = None  # None: the baseline
    seeds: list[int]
    template: str
    template_object: str
    spec: dict[str, Any]
    fast: bool = False
    profile: str = ""


class ExperimentPlanned(Model):
    """The engineer's plan for an experiment: what it will run, before it runs."""

    type: Literal["experiment_planned"] = "experiment_planned"
    experiment_id: str
    idea_id: str
    overrides: dict[str, Any]
    job_ids: list[str]
    rejected: str = ""  # non-empty: the plan was refused (e.g. a knob out of range)


class ExperimentResult(Model):
    type: Literal["experiment_result"] = "experiment_result"
    experiment_id: str
    idea_id: str
    runs: list[RunRecord]


class JobStatus(Model):
    """Published by the job runner (sender ``runner``) on ``lab.jobs.<project>.<job>.status``."""

    type: Literal["job_status"] = "job_status"
    job_id: str
    experiment_id: str
    state: Literal["queued", "pending", "running", "succeeded", "failed", "cancelled"]
    reason: str = ""  # crashed, timeout, oom, invalid_output, unschedulable: ..., evicted, ...
    exit_code: int | None = None
    final_info: FinalInfo | None = None
    environment: JobEnvironment | None = None
    artifacts: list[str] = []
    wall_s: float = 0.0
    attempt: int = 1


class AnalysisRequest(Model):
    type: Literal["analysis_request"] = "analysis_request"
    round: int
    spec: dict[str, Any]
    runs: list[RunRecord]
    # Experiments that confirm earlier findings on fresh seeds: analysed apart
    # from the exploratory runs, never pooled with them.
    confirmation: list[str] = []


class AnalysisDone(Model):
    type: Literal["analysis_done"] = "analysis_done"
    report: AnalysisReport


class DraftRequest(Model):
    type: Literal["draft_request"] = "draft_request"
    round: int
    spec: dict[str, Any]
    direction: str
    ideas: list[Idea]
    report: AnalysisReport
    references: list[Reference]
    notes: list[CoPINote] = []
    revision_items: list[RevisionItem] = []
    responses: list[ItemResponse] = []
    usage: dict[str, Usage] = {}
    # Ideas the literature check found not novel, id -> the justification with its
    # quoted evidence: dropped, not run, and the paper says so.
    not_novel: dict[str, str] = {}


class DraftReady(Model):
    type: Literal["draft_ready"] = "draft_ready"
    round: int
    tex: str  # object-store names
    markdown: str
    pdf: str | None = None
    bib: str
    figures: list[str] = []
    numbers: list[float] = []  # every number printed in the paper, for checking
    pdf_error: str = ""
    pdf_log: str = ""  # the LaTeX log from the first error on, when the PDF failed to build
    # object-store name of analysis.json: the analyst's full report plus every
    # number as the paper prints it, so each printed number can be traced.
    analysis: str | None = None


class ReviewRequest(Model):
    type: Literal["review_request"] = "review_request"
    round: int
    draft: DraftReady
    report: AnalysisReport
    references: list[Reference]
    ensemble: int = Field(3, ge=1, le=10)
    max_rounds: int = Field(10, ge=0, le=10)  # the PI's revision budget: round r may be revised while r < max_rounds


class ReviewDone(Model):
    type: Literal["review_done"] = "review_done"
    round: int
    reviews: list[Review]
    meta: MetaReview


class Rebuttal(Model):
    type: Literal["rebuttal"] = "rebuttal"
    round: int
    responses: list[ItemResponse]


class Decision(Model):
    type: Literal["decision"] = "decision"
    accepted: bool
    reason: str
    rounds: int
    paper: DraftReady | None = None
    review_object: str | None = None  # object-store name of review.json


class StepFailed(Model):
    """A role could not do what it was asked; the PI decides what follows."""

    type: Literal["step_failed"] = "step_failed"
    step: str
    reason: str
    ref: str = ""  # the id of the thing that failed (experiment, idea, ...)


class UsageReport(Model):
    type: Literal["usage_report"] = "usage_report"
    usage: Usage


Body = Annotated[
    Union[
        StartProject,
        CoPINoteMsg,
        NoteAck,
        NoveltyCheck,
        NoveltyVerdict,
        ReferenceSearch,
        ReferencesFound,
        ExperimentRequest,
        ExperimentPlanned,
        ExperimentResult,
        JobStatus,
        AnalysisRequest,
        AnalysisDone,
        DraftRequest,
        DraftReady,
        ReviewRequest,
        ReviewDone,
        Rebuttal,
        Decision,
        StepFailed,
        UsageReport,
    ],
    Field(discriminator="type"),
]
KINDS: tuple[str, ...] = tuple(m.model_fields["type"].default for m in Body.__origin__.__args__)  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC)


class MindChoice(Model):
    """The mind a project asked for. It rides on the project's envelopes (and is kept in each role's
    state for messages that lack it, e.g. job statuses), so every role and every replica thinks
    with the project's mind, not with whatever its process was started with."""

    kind: Literal["offline", "llm"] = "offline"
    model: str | None = None  # the llm mind's model; None: the lab's configured one


class Envelope(Model):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    schema_version: Literal[1] = SCHEMA_VERSION
    project: str
    sender: Sender
    recipient: Recipient
    in_reply_to: str | None = None
    created_at: datetime = Field(default_factory=_now)
    body: Body
    mind: MindChoice | None = None  # None: the agent's own default

    @property
    def kind(self) -> str:
        return self.body.type

    def reply(self, body: Any, *, sender: Sender, recipient: Recipient | None = None, index: int = 0) -> "Envelope":
        """An output of handling this message, with an id derived from (self.id, index).

        Deterministic ids make redelivered handlers republish the same ids, which
        the stream's duplicate window then drops: effects happen once.
        """
        return Envelope(
            id=derive_id(self.id, index),
            project=self.project,
            sender=sender,
            recipient=recipient or self.sender,  # type: ignore[arg-type]
            in_reply_to=self.id,
            body=body,
            mind=self.mind,
        )


def derive_id(parent: str, index: int | str) -> str:
    return hashlib.sha256(f"{parent}/{index}".encode()).hexdigest()[:32]


_ENVELOPE = TypeAdapter(Envelope)


def decode(data: bytes) -> Envelope:
    """Validate bytes as an Envelope; raises pydantic.ValidationError."""
    return _ENVELOPE.validate_json(data)


def encode(env: Envelope) -> bytes:
    return env.model_dump_json().encode()
