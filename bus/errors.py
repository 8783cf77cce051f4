"""The lab's exceptions: one root, so the CLI turns any of them into one line in one place.

The root and the bus's own errors live here, at the bottom layer, so every
layer can subclass them without importing upward. Each layer keeps its local
tree in its own module; this is the whole tree, one class a line with the
module that defines it (tests/unit/test_layers.py checks the drawing against
the code: every class is here, under its own base, and nothing else is):

    LabError                        bus.errors: every error the lab raises on purpose; str(e) is one line for a person
    ├── LabBusError                 bus.errors: the bus
    │   ├── InvalidToken            bus.errors: a subject token with '.', '*', '>', whitespace, or empty
    │   ├── ServerStartError        bus.errors: the embedded nats-server could not start (port in use, bad binary)
    │   ├── ConnectError            bus.errors: no NATS server at the URL, or credentials refused
    │   ├── PermissionDenied        bus.errors: the server refused this user a request (a permissions violation)
    │   ├── StateConflict           bus.errors: a compare-and-set on project state lost to another writer
    │   ├── MessageTooLarge         bus.errors: an envelope over the bus's size limit
    │   ├── ArtifactMissing         bus.errors: an object-store name that holds nothing
    │   ├── BusFailure              bus.errors: any other NATS failure, translated where it leaves bus/ ("NATS: ...")
    │   │   ├── Unanswered          bus.errors: nobody answered the request (no responders, no stream response)
    │   │   │   └── BusTimeout      bus.errors: no answer within the request's timeout
    │   │   └── BusRefused          bus.errors: JetStream answered with an error (its description and code kept)
    │   │       └── NotFound        bus.errors: no such stream, bucket, key or object
    │   ├── CommitRefused           bus.store: the auth service would not commit an object a job wrote
    │   ├── InvalidObjectName       bus.store: an object name that could escape a folder ('..', '/x', '\\', control characters)
    │   ├── JwtError                bus.natsjwt: a token that is not a well-formed, correctly signed NATS JWT
    │   ├── CircuitOpen             bus.retry: an endpoint's breaker is open; the call was not made
    │   └── SnapshotError           bus.snapshot: a stream that could not be read or written whole (`lab backup`, `lab restore`)
    │       └── JsApiError          bus.snapshot: JetStream answered a raw API request with an error (its code kept)
    ├── MindError                   bus.errors: a mind could not answer a step; roles turn it into StepFailed
    │   ├── MindUnavailable         bus.errors: the mind's endpoint is down: the project ends rather than try its next step
    │   │   └── EndpointDown        agents.minds.llm.errors: the endpoint's circuit breaker is open (also a MindFailed)
    │   └── MindFailed              agents.minds.llm.errors: the llm mind's retries ran out (also an LLMMindError)
    ├── LLMMindError                agents.minds.llm.errors: the llm mind
    │   ├── MindConfigError         agents.minds.llm.errors: a mind config that does not load
    │   └── InvalidAnswer           agents.minds.llm.errors: an answer that parsed but is wrong for the step
    ├── UnknownMind                 agents.minds: no mind of that name
    ├── Rejected                    agents.base: a message this role can never handle (dead-lettered at once)
    │   ├── UnhandledKind           agents.base: a kind the role has no handler for
    │   └── UnknownProject          agents.pi.workflow: a message for a project the PI never started
    ├── Permanent                   agents.base: a handler error that retrying cannot fix
    ├── TemplateError               bus.schema.template: a template that does not load
    ├── EditError                   agents.codeedit: a guarded code edit that cannot be made
    │   ├── EditNotApplicable       agents.codeedit: the edit does not fit the code
    │   └── EditForbidden           agents.codeedit: the edit would add what the guard forbids
    ├── StatsError                  agents.stats: statistics that cannot be computed
    ├── PdfError                    agents.writer.pdf: no TeX engine, or LaTeX failed
    ├── EvolveError                 agents.evolve.workflow: a `lab evolve` setting or hook that cannot work
    ├── LitError                    agents.lit.errors: literature
    │   ├── SourceUnavailable       agents.lit.errors: a source unreachable, timed out or failing within its budget
    │   │   └── RateLimited         agents.lit.errors: a source that kept answering 429
    │   ├── PaperNotFound           agents.lit.errors: a lookup by id that found nothing
    │   ├── LibraryError            agents.lit.errors: a library file that cannot be read
    │   └── UnresolvedCitation      agents.lit.errors: LaTeX cites keys the bibliography lacks
    ├── ConfigError                 bus.settings: a LAB_* setting or config file that is unusable (also services.common.config)
    ├── FormatError                 bus.schema.formats: lab.json, config.yaml, a role document, a log line or result.json that is not one
    ├── AuthConfigError             services.auth.callout: the auth service has no job secret or issuer seed
    ├── HostConfigError             services.host.agent: an agent's start options are unusable
    ├── WiringError                 services.host.wiring: a role setting in the lab config that cannot work
    ├── ExecutorError               services.executors.base: an executor that cannot take or run a job
    │   ├── TransientApiError       services.executors.kubernetes: the API server failed for now (retried)
    │   │   └── QuotaExceededError  services.executors.kubernetes: the namespace's quota is spent
    │   └── RejectedError           services.executors.kubernetes: the API server refused the job for good
    ├── SandboxUnavailable          services.runner.sandbox: no working bubblewrap here
    ├── SplitError                  services.runner.split: the runner and experiment containers cannot hand over
    ├── StoreFull                   services.lab.lifecycle: no disk left for the lab's store
    ├── MindRefused                 services.cli.run: the lab's agents cannot think with the asked-for mind
    ├── NoteRefused                 services.read.projects: a co-PI note the lab will not send
    ├── UnknownProject              services.read.export: no project of that name
    ├── BackupError                 services.read.backup: an archive that cannot be written, read or restored
    ├── WebError                    services.web.serve: the web view cannot start
    └── UsageError                  services.cli.errors: bad input on the command line (fail("..."))

``services.lab.supervisor`` raises ``LabError`` itself when the lab cannot start or stop.
Most classes also keep the builtin base they had (ValueError, RuntimeError,
KeyError, LookupError, TimeoutError), so older ``except`` clauses still catch them.
Private retry signals inside one module (``_Retryable``, ``TransportFailed``)
never leave it and stay outside the tree.

NATS's own exceptions never leave bus/: a public coroutine of the bus that
talks to NATS is wrapped in ``translated`` (an async generator's body in ``nats_errors``),
which raises the ``BusFailure`` that ``from_nats`` makes of what nats-py raised.
The translated message is the one line the CLI printed for the nats-py error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import nats.errors
import nats.js.errors

P = ParamSpec("P")
T = TypeVar("T")


class LabError(Exception):
    """Base of every error the lab raises on purpose; its message is one line for a person."""


class LabBusError(LabError):
    """Base of every error the bus raises on purpose."""


class InvalidToken(LabBusError, ValueError):
    pass


class ServerStartError(LabBusError):
    pass


class ConnectError(LabBusError):
    pass


class PermissionDenied(LabBusError):
    """The server refused this user a request; nats-py alone reports that only as a timeout."""


class StateConflict(LabBusError):
    pass


class MessageTooLarge(LabBusError):
    pass


class ArtifactMissing(LabBusError, KeyError):
    pass


class BusFailure(LabBusError):
    """A NATS request or publish failed in a way the bus has no better name for; ``str(e)`` is what NATS said."""


class Unanswered(BusFailure):
    """Nobody answered: no responders, or no response from a stream (a node down, leaders moving, the lab stopped).

    What a caller may retry (bounded): the same request usually goes through once the cluster settles.
    """


class BusTimeout(Unanswered, TimeoutError):
    """No answer within the request's timeout; a refused request looks the same (``Bus.refusal`` tells them apart)."""


class BusRefused(BusFailure):
    """JetStream answered with an error: ``description`` and ``code`` are the server's (e.g. "insufficient storage")."""

    def __init__(self, message: str, description: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.description = description
        self.code = code


class NotFound(BusRefused, LookupError):
    """No such stream, bucket, key or object."""


class MindError(LabError):
    """A mind (any of them: offline, llm) could not answer a step; the role reports StepFailed and the PI decides.

    The workflow (agents.pi.workflow, services.host.agent) catches this, never one mind's own class.
    ``reason`` is what the StepFailed message carries: one line, bounded.
    """

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())[:500]
        super().__init__(self.reason)


class MindUnavailable(MindError):
    """The mind cannot answer any step for a while (its endpoint stopped answering): the PI ends the project with the reason."""


UNANSWERED_TEXT = "NATS did not answer in time (is the lab up, and may this user do that?)"


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def from_nats(error: nats.errors.Error) -> BusFailure:
    """The lab's error for what nats-py raised, with the line the CLI used to print for it."""
    if isinstance(error, nats.errors.TimeoutError):  # nats-py's timeouts (fetch, flush, drain) are builtin TimeoutErrors too
        return BusTimeout(UNANSWERED_TEXT)
    said = f"NATS: {_one_line(error)}"
    if isinstance(error, (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)):
        return Unanswered(said)
    if isinstance(error, nats.js.errors.APIError):
        kind = NotFound if isinstance(error, nats.js.errors.NotFoundError) else BusRefused
        return kind(said, error.description, error.code)
    return BusFailure(said)


@contextmanager
def nats_errors() -> Iterator[None]:
    """Raise what nats-py raises inside as the lab's own ``BusFailure`` (the cause kept for the traceback of a bug)."""
    try:
        yield
    except nats.errors.Error as e:
        raise from_nats(e) from e


def translated(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A coroutine function of the bus whose nats-py errors leave it as ``BusFailure``."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with nats_errors():
            return await fn(*args, **kwargs)

    return call

