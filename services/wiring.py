"""How each role meets the lab: its typed context, what else it reads, what runs beside it.

The host (``services/host.py``) runs any role the same way; what differs
between roles is written here once, from the lab's config:

- every role: a ``Context`` with its state, mind, artifacts and cache;
- the engineer: an ``EngineerContext`` whose ``jobs`` port submits to the
  executor named by ``LAB_EXECUTOR`` / ``--executor`` (options from the config's
  ``executor: {KIND: {...}}``), the runner's bus access added at submit; it also
  reads the jobs stream and runs the job watch and the capacity wake-up;
- literature: a ``LiteratureContext`` with the config's ``literature:`` section
  (``agents/literature.Settings``; with no ``sources`` there, ``LAB_LIT_SOURCES``
  chooses) and the lab home whose library it searches.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from agents.base import ArtifactStore, Cache, Context
from agents.engineer import EngineerContext
from agents.literature import LiteratureContext, Settings
from bus import subjects
from bus.client import Bus
from bus.errors import LabError
from bus.schema import ROLES, Envelope, JobStatus, NatsAccess, RoleName
from bus.store import StateStore
from services.config import read_secret
from services.executors import EXECUTOR_KINDS, make_executor
from services.executors.base import Executor
from services.job_watch import JobWatch
from services.jobs import ExecutorJobs



class WiringError(LabError, ValueError):
    """A role setting in the lab config that cannot work (one line for the user)."""


@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer a role reads besides its own conversation subjects."""

    stream: str
    durable: str
    filter: str  # one subject: the permissions pin it (bus.permissions)


class Wiring:
    """A role with no ports beyond the bus: the plain ``Context``."""

    runs_jobs: ClassVar[bool] = False  # whether the role starts experiment runners (and so needs their credential)

    def __init__(self, role: RoleName, home: Path) -> None:
        self.role = role
        self.home = home

    @property
    def subscriptions(self) -> list[Subscription]:
        return []

    async def open(self, bus: Bus, states: StateStore) -> list[Coroutine[Any, Any, None]]:
        """Called once the host is on the bus; returns the role's background tasks (run until the host stops)."""
        return []

    async def close(self) -> None:
        """Called when the host stops."""

    def admit(self, env: Envelope) -> str | None:
        """Why the host must not believe ``env`` beyond what the subject vouches for (dead-lettered), or None."""
        return None

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> Context[Any, Any]:
        return Context(project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache)


class EngineerWiring(Wiring):
    runs_jobs = True

    def __init__(self, home: Path, executor: Executor, runner_nats: NatsAccess | None, job_secret: str | None = None) -> None:
        super().__init__("engineer", home)
        self.executor = executor
        self.jobs = ExecutorJobs(executor, runner_nats, job_secret)

    @property
    def subscriptions(self) -> list[Subscription]:
        # Job outcomes: from the runner, and from this role's own job watch.
        return [Subscription(subjects.JOBS_STREAM, "role-engineer-jobs", subjects.job_statuses())]

    async def open(self, bus: Bus, states: StateStore) -> list[Coroutine[Any, Any, None]]:
        watch = JobWatch(bus, states, self.executor, self.jobs.open_ledger(states), self.jobs.keys)
        return [watch.watch_jobs(), watch.wake_waiting()]

    async def close(self) -> None:
        await self.executor.close()

    def admit(self, env: Envelope) -> str | None:
        # The runner credential is every job's, and anyone may name any sender in an envelope:
        # a job status counts only with its own job's signature, on whatever subject it came.
        if isinstance(env.body, JobStatus):
            return self.jobs.keys.refusal(env.project, env.body)
        return None

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> EngineerContext:
        return EngineerContext(project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache, jobs=self.jobs)


class LiteratureWiring(Wiring):
    def __init__(self, home: Path, settings: Settings) -> None:
        super().__init__("literature", home)
        self.settings = settings

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> LiteratureContext:
        return LiteratureContext(
            project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache, settings=self.settings, lab_home=self.home,
        )


def role_name(role: str) -> RoleName:
    """``role`` checked against the six roles."""
    if role not in ROLES:
        raise WiringError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def wiring_class(role: str) -> type[Wiring]:
    return {"engineer": EngineerWiring, "literature": LiteratureWiring}.get(role, Wiring)


def literature_settings(config: dict[str, Any]) -> Settings:
    """The config's ``literature:`` section, checked now rather than at the first novelty check."""
    section = config.get("literature") or {}
    try:
        return Settings.model_validate(section)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WiringError(f"lab config literature.{where}: {first['msg']}") from None


def runner_access(bus_url: str) -> NatsAccess:
    """How the job runners the engineer starts reach the bus (``LAB_RUNNER_*``, set by `lab up` or the Deployment)."""
    return NatsAccess(
        url=os.environ.get("LAB_RUNNER_NATS_URL", bus_url),
        user=os.environ.get("LAB_RUNNER_USER"),
        password=read_secret("LAB_RUNNER_PASSWORD"),
    )


def build(role: str, *, home: Path, config: dict[str, Any], bus_url: str, executor: str = "local") -> Wiring:
    """The role's wiring from the lab config (``services.config.lab_config``) and the environment."""
    cls = wiring_class(role)
    if cls is EngineerWiring:
        if executor not in EXECUTOR_KINDS:
            raise WiringError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTOR_KINDS)}")
        return EngineerWiring(home, make_executor(executor, (config.get("executor") or {}).get(executor, {})), runner_access(bus_url), read_secret("LAB_JOB_SECRET"))
    if cls is LiteratureWiring:
        return LiteratureWiring(home, literature_settings(config))
    return Wiring(role_name(role), home)
