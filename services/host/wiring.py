"""How each role meets the lab: its typed context, what else it reads, what runs beside it.

The host (``services/host/agent.py``) runs any role the same way and names
none; what differs between roles is written here once, from the lab's config:

- every role: a ``Context`` with its state, mind, artifacts and cache; its
  minds (``Minds``: the agent's own, and one per project that chose another);
  which envelopes it believes (``admit``: what the subject a message came on
  vouches for, ``envelope_mismatch``); the role it reports a failed step and
  what each message cost to (``reports_to``: the PI, who decides what follows);
- the engineer: an ``EngineerContext`` whose ``jobs`` port submits to the
  executor named by ``LAB_EXECUTOR`` / ``--executor`` (options from the config's
  ``executor: {KIND: {...}}``), the runner's bus access added at submit; it also
  reads the jobs stream and runs the job watch and the capacity wake-up;
- the PI: a ``PIContext`` whose ``archive`` port is the idea archive (``bus.store.IdeaArchive``);
- literature: a ``LiteratureContext`` with the config's ``literature:`` section
  (``agents/literature.Settings``; with no ``sources`` there, ``LAB_LIT_SOURCES``
  chooses) and the lab home whose library it searches.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog
from pydantic import ValidationError

from agents.base import ArtifactStore, Cache, Context
from agents.engineer.workflow import EngineerContext
from agents.evolve.project import advance as evolve_loop
from agents.literature.workflow import LiteratureContext, Settings
from agents.minds import llm_unavailable, make_mind
from agents.minds.base import Mind
from agents.pi.workflow import PIContext
from bus.client import Bus
from bus.errors import LabError
from bus.permissions import convo_refusal, sender_refusal
from bus.resultcache import ResultCache
from bus.schema import (
    EXECUTOR_KINDS,
    ROLES,
    ApprovalPolicy,
    BudgetLimits,
    Envelope,
    JobStatus,
    LabConfig,
    MindChoice,
    MindKind,
    NatsAccess,
    ProjectView,
    RoleDocument,
    RoleName,
)
from bus.schema.formats import FormatError, parse
from bus.settings import settings
from bus.store import IdeaArchive, StateStore
from services.executors import make_executor
from services.executors.base import Executor
from services.host.job_watch import JobWatch
from services.host.jobs import ExecutorJobs

log = structlog.get_logger()


class Minds:
    """A role's minds: the agent's own, and one per (project, kind, model) a project asked for.

    The mind rides on each project's envelopes (``Envelope.mind``), so one
    agent process thinks with whatever mind each project chose; minds are
    built here, once, and the oldest are dropped past ``keep``.
    """

    def __init__(self, role: str, kind: MindKind = "offline", config: dict[str, Any] | None = None, keep: int = 64) -> None:
        self.role, self.kind, self.config, self.keep = role, kind, config, keep
        self.default: Mind = make_mind(kind, role, 0, config)
        self._built: dict[tuple[str, MindKind, str | None], Mind] = {}

    def unavailable(self) -> str | None:
        """Why this agent could not think with an llm mind (None: it can); `lab run --mind llm` asks first."""
        try:
            return llm_unavailable(self.role, self.config)
        except Exception as e:  # e.g. a broken config file: that is the reason too, reported in the heartbeat
            log.warning("llm mind unavailable", role=self.role, error=f"{type(e).__name__}: {e}")
            return str(e) or type(e).__name__

    def for_project(self, project: str, choice: MindChoice | None) -> Mind:
        """The project's mind, built once per (project, kind, model); the agent's own without a choice."""
        if choice is None or (choice.kind == self.kind and choice.model is None):
            return self.default
        key = (project, choice.kind, choice.model)
        mind = self._built.get(key)
        if mind is None:
            config = dict(self.config or {})
            if choice.model:
                config["model"] = choice.model
            mind = make_mind(choice.kind, self.role, 0, config)
            if len(self._built) >= self.keep:
                self._built.pop(next(iter(self._built)))  # the oldest; it is rebuilt if its project speaks again
            self._built[key] = mind
        return mind


class WiringError(LabError, ValueError):
    """A role setting in the lab config that cannot work (one line for the user)."""


@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer a role reads besides its work stream (bus/partitions: its mail, broadcasts, and
    for the engineer its job outcomes, from the runner and from its own job watch)."""

    stream: str
    durable: str
    filter: str  # one subject: the permissions pin it (bus.permissions)


def envelope_mismatch(subject: str, env: Envelope) -> str | None:
    """Why the host must not believe an envelope read from ``subject``, or None.

    The subject is the one thing a publisher cannot forge: NATS permissions let each user publish
    conversation messages only with itself as the subject's sender, and job statuses only on job
    subjects (bus.permissions). So the envelope's claimed sender must be the subject's, and that
    sender must be allowed to send the envelope's kind (``bus.permissions.SENDERS``): the co-PI
    cannot send a draft or a review, a runner cannot send anything but its job's status.
    """
    if subject.startswith("lab.convo."):
        return convo_refusal(subject, env)
    parts = subject.split(".")
    if subject.startswith("lab.jobs.") and len(parts) == 5 and parts[4] == "status":
        # Only the runner and the engineer may publish here; the body must be about the job the subject names.
        job = getattr(env.body, "job_id", None)
        if env.sender not in ("runner", "engineer") or env.project != parts[2] or job != parts[3] or env.kind != "job_status":
            return f"job status from {env.sender} for {env.project}/{job} ({env.kind}) does not match {subject}"
        return sender_refusal(env.kind, env.sender)
    # No other subject names its publisher: nothing read from one can be believed.
    return f"{env.kind} from {env.sender} came on {subject}, which vouches for no sender"


class Wiring:
    """A role with no ports beyond the bus: the plain ``Context``."""

    runs_jobs: ClassVar[bool] = False  # whether the role starts experiment runners (and so needs their credential)
    # Who hears of a step that failed and of what each message cost: the PI decides a project's next step,
    # and counts its spending (its own included).
    reports_to: ClassVar[RoleName] = "pi"

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

    def admit(self, subject: str, env: Envelope) -> str | None:
        """Why the host must not believe ``env``, read from ``subject`` (it is dead-lettered), or None."""
        return envelope_mismatch(subject, env)

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> Context[Any, Any]:
        return Context(project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache)


class EngineerWiring(Wiring):
    runs_jobs = True

    def __init__(self, home: Path, executor: Executor, runner_nats: NatsAccess | None, job_secret: str | None = None) -> None:
        super().__init__("engineer", home)
        self.executor = executor
        self.jobs = ExecutorJobs(executor, runner_nats, job_secret)

    async def open(self, bus: Bus, states: StateStore) -> list[Coroutine[Any, Any, None]]:
        results = self.jobs.open_results(await ResultCache.open(bus))
        watch = JobWatch(bus, states, self.executor, self.jobs.open_ledger(states), self.jobs.keys, results)
        return [watch.watch_jobs(), watch.wake_waiting()]

    async def close(self) -> None:
        await self.executor.close()

    def admit(self, subject: str, env: Envelope) -> str | None:
        # The runner credential is every job's, and anyone may name any sender in an envelope:
        # a job status counts only with its own job's signature, on whatever subject it came.
        if (mismatch := super().admit(subject, env)) is not None:
            return mismatch
        if isinstance(env.body, JobStatus):
            return self.jobs.keys.refusal(env.project, env.body)
        return None

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> EngineerContext:
        return EngineerContext(project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache, jobs=self.jobs)


class PIWiring(Wiring):
    def __init__(self, home: Path, policy: ApprovalPolicy | None = None, limits: BudgetLimits | None = None) -> None:
        super().__init__("pi", home)
        self.archive: IdeaArchive | None = None
        self.policy = policy or ApprovalPolicy()
        self.limits = limits or BudgetLimits()
        self.states: StateStore | None = None

    async def open(self, bus: Bus, states: StateStore) -> list[Coroutine[Any, Any, None]]:
        self.archive = await IdeaArchive.open(bus)
        self.states = states
        return []

    async def history(self) -> list[ProjectView]:
        """Every project the PI stored, as far as a ProjectView reads it: the lab's archive of job times and mind usage."""
        if self.states is None:
            return []
        out = []
        for key in await self.states.keys("pi."):
            raw, _ = await self.states.read(key)
            doc = RoleDocument.parse(raw, key)
            if doc.state:
                try:
                    out.append(ProjectView.model_validate(doc.state))
                except ValidationError:
                    continue  # a state this PI cannot read is left out, not guessed at
        return out

    async def lab_gpu_hours(self, user: str) -> tuple[float, float]:
        """GPU-hours every project the PI stored has used (each job once), and those of the projects ``user`` started:
        what the per-lab and per-user caps are checked against."""
        from agents.pi.budget import gpu_hours

        total = theirs = 0.0
        for view in await self.history():
            used = gpu_hours(view.runs)
            total += used
            theirs += used if view.user == user else 0.0
        return total, theirs

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> PIContext:
        return PIContext(project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache, archive=self.archive,
                         policy=self.policy, limits=self.limits, lab_gpu_hours=self.lab_gpu_hours,
                         history=self.history, evolve=evolve_loop)


class LiteratureWiring(Wiring):
    def __init__(self, home: Path, settings: Settings) -> None:
        super().__init__("literature", home)
        self.settings = settings

    def context(self, *, project: str, state: Any, mind: Any, artifacts: ArtifactStore, cache: Cache | None) -> LiteratureContext:
        return LiteratureContext(
            project=project, role=self.role, state=state, mind=mind, artifacts=artifacts, cache=cache, settings=self.settings, lab_home=self.home,
        )


def priced(config: LabConfig) -> ApprovalPolicy:
    """The approval policy with a price per 1M tokens: the config's, else the llm mind's model's (0 where none is known)."""
    policy = config.approval
    if policy.usd_per_million_tokens is not None:
        return policy
    from agents.minds.llm.config import load_config
    from agents.pi.budget import PROMPT_SHARE

    try:
        mind = load_config(dict(config.mind))
    except LabError:
        return policy  # the mind's own start says what is wrong with its config; the estimate prices tokens at $0
    price = mind.price(mind.model)
    per_million = PROMPT_SHARE * price.prompt + (1 - PROMPT_SHARE) * price.completion
    return policy.model_copy(update={"usd_per_million_tokens": per_million})


def role_name(role: str) -> RoleName:
    """``role`` checked against the six roles."""
    if role not in ROLES:
        raise WiringError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def wiring_class(role: str) -> type[Wiring]:
    return {"engineer": EngineerWiring, "literature": LiteratureWiring, "pi": PIWiring}.get(role, Wiring)


def literature_settings(config: LabConfig) -> Settings:
    """The config's ``literature:`` section, checked now rather than at the first novelty check."""
    try:
        return Settings.model_validate(config.literature)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WiringError(f"lab config literature.{where}: {first['msg']}") from None


def runner_access(bus_url: str) -> NatsAccess:
    """How the job runners the engineer starts reach the bus (``LAB_RUNNER_*``, set by `lab up` or the Deployment)."""
    s = settings()
    return NatsAccess(url=s.runner_nats_url or bus_url, user=s.runner_user, password=s.secret("runner_password"))


def build(role: str, *, home: Path, config: LabConfig | Mapping[str, Any], bus_url: str, executor: str = "local") -> Wiring:
    """The role's wiring from the lab config (``services.common.config.lab_config``; a mapping is read as one) and the environment."""
    if not isinstance(config, LabConfig):
        try:
            config = parse(LabConfig, dict(config), "lab config")
        except FormatError as e:
            raise WiringError(str(e)) from None
    cls = wiring_class(role)
    if cls is EngineerWiring:
        if executor not in EXECUTOR_KINDS:
            raise WiringError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTOR_KINDS)}")
        return EngineerWiring(home, make_executor(executor, config.executor_options(executor)), runner_access(bus_url), settings().secret("job_secret"))
    if cls is LiteratureWiring:
        return LiteratureWiring(home, literature_settings(config))
    if cls is PIWiring:
        return PIWiring(home, priced(config), config.budgets)
    return Wiring(role_name(role), home)
