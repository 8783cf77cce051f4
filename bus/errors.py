"""The lab's exceptions: one root, so the CLI turns any of them into one line in one place.

The root and the bus's own errors live here, at the bottom layer, so every
layer can subclass them without importing upward. Each layer keeps its local
tree in its own module; this is the whole tree, with where each part lives:

    LabError                        every error the lab raises on purpose; str(e) is one line for a person
    ├── LabBusError                 (here) the bus
    │   ├── InvalidToken            a subject token with '.', '*', '>', whitespace, or empty
    │   ├── ServerStartError        the embedded nats-server could not start (port in use, bad binary)
    │   ├── ConnectError            no NATS server at the URL, or credentials refused
    │   ├── PermissionDenied        the server refused this user a request (a permissions violation)
    │   ├── StateConflict           a compare-and-set on project state lost to another writer
    │   ├── MessageTooLarge         an envelope over the bus's size limit
    │   ├── ArtifactMissing         an object-store name that holds nothing
    │   ├── CommitRefused           bus.store: the auth service would not commit an object a job wrote
    │   └── JwtError                bus.natsjwt: a token that is not a well-formed, correctly signed NATS JWT
    ├── MindError                   (here) a mind could not answer a step; roles turn it into StepFailed
    │   ├── MindFailed              agents.minds.llm.errors: the llm mind's retries ran out
    │   └── MindUnavailable         (here) the mind's endpoint is down: the project ends rather than try its next step
    │       └── EndpointDown        agents.minds.llm.errors: the endpoint's circuit breaker is open
    ├── LLMMindError                agents.minds.llm.errors: MindConfigError, InvalidAnswer, MindFailed
    ├── UnknownMind                 agents.minds: no mind of that name
    ├── Rejected                    agents.base: a message this role can never handle (UnhandledKind, pi.UnknownProject)
    ├── Permanent                   agents.base: a handler error that retrying cannot fix
    ├── TemplateError               bus.schema.template: a template that does not load
    ├── EditError                   agents.codeedit: EditNotApplicable, EditForbidden
    ├── StatsError                  agents.stats
    ├── PdfError                    agents.writer.pdf: no TeX engine, or LaTeX failed
    ├── LitError                    agents.lit.errors: SourceUnavailable (RateLimited), PaperNotFound,
    │                               LibraryError, UnresolvedCitation
    ├── ConfigError                 bus.settings: a LAB_* setting or config file that is unusable (also services.common.config)
    ├── FormatError                 bus.schema.formats: lab.json, config.yaml, a role document, a log line or result.json that is not one
    ├── AuthConfigError             services.auth.callout: the auth service has no job secret or issuer seed
    ├── HostConfigError             services.host.agent: an agent's start options are unusable
    ├── ExecutorError               services.executors.base: TransientApiError (QuotaExceededError), RejectedError
    ├── SandboxUnavailable          services.runner.sandbox: no working bubblewrap here
    ├── StoreFull                   services.lab.lifecycle: no disk left for the lab's store
    ├── MindRefused                 services.cli.run: the lab's agents cannot think with the asked-for mind
    ├── NoteRefused                 services.read.projects: a co-PI note the lab will not send
    ├── UnknownProject              services.read.export: no project of that name
    ├── WebError                    services.web.serve: the web view cannot start
    └── UsageError                  services.cli.errors: bad input on the command line (fail("..."))

``services.lab.supervisor`` raises ``LabError`` itself when the lab cannot start or stop.
Most classes also keep the builtin base they had (ValueError, RuntimeError,
KeyError, LookupError), so older ``except`` clauses still catch them.
Private retry signals inside one module (``_Retryable``, ``TransportFailed``)
never leave it and stay outside the tree.
"""


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
