"""Reviews in the NeurIPS form, the meta-review's revision items and the PI's answers to them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bus.schema.base import Model
from bus.schema.template import TemplateSpec

ReviewDecision = Literal["accept", "reject"]
MetaDecision = Literal["accept", "reject", "revise"]
RevisionKind = Literal["more_seeds", "add_baseline", "rewrite_section", "add_limitation", "add_citation", "other"]


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
    decision: ReviewDecision


class RevisionItem(Model):
    id: str
    kind: RevisionKind
    text: str
    target: str = ""  # idea id, section name, ...
    # A more_seeds item: the seeds per arm it asks the target to reach in all (the seed plan's, or the rubric's
    # minimum). None: unstated (a model's item), and the PI adds the template's usual number.
    seeds: int | None = Field(None, ge=1, le=1000)


class MetaReview(Model):
    summary: str
    overall: float
    decision: MetaDecision
    revision_items: list[RevisionItem] = []


class ItemResponse(Model):
    item_id: str
    action: Literal["act", "rebut"]
    text: str


class ReviewEvidence(Model):
    """What the reviewer checks a draft against besides the report, gathered by its workflow for the minds.

    Every field defaults, so a mind called without it (older callers, tests) reviews as before.
    """

    spec: TemplateSpec | None = None  # the template as the writer had it (its analysis.json): metric kinds, knobs
    not_novel: dict[str, str] = {}  # ideas the literature check found not novel, id -> why
    tex: str = ""  # the LaTeX source the PDF is built from
    ensemble: int = 1  # how many members review this draft: member i covers the areas j with j % min(ensemble, 4) == i % min(...)
    round: int = 0
    max_rounds: int = 10
    # Items of the previous round the PI answered "act" whose named text the revision left as it was.
    open_items: list[RevisionItem] = []
