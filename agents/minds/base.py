"""What a mind does for each role: fill typed answers for the creative steps.

The workflows in ``agents/<role>.py`` decide what happens next; a mind only
answers questions with pydantic models. ``offline`` answers from the
template's declared knob space and the evidence; ``llm`` asks a model. Both
implement the same protocols, so a role never knows which one it has.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from bus.schema import (
    AnalysisReport,
    ArchiveRecord,
    CodeEdit,
    CoPINote,
    Idea,
    IdeaOutcome,
    ItemResponse,
    MetaReview,
    Reference,
    Review,
    ReviewEvidence,
    RevisionItem,
    TemplateSpec,
    Usage,
)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdeaContext(Model):
    spec: TemplateSpec  # template.yaml, validated
    direction: str
    notes: list[CoPINote] = []
    constraints: dict[str, Any] = {}  # from co-PI notes, e.g. {"allowed_knobs": ["weight_decay"]}
    previous: list[Idea] = []  # ideas already proposed (do not repeat them)
    # idea id -> what came of it so far (verdict, effect, CI; pending while it runs); see agents/pi/outcomes.py
    outcomes: dict[str, IdeaOutcome] = {}
    # What earlier projects tried on this template and what came of it (the idea archive), oldest first.
    prior: list[ArchiveRecord] = []
    # The direction or a co-PI note asks to repeat ideas already tried (otherwise the archive's are not proposed again).
    repeat_ok: bool = False
    profile: str = ""  # the template profile the project runs (its time budget bounds feasibility)
    baseline_wall_s: float | None = None  # how long one baseline run took, once known
    n: int = 1
    seed: int = 0

    def measured(self) -> list[IdeaOutcome]:
        """Every outcome with a number, this project's first, then the archive's."""
        mine = [o for o in self.outcomes.values() if o.measured]
        return mine + [r.outcome for r in self.prior if r.outcome.measured]


class NoteReading(Model):
    understood: str
    constraints: dict[str, Any] = {}
    # False: the mind could not tell what the note asks; the PI says so in the log
    # (and in the acknowledgement) instead of silently carrying on.
    parsed: bool = True


class ReviewContext(Model):
    items: list[RevisionItem]
    report: AnalysisReport
    runs_left: int
    rounds_left: int


class NoveltyJudgement(Model):
    novel: bool
    justification: str
    cited_keys: list[str] = []


class PaperSections(Model):
    title: str
    abstract: str
    introduction: str
    related_work: str
    method: str
    experimental_setup: str
    results: str
    limitations: str
    conclusion: str
    revision_notes: str = ""


class CodePlan(Model):
    overrides: dict[str, Any] = {}
    edits: list[CodeEdit] = []
    explanation: str = ""


@runtime_checkable
class PIMind(Protocol):
    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]: ...
    async def read_note(self, note: CoPINote, spec: TemplateSpec) -> NoteReading: ...
    async def answer_review(self, ctx: ReviewContext) -> list[ItemResponse]: ...


@runtime_checkable
class LiteratureMind(Protocol):
    async def queries(self, idea: Idea, task: str, found: list[Reference], round: int) -> list[str]: ...
    async def judge_novelty(self, idea: Idea, found: list[Reference], task: str = "") -> NoveltyJudgement: ...


@runtime_checkable
class EngineerMind(Protocol):
    async def plan(self, idea: Idea, spec: TemplateSpec, files: dict[str, str], error: str = "") -> CodePlan: ...


@runtime_checkable
class WriterMind(Protocol):
    async def write(self, request: Any) -> PaperSections: ...  # request: bus.schema.DraftRequest

    async def fix_latex(self, sections: PaperSections, failing: list[str], error: str) -> PaperSections | None:
        """``sections`` with the ``failing`` fields rewritten so pdflatex's ``error`` goes away; None: no fix to offer."""
        ...


@runtime_checkable
class ReviewerMind(Protocol):
    async def review(
        self, paper_markdown: str, report: AnalysisReport, references: list[Reference], index: int, evidence: ReviewEvidence | None = None,
    ) -> Review: ...
    async def meta_review(self, reviews: list[Review], report: AnalysisReport, round: int, max_rounds: int) -> MetaReview: ...


@runtime_checkable
class AnalystMind(Protocol):
    async def summarize(self, report: AnalysisReport) -> str: ...


class Mind(Protocol):
    """One role's mind, plus what it spent."""

    usage: Usage
