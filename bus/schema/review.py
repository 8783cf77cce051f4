"""Reviews in the NeurIPS form, the meta-review's revision items and the PI's answers to them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bus.schema.base import Model

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


class MetaReview(Model):
    summary: str
    overall: float
    decision: MetaDecision
    revision_items: list[RevisionItem] = []


class ItemResponse(Model):
    item_id: str
    action: Literal["act", "rebut"]
    text: str
