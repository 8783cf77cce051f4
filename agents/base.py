"""The shared shape of a role: typed handlers that read a message and say what follows.

A role knows nothing of subjects, consumers or acks (the host in
``services/host/agent.py`` does the wiring). A handler gets the message and a
``Context`` holding the role's state for that project, the artifact store and
the role's mind (and, for roles that reach outside the bus, the role's own
typed ports: ``agents/engineer.EngineerContext``, ``agents/literature.LiteratureContext``,
built by ``services/wiring``); it mutates the state and calls ``ctx.send``. The host stores
the new state together with the outputs, then publishes them with ids derived
from the input, then acks: a crash anywhere repeats the same effects, which
the bus drops as duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from bus.errors import ArtifactMissing, LabError
from bus.schema import Envelope, Recipient, RoleName, TemplateError


class ArtifactStore(Protocol):
    """Object store names are ``<project>/<path>``; put returns the name written (a new version when the name exists), get the latest."""

    async def put(self, name: str, data: bytes) -> str: ...
    async def get(self, name: str) -> bytes: ...
    async def list(self, prefix: str) -> list[str]: ...


class Cache(Protocol):
    """A JSON cache with a time to live (a NATS KV bucket in the lab)."""

    async def get(self, key: str) -> Any | None: ...
    async def put(self, key: str, value: Any) -> None: ...


class EmptyState(BaseModel):
    model_config = ConfigDict(extra="forbid")


S = TypeVar("S")  # the role's State model (None for the PI before its project starts)
M = TypeVar("M")  # the role's mind (a Protocol in agents/minds/base.py)


@dataclass(kw_only=True)
class Context(Generic[S, M]):
    """What a handler gets for one message of one project.

    Roles that need more than the bus (the engineer's jobs, the literature
    settings) subclass it with typed ports; ``services/wiring`` builds them.
    """

    project: str
    role: RoleName
    state: S
    artifacts: ArtifactStore
    mind: M
    cache: Cache | None = None
    clock: Callable[[], float] = time.time
    outputs: list[tuple[BaseModel, Recipient]] = field(default_factory=list)

    @property
    def log(self) -> Any:
        return structlog.get_logger().bind(role=self.role, project=self.project)

    def send(self, body: BaseModel, to: Recipient) -> None:
        self.outputs.append((body, to))


Handler = Callable[[Any, Any, Envelope, Any], Awaitable[None]]


def on(kind: type[BaseModel]) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Mark a method as the handler of one message kind."""

    def mark(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        # setattr: a Callable type has no attributes to assign, so mypy refuses the plain assignment ruff would prefer.
        setattr(fn, "__lab_kind__", kind.model_fields["type"].default)  # noqa: B010
        return fn

    return mark


class Rejected(LabError):
    """A message this role can never handle (retrying will not help): dead-lettered at once with the reason."""


class UnhandledKind(Rejected):
    """A role received a kind it has no handler for."""


class Permanent(LabError):
    """A handler error that cannot succeed on retry: the host dead-letters the message at once, with the reason."""


def is_permanent(error: BaseException) -> bool:
    """Whether retrying the message can only fail the same way.

    Stored data that does not validate, an object that is not in the store, a
    template that does not load, bytes that are not text: none of these change
    between deliveries, so backing off only delays the dead letter. Connection
    losses, timeouts and state conflicts are transient and keep the backoff.
    """
    return isinstance(error, (Permanent, ArtifactMissing, ValidationError, TemplateError, UnicodeError))


class Role:
    """Base of the six roles. Subclasses set ``name``, ``State`` and decorate handlers with ``@on``."""

    name: ClassVar[RoleName]
    State: ClassVar[type[BaseModel]] = EmptyState

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            kind = getattr(fn, "__lab_kind__", None)
            if kind:
                self._handlers[kind] = fn

    @property
    def kinds(self) -> set[str]:
        return set(self._handlers)

    async def handle(self, env: Envelope, ctx: Context[Any, Any]) -> None:
        fn = self._handlers.get(env.kind)
        if fn is None:
            raise UnhandledKind(f"{self.name} has no handler for {env.kind!r}")
        await fn(self, env.body, env, ctx)
