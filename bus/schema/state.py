"""Read models of what the agents keep in the state and agents buckets, for readers that are not the writer.

The PI and the engineer own their state (``agents/pi/state.py``, the
engineer's state); the CLI and the web view only read a few fields of it. They
validate with these models, which ignore the rest, so a reader never indexes a
raw dict and a field the writer renames fails here, loudly, not as a KeyError
in a table.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bus.schema.constants import HEARTBEAT_STALE_S
from bus.schema.project import Budget, Estimate, Usage
from bus.schema.results import RunRecord

Stage = Literal["approval", "ideas", "experiments", "analysis", "draft", "review", "done", "failed"]
FINISHED_STAGES: tuple[Stage, ...] = ("done", "failed")
JobRecordState = Literal["queued", "dispatched", "pending", "running", "succeeded", "failed", "cancelled"]
ACTIVE_JOB_STATES: tuple[JobRecordState, ...] = ("queued", "dispatched", "pending", "running")


class ReadModel(BaseModel):
    """A view of a document someone else writes: unknown fields are the writer's business."""

    model_config = ConfigDict(extra="ignore")


class ProjectView(ReadModel):
    """A project as the PI keeps it (key ``pi.<project>``), as far as `lab status` and the web view read it."""

    project: str
    template: str
    stage: Stage
    budget: Budget
    started_at: float
    round: int = 0
    direction: str = ""
    mind: str = "offline"
    ideas: dict[str, Any] = {}
    experiments: dict[str, Any] = {}
    usage: dict[str, Usage] = {}
    outcome: str = ""
    accepted: bool | None = None
    estimate: Estimate | None = None  # what the PI expects the project to use (None: a project started before estimates)
    user: str = ""  # who started it (StartProject.user; "" for projects started before it was recorded)
    profile: str = ""  # the template profile it ran under ("" as declared; see ``fast``): what its archived job times are filed by
    fast: bool = False

    @property
    def waiting_approval(self) -> bool:
        """The project waits for the co-PI's `lab approve` before its first run."""
        return self.stage == "approval"

    @property
    def finished(self) -> bool:
        return self.stage in FINISHED_STAGES

    @property
    def tokens(self) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in self.usage.values())

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    @property
    def runs(self) -> list[RunRecord]:
        """Every run the PI holds, as the engineer reported it; one it cannot read is left out, not guessed at."""
        out: list[RunRecord] = []
        for e in self.experiments.values():
            for r in e.get("runs", []) if isinstance(e, dict) else []:
                try:
                    out.append(RunRecord.model_validate(r))
                except ValidationError:
                    continue
        return out

    @property
    def decision(self) -> str:
        """The outcome in words, or accepted / not accepted when the PI wrote none."""
        if self.outcome or self.accepted is None:
            return self.outcome
        return "accepted" if self.accepted else "not accepted"


class JobView(ReadModel):
    job_id: str
    experiment_id: str
    state: JobRecordState
    reason: str = ""
    cache_key: str = ""  # its result cache key (bus/resultcache.py); "" when the cache does not serve it
    waits_for: str = ""  # queued behind another job's claim on that key: the owner's "<project>/<experiment>/<job>"


class EngineerView(ReadModel):
    """A project's jobs as the engineer keeps them (key ``engineer.<project>``)."""

    jobs: dict[str, JobView] = {}

    def active(self) -> list[JobView]:
        return [j for j in self.jobs.values() if j.state in ACTIVE_JOB_STATES]


class Heartbeat(ReadModel):
    """What an agent process writes to the agents bucket every HEARTBEAT_EVERY_S."""

    role: str
    instance: str = ""
    pid: int
    host: str = ""
    mind: str = "offline"
    llm_error: str | None = None
    concurrency: int = 1
    busy: int = 0
    held: int = 0
    handled: int = 0
    seen: float
    started: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    metrics_url: str = ""  # where its Prometheus metrics are served (LAB_METRICS_PORT); empty: none

    def stale(self, now: float | None = None) -> bool:
        """Silent longer than HEARTBEAT_STALE_S: the agent lost NATS or hung, and readers call it down."""
        return (time.time() if now is None else now) - self.seen > HEARTBEAT_STALE_S
