"""The shapes the model answers in, converted to the lab's models after validation.

Why not the lab's models directly: OpenAI's strict json_schema mode wants
every field required, no defaults and no free-form objects, while the lab's
models use defaults and ``dict[str, Any]`` (knob overrides). Knob values
travel here as ``[{"knob": ..., "value": ...}]`` lists instead.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.minds.base import PaperSections
from bus.schema import ItemResponse, ReviewScores, RevisionItem
from bus.schema.review import MetaDecision, ReviewDecision, RevisionKind

Scalar = bool | int | float | str


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnobValue(Answer):
    knob: str
    value: Scalar


def as_dict(values: list[KnobValue]) -> dict[str, Any]:
    return {v.knob: v.value for v in values}


class IdeaDraft(Answer):
    title: str = Field(min_length=3)
    hypothesis: str = Field(min_length=10)
    falsification: str = Field(min_length=10)
    changes: list[KnobValue]  # may be empty when ``code`` says what the idea changes
    # A code-level idea: what to change in experiment.py (a new function, a regulariser), for the engineer to
    # implement by edits; "" for an idea that only sets knobs.
    code: str = ""
    rationale: str
    interestingness: int = Field(ge=1, le=10)
    feasibility: int = Field(ge=1, le=10)
    novelty: int = Field(ge=1, le=10)
    # Why the idea is worth a run though it changes none of the knobs the research direction names
    # ("" for an idea inside the direction); an idea outside it without a reason is refused.
    outside_direction: str = ""


class IdeaBatch(Answer):
    thoughts: str  # reasoning before the ideas, as the AI Scientist's reflection does
    ideas: list[IdeaDraft] = Field(min_length=1)
    done: bool  # true: the model thinks the ideas cannot be improved further


class NoteAnswer(Answer):
    understood: str = Field(min_length=3)
    allowed_knobs: list[str]  # empty: no restriction to a subset
    forbidden_knobs: list[str]
    # The co-PI may end the project from a note in any mind, not only the offline one.
    stop: bool = False


class ItemAnswers(Answer):
    responses: list[ItemResponse]


class QueryList(Answer):
    queries: list[str]  # empty: more searching would not change the verdict


class NoveltyAnswer(Answer):
    novel: bool
    justification: str = Field(min_length=10)
    cited_keys: list[str]


class PlanAnswer(Answer):
    explanation: str
    overrides: list[KnobValue]
    edits: list[EditAnswer]


class EditAnswer(Answer):
    path: str
    search: str
    replace: str


PlanAnswer.model_rebuild()


# The paper's sections as the model writes them: the title and abstract bounded, revision_notes required too.
# (A comment, not a docstring: a docstring would go to the model as the schema's description.)
class PaperDraft(PaperSections):
    title: str = Field(min_length=3)
    abstract: str = Field(min_length=20)
    revision_notes: str


class SectionText(Answer):
    """One section of the paper, written in its turn."""

    text: str


class ReviewDraft(Answer):
    summary: str = Field(min_length=10)
    strengths: list[str]
    weaknesses: list[str]
    questions: list[str]
    limitations: str
    ethics: str
    scores: ReviewScores
    decision: ReviewDecision


class ReviewReflection(ReviewDraft):
    """A reviewer's review after re-reading it: the full improved review, and whether it is final."""

    thoughts: str
    done: bool


class RevisionDraft(Answer):
    id: str
    kind: RevisionKind
    text: str
    target: str
    seeds: int | None = Field(None, ge=1, le=1000, description="more_seeds only: the seeds per arm the target should reach in all")

    def to_item(self) -> RevisionItem:
        return RevisionItem(**self.model_dump())


class MetaDraft(Answer):
    summary: str = Field(min_length=10)
    overall: float = Field(ge=1, le=10)
    decision: MetaDecision
    revision_items: list[RevisionDraft]


class SummaryAnswer(Answer):
    summary: str = Field(min_length=10)
