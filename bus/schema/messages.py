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
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, TypeAdapter

from bus.schema.analysis import AnalysisReport
from bus.schema.base import Model, Recipient, Sender
from bus.schema.constants import SCHEMA_VERSION
from bus.schema.evolve import EvolveRequest
from bus.schema.project import Budget, CoPINote, Estimate, Idea, MindChoice, Reference, Usage
from bus.schema.results import FinalInfo, JobEnvironment, RunRecord
from bus.schema.review import ItemResponse, MetaReview, Review, RevisionItem
from bus.schema.steps import Step
from bus.schema.template import TemplateSpec


class StartProject(Model):
    type: Literal["start_project"] = "start_project"
    template: str  # template name
    template_object: str  # object-store name of the template bundle (tar.gz)
    spec: TemplateSpec  # the validated template.yaml
    direction: str = ""
    seed: int = 0
    budget: Budget = Budget()
    fast: bool = False  # apply the template's declared fast profile (smoke runs)
    profile: str = ""  # a template profile by name (fast, gpu, ...); "" is the template as declared
    cache: bool = True  # False (`lab run --no-cache`): the engineer serves none of this project's runs from the result cache
    mind: str = "offline"
    # Wait for the co-PI's approval of the estimate before the first run, whatever the lab's thresholds (`lab run --require-approval`).
    require_approval: bool = False
    # The wall time of the template's first measured baseline run, where the starter knows one (an AI Scientist
    # template's, agents.aisci.measured): the estimate's job time instead of the declared time budget.
    measured_job_s: float | None = Field(None, gt=0)
    # Who started it, as `lab run` names them (LAB_USER, else the login): what a per-user budget is counted by.
    # A name, not an authenticated identity: the lab has one co-PI login (docs/configuration.md, budgets).
    user: str = Field("", max_length=64)
    # An evolve project (`lab evolve`): the PI runs the Self-Developing loop (agents/evolve) instead of idea waves.
    evolve: EvolveRequest | None = None


class ProjectEstimate(Model):
    """The PI's estimate of what a project will use, sent to the co-PI before its first run (and whether it waits)."""

    type: Literal["project_estimate"] = "project_estimate"
    estimate: Estimate


class ProjectApproval(Model):
    """The co-PI's answer to an estimate that waits (`lab approve`, `lab refuse`, the web view): only the co-PI may send it."""

    type: Literal["project_approval"] = "project_approval"
    approved: bool
    reason: str = Field("", max_length=2000)


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

    STEP: ClassVar[Step] = "novelty_check"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return self.idea.id


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

    STEP: ClassVar[Step] = "references"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return self.item_id


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
    spec: TemplateSpec
    fast: bool = False
    profile: str = ""
    cache: bool = True  # False: `lab run --no-cache`, every run of the project runs fresh
    # Options the project's workflow sets on the job itself, past the template's knob checks (an evolve run's split
    # and the template's evolve overrides): never an idea's, only what the PI's loop decides.
    fixed: dict[str, float | int | str | bool] = {}

    STEP: ClassVar[Step] = "experiment"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return self.experiment_id


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
    primary_metric: str = ""  # the template's primary metric: what a one-line summary leads with ("" in older results)


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
    # The experiment's CPU-seconds (user + system, its whole process tree); None where the runner cannot see them
    # (its own container, another node, or an older runner). GPU-seconds: wall seconds x the GPUs the job was given.
    cpu_s: float | None = None
    gpu_s: float = 0.0
    attempt: int = 1
    # HMAC of the project and this status under the job's own key (bus/jobkeys.py); the engineer refuses a status without it.
    signature: str = ""


class AnalysisRequest(Model):
    type: Literal["analysis_request"] = "analysis_request"
    round: int
    spec: TemplateSpec
    runs: list[RunRecord]
    # Experiments that confirm earlier findings on fresh seeds: analysed apart
    # from the exploratory runs, never pooled with them.
    confirmation: list[str] = []

    STEP: ClassVar[Step] = "analysis"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return f"round-{self.round}"


class AnalysisDone(Model):
    type: Literal["analysis_done"] = "analysis_done"
    report: AnalysisReport


class DraftRequest(Model):
    type: Literal["draft_request"] = "draft_request"
    round: int
    spec: TemplateSpec
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
    # The template profile the runs used ("" the template as declared); None: not told, and the
    # writer names the profile whose effective baseline matches the runs' recorded configs.
    profile: str | None = None
    # The accepted paper's final build: it says "Final version", not "Draft for review, round N".
    final: bool = False
    # With final: the draft the reviewers accepted. The writer rebuilds exactly its text with the final
    # date line (no mind is asked again: a model would write a paper nobody reviewed).
    reviewed: DraftReady | None = None

    STEP: ClassVar[Step] = "draft"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return f"round-{self.round}"


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
    # Where the paper's title, abstract, results or conclusion disagree with the report or the co-PI's
    # direction (agents.writer.story.inconsistencies): [] for a paper that tells one story; otherwise the draft failed the check.
    inconsistencies: list[str] = []


class ReviewRequest(Model):
    type: Literal["review_request"] = "review_request"
    round: int
    draft: DraftReady
    report: AnalysisReport
    references: list[Reference]
    ensemble: int = Field(3, ge=1, le=10)
    max_rounds: int = Field(10, ge=0, le=10)  # the PI's revision budget: round r may be revised while r < max_rounds

    STEP: ClassVar[Step] = "review"

    @property
    def ref(self) -> str:
        """What a StepFailed for this request names."""
        return f"round-{self.round}"


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
    step: Step
    reason: str
    ref: str = ""  # the id of the thing that failed (experiment, idea, ...)

    @classmethod
    def of(cls, request: Any, reason: str) -> StepFailed | None:
        """The failure of handling ``request``, or None when the message is not a step someone waits on."""
        step = getattr(type(request), "STEP", None)
        return cls(step=step, reason=reason, ref=request.ref) if step else None


class UsageReport(Model):
    type: Literal["usage_report"] = "usage_report"
    usage: Usage


Body = Annotated[
    (
        StartProject | ProjectEstimate | ProjectApproval
        | CoPINoteMsg | NoteAck | NoveltyCheck | NoveltyVerdict | ReferenceSearch | ReferencesFound | ExperimentRequest | ExperimentPlanned
        | ExperimentResult | JobStatus | AnalysisRequest | AnalysisDone | DraftRequest | DraftReady | ReviewRequest | ReviewDone | Rebuttal | Decision
        | StepFailed | UsageReport
    ),
    Field(discriminator="type"),
]
MESSAGE_KINDS: tuple[str, ...] = tuple(m.model_fields["type"].default for m in get_args(get_args(Body)[0]))


def _now() -> datetime:
    return datetime.now(UTC)


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

    def reply(self, body: Any, *, sender: Sender, recipient: Recipient | None = None, index: int = 0) -> Envelope:
        """An output of handling this message, with an id derived from (self.id, index).

        Deterministic ids make redelivered handlers republish the same ids, which
        the stream's duplicate window then drops: effects happen once.
        """
        return Envelope(
            id=derive_id(self.id, index),
            project=self.project,
            sender=sender,
            recipient=recipient or _as_recipient(self.sender),
            in_reply_to=self.id,
            body=body,
            mind=self.mind,
        )


def _as_recipient(sender: Sender) -> Recipient:
    """A reply goes back to its sender; the job runner is never addressed (it only publishes)."""
    if sender == "runner":
        raise ValueError("a reply to the job runner has no recipient: name one")
    return sender


def derive_id(parent: str, index: int | str) -> str:
    return hashlib.sha256(f"{parent}/{index}".encode()).hexdigest()[:32]


_ENVELOPE = TypeAdapter(Envelope)


def decode(data: bytes) -> Envelope:
    """Validate bytes as an Envelope; raises pydantic.ValidationError."""
    return _ENVELOPE.validate_json(data)


def encode(env: Envelope) -> bytes:
    return env.model_dump_json().encode()
