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
    # The most seeds a review's more_seeds item takes one arm to (a seed plan can ask for dozens; each is a run of the job).
    max_seeds_per_arm: int = Field(20, ge=1, le=1000)
    # Compute the project's jobs may use, summed over the runs reported so far (``RunRecord.gpu_s`` / ``cpu_s``):
    # once spent, the PI schedules no new run and the project finishes with the results in hand.
    max_gpu_hours: float | None = Field(None, ge=0)
    max_cpu_hours: float | None = Field(None, ge=0)


class Estimate(Model):
    """What a project is expected to use, published by the PI before its first run (``ProjectEstimate``).

    Compute: runs x the expected time of one job x the GPUs (CPUs) each job asks for. The job time is the
    median of earlier projects' jobs on this template and profile where the lab has enough of them
    (``agents.pi.budget.archived``), else a measured first run where one is known (an AI Scientist
    template's, ``agents.aisci.measured``), else the time budget the template (its profile) declares, an
    upper bound. Minds: the steps that ask a mind x tokens per step (the median of earlier llm projects',
    else a stated default), priced; the offline mind costs nothing. Sent to the co-PI for every project.
    """

    runs: int
    job_s: float
    job_s_from: str  # where the job time came from, in words
    gpus_per_job: int
    cpus_per_job: float
    gpu_hours: float
    cpu_hours: float
    mind_steps: int = 0
    tokens: int = 0
    tokens_from: str = ""
    cost_usd: float = 0.0
    # Whether the PI waits for the co-PI's approval before the first run, and which threshold (or flag) made it.
    needs_approval: bool = False
    why: str = ""

    def line(self) -> str:
        """The estimate in one line, for `lab status`, `lab run` and the web view."""
        money = f", ~{self.tokens} tokens (${self.cost_usd:.2f})" if self.tokens else ", $0 for minds"
        return (f"{self.runs} runs x {self.job_s:.0f} s ({self.job_s_from}) x {self.gpus_per_job} GPU: "
                f"{self.gpu_hours:.2f} GPU-h, {self.cpu_hours:.2f} CPU-h{money}")


class ApprovalPolicy(Model):
    """When a project waits for the co-PI's approval before its first run (config.yaml ``approval:``; all off by default)."""

    gpu_hours_over: float | None = Field(None, ge=0)  # an estimate above this many GPU-hours waits
    cost_over: float | None = Field(None, ge=0)  # an estimate above this many USD (minds) waits
    # USD per 1M tokens the estimate prices minds at; None: the llm mind's configured model's price (agents.minds.llm.config).
    usd_per_million_tokens: float | None = Field(None, ge=0)
    tokens_per_step: int = Field(4000, ge=0)  # tokens one mind step is expected to use (prompt and completion)


class BudgetLimits(Model):
    """The lab's caps on every project's budget (config.yaml ``budgets:``): the PI lowers a project's own to them."""

    max_gpu_hours_per_project: float | None = Field(None, ge=0)
    max_cost_per_project: float | None = Field(None, ge=0)
    # The GPU-hours all the lab's projects may use together, summed over the projects the PI has stored: a new
    # project's GPU-hour budget is lowered to what is left, and one whose estimate would pass it waits for approval.
    max_gpu_hours_per_lab: float | None = Field(None, ge=0)
    # The GPU-hours one user's projects may use together (the user a project's start names, StartProject.user),
    # counted and applied as the per-lab cap is.
    max_gpu_hours_per_user: float | None = Field(None, ge=0)


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
    # The guarded edits themselves, written by the proposer (an evolve candidate switched in at the template's hook):
    # applied as they are, checked like any edit, without a mind.
    edits: list[CodeEdit] = []


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
