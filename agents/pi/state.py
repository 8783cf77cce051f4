"""The PI's durable project state: everything needed to resume a project after any crash.

It lives in the KV bucket (key ``pi.<project>``) and is only ever written with
compare-and-set, together with the messages its change produced.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bus.schema import (
    AnalysisReport,
    ArchiveRecord,
    Budget,
    CoPINote,
    DraftReady,
    Estimate,
    Idea,
    ItemResponse,
    NoveltyVerdict,
    Reference,
    ReviewDone,
    RevisionItem,
    RunRecord,
    Stage,
    TemplateSpec,
    Usage,
)
from bus.schema.analysis import SeedPlan
from bus.schema.evolve import EvolveState


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdeaState(Model):
    idea: Idea
    wave: int
    status: Literal["checking", "novel", "not_novel", "running", "done", "failed", "skipped"] = "checking"
    verdict: NoveltyVerdict | None = None
    reason: str = ""
    # A run the co-PI asked for in a note: it skips the novelty check and counts in the runs, not the PI's ideas.
    asked_by_copi: bool = False


class ExperimentState(Model):
    experiment_id: str
    idea_id: str
    seeds: list[int]
    round: int
    status: Literal["requested", "done", "failed"] = "requested"
    runs: list[RunRecord] = []
    reason: str = ""
    # A confirmation run: fresh seeds for an idea found significant, or for the
    # baseline beside it; the analyst compares these apart from the exploratory runs.
    confirmation: bool = False


class ProjectState(Model):
    project: str
    template: str
    template_object: str
    spec: TemplateSpec
    direction: str
    seed: int
    budget: Budget
    fast: bool
    profile: str = ""
    cache: bool = True  # the result cache may serve this project's runs (`lab run --no-cache`: False)
    mind: str
    started_at: float
    user: str = ""  # who started it (StartProject.user): what a per-user budget is counted by
    stage: Stage = "ideas"
    wave: int = 0
    round: int = 0
    ideas: dict[str, IdeaState] = {}
    experiments: dict[str, ExperimentState] = {}
    notes: list[CoPINote] = []
    constraints: dict[str, Any] = {}
    references: dict[str, Reference] = {}
    report: AnalysisReport | None = None
    # The seeds an arm needs, fixed at the first analysis that could plan them (capped by max_seeds_per_arm);
    # every later report carries this plan, not one recomputed from the variance seen since (agents/pi/transitions.py).
    seed_plan: SeedPlan | None = None
    draft: DraftReady | None = None
    reviews: list[ReviewDone] = []
    revision_items: list[RevisionItem] = []
    responses: list[ItemResponse] = []
    usage: dict[str, Usage] = {}
    outcome: str = ""
    accepted: bool | None = None
    citations_pending: list[str] = []  # revision items waiting for the literature agent's references
    confirmed: list[str] = []  # ideas whose findings a confirmation run has been asked to replicate
    # What earlier projects on this template tried (the idea archive), as the latest wave saw it.
    prior: list[ArchiveRecord] = []
    halt: str = ""  # why the project ends once nothing is outstanding (the model's endpoint is down)
    # The meta-review accepted: why, while the writer makes the final build of the reviewed draft.
    accepting: str = ""
    # What the project is expected to use (published before its first run), and when the co-PI approved it (None: no wait).
    estimate: Estimate | None = None
    approved_at: float | None = None
    # Why no new run may start (a GPU-hour, CPU-hour or money budget reached; ""), said once and in the decision.
    budget_stop: str = ""
    # An evolve project (`lab evolve`, StartProject.evolve): the loop's decisions so far (agents/evolve/project.py).
    evolve: EvolveState | None = None

    @property
    def runs_used(self) -> int:
        return len(self.experiments)

    def runs(self) -> list[RunRecord]:
        return [r for e in self.experiments.values() for r in e.runs]

    def confirmation_ids(self) -> list[str]:
        return [e.experiment_id for e in self.experiments.values() if e.confirmation]
