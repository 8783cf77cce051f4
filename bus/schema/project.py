"""What a project is: its budget, ideas, references, the co-PI's notes, the mind it asked for, what it spent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from bus.schema.base import Model, Recipient
from bus.schema.kinds import MindKind


class Budget(Model):
    max_ideas: int = Field(3, ge=1, le=50)
    max_runs: int = Field(20, ge=1, le=1000)
    max_revision_rounds: int = Field(2, ge=0, le=10)
    wall_time_s: float = Field(3600.0, gt=0)
    max_tokens: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)
    # The most runs the co-PI may raise max_runs to (`lab say 'raise runs to N'`); None: twice the
    # max_runs the project started with (the PI fixes it at the start), never over 1000.
    max_runs_limit: int | None = Field(None, ge=1, le=1000)


class CodeEdit(Model):
    """A search/replace edit of one file in the experiment's folder (checked by ``agents/codeedit.py``)."""

    path: str
    search: str
    replace: str


class CodeChange(Model):
    """An idea that changes the experiment's code (a new merge algorithm, a regulariser, a schedule), not only a knob.

    The engineer implements it with guarded edits: a template-declared
    ``variant`` brings its own edits (template.yaml ``variants``), otherwise
    the engineer's mind writes them from the summary.
    """

    summary: str  # what the change does, for the engineer and the paper
    variant: str | None = None  # a code variant the template declares, switched in by its edits


class Idea(Model):
    id: str
    title: str
    hypothesis: str
    falsification: str
    # Knob name -> proposed value; the engineer checks them against the template.
    changes: dict[str, Any]
    code: CodeChange | None = None  # a code-level idea: what to change in the experiment itself
    rationale: str = ""
    # 1-10, as the mind judged them (None: not scored); the PI ranks and filters ideas by them.
    interestingness: int | None = Field(None, ge=1, le=10)
    feasibility: int | None = Field(None, ge=1, le=10)
    novelty: int | None = Field(None, ge=1, le=10)
    # Why the idea is proposed though it touches none of the knobs or variants the research direction
    # names ("" when it is inside the direction, or the direction names none); the PI refuses an idea
    # outside a direction that does not say why.
    outside_direction: str = ""


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

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens - other.prompt_tokens,
            completion_tokens=self.completion_tokens - other.completion_tokens,
            cost_usd=self.cost_usd - other.cost_usd,
        )


class MindChoice(Model):
    """The mind a project asked for. It rides on the project's envelopes (and is kept in each role's
    state for messages that lack it, e.g. job statuses), so every role and every replica thinks
    with the project's mind, not with whatever its process was started with."""

    kind: MindKind = "offline"
    model: str | None = None  # the llm mind's model; None: the lab's configured one
