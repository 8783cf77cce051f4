"""Every ``LAB_*`` environment variable, typed, defaulted and described in one model.

A process reads its settings through :func:`settings` (a fresh :class:`Settings`
each call, so a variable changed at run time, or by a test, is seen at once);
nothing else in ``bus/``, ``agents/`` or ``services/`` reads a ``LAB_*`` variable
from ``os.environ`` (``tests/unit/test_settings.py`` walks the code to keep it
so). A value that does not parse is one line naming the variable
(:class:`ConfigError`), never a traceback.

Code that starts a child process writes variables by field name through
:meth:`Settings.environ`, so a misspelt variable is an error here rather than a
setting the child silently never sees.

``python -m bus.settings`` prints the table of every variable; it is committed
as ``docs/settings.md`` and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bus.errors import LabError
from bus.schema.kinds import ExecutorKind, MindKind, OutputMode

PREFIX = "LAB_"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Variables whose value is a secret, and that may instead name a file holding it (``<VAR>_FILE``).
SecretName: TypeAlias = Literal["nats_user", "nats_password", "runner_password", "job_secret", "auth_issuer_seed", "web_token"]
# The environment a Settings is read from when not os.environ (tests and functions given a mapping).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("lab_settings_environ", default=None)


class ConfigError(LabError, ValueError):
    """A setting or config file that cannot work; the message is one line naming it."""


def _setting(default: Any, description: str, read_by: str, *, shown: str | None = None, type_shown: str | None = None, **constraints: Any) -> Any:
    """A field with what the table needs: what it does, who reads it, and how to show its default (and type)."""
    extra: dict[str, str] = {"read_by": read_by}
    if shown is not None:
        extra["shown"] = shown
    if type_shown is not None:
        extra["type_shown"] = type_shown
    return Field(default, description=description, json_schema_extra=extra, **constraints)  # type: ignore[arg-type]


class _Environ(PydanticBaseSettingsSource):
    """``LAB_<FIELD>`` from the environment, exactly as named (no case folding) and empty meaning unset.

    Empty-as-unset is what the lab always did (``LAB_X= lab up`` clears a setting);
    values go to the model as strings, so each field's type parses them.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        environ = _ENVIRON.get()
        value = (os.environ if environ is None else environ).get(env_name(field_name))
        return value, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None and value != "":
                out[key] = value
        return out


class Settings(BaseSettings):
    """What each ``LAB_*`` variable means; the field ``foo_bar`` is the variable ``LAB_FOO_BAR``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # ---------------------------------------------------------------- the lab's home and config
    home: Path | None = _setting(
        None, "The lab's folder: lab.json, secrets/, logs, run/, jobs and the literature library.",
        "services.common.config, agents.lit.index, agents.minds.llm.config", shown="the user data dir",
    )
    config: Path | None = _setting(
        None, "The lab config file (executor, mind and literature sections), or a folder whose *.yaml files are merged in name order.",
        "services.common.config", shown="$LAB_HOME/config.yaml",
    )
    templates: list[Path] = _setting(
        [], "Extra template folders, separated by the OS path separator, searched before the built-in ones.", "agents.templates",
    )
    lit_sources: list[str] | None = _setting(
        None, "Literature sources in order, comma-separated: semantic_scholar, openalex, local, template.", "agents.lit.config",
        shown="all four",
    )
    mind: MindKind = _setting("offline", "The mind `lab up`, `lab run` and `lab agent` use without --mind.", "services.cli.app")
    ready_timeout_s: float = _setting(
        90.0, "How long `lab up` (and the lab `lab run` or `lab evolve` starts) waits for every agent to say it is ready.",
        "services.lab.supervisor", gt=0,
    )
    user: str | None = _setting(
        None, "Who `lab run` says started the project: what a per-user budget (config.yaml budgets:) counts by. A name, not a login.",
        "services.cli.run", shown="the login name", max_length=64,
    )
    executor: ExecutorKind = _setting(
        "local", "Where experiments run without --executor (`lab up`, `lab run`, `lab agent`, `lab evolve`).", "services.cli.app",
    )
    min_free_mb: float = _setting(64.0, "Free disk (MiB) under LAB_HOME below which a lab refuses to start.", "services.lab.lifecycle", ge=0)
    max_store: int = _setting(
        10 << 30, "The embedded server's JetStream store limit, a size like 50G or 512M.", "services.lab.lifecycle",
        shown="`10G`", type_shown="size (bytes)", gt=0,
    )

    # ---------------------------------------------------------------- the llm mind
    mind_config: Path | None = _setting(
        None, "A YAML file of the llm mind's config (its `mind:` section, or the whole file).", "agents.minds.llm.config",
        shown="the `mind:` section of $LAB_HOME/config.yaml",
    )
    llm_model: str | None = _setting(None, "The llm mind's model, over the config file.", "agents.minds.llm.config")
    llm_base_url: str | None = _setting(None, "An OpenAI-compatible endpoint (vLLM, Ollama...), over the config file.", "agents.minds.llm.config")
    llm_api_key_env: str | None = _setting(None, "The variable holding the API key, over the config file.", "agents.minds.llm.config")
    llm_api_key_file: str | None = _setting(None, "A file holding the API key (wins over the variable).", "agents.minds.llm.config")
    llm_timeout_s: float | None = _setting(None, "Seconds per model call, over the config file.", "agents.minds.llm.config")
    llm_temperature: float | None = _setting(None, "Sampling temperature, over the config file.", "agents.minds.llm.config")
    llm_max_tokens: int | None = _setting(None, "Completion token limit (null: none), over the config file.", "agents.minds.llm.config")
    llm_output_mode: OutputMode | None = _setting(None, "How an answer's shape is asked for, over the config file.", "agents.minds.llm.config")
    llm_family: str | None = _setting(None, "The model family autogen is told, over the config file.", "agents.minds.llm.config")

    # ---------------------------------------------------------------- the bus
    nats_url: str | None = _setting(
        None, "The NATS server to use.", "services.common.config, services.auth.callout", shown="the local lab's, else nats://127.0.0.1:4222",
    )
    nats_user: str | None = _setting(None, "The NATS user to log in as.", "services.common.config, services.auth.callout, services.runner.runner")
    nats_user_file: Path | None = _setting(None, "A file holding LAB_NATS_USER (a mounted Secret).", "services.runner.runner")
    nats_password: SecretStr | None = _setting(
        None, "The NATS password (prefer LAB_NATS_PASSWORD_FILE).", "services.common.config, services.auth.callout, services.runner.runner",
    )
    nats_password_file: Path | None = _setting(
        None, "A file holding the NATS password (`lab up` writes one per role).", "services.common.config, services.auth.callout, services.runner.runner",
    )
    nats_ca_file: Path | None = _setting(
        None, "The CA (PEM) that signed the NATS server's certificate: set, the lab speaks TLS from the first byte and trusts only this CA.",
        "bus.client",
    )
    nats_tls_cert: Path | None = _setting(None, "A client certificate (PEM) for NATS, for a server that verifies clients.", "bus.client")
    nats_tls_key: Path | None = _setting(None, "The key (PEM) of LAB_NATS_TLS_CERT.", "bus.client")
    nats_replicas: int | None = _setting(
        None, "Replicas of the lab's streams and buckets: the number of NATS nodes (1, 3, 5).", "services.common.config",
        shown="the local lab's cluster, else 1", ge=1,
    )

    # ---------------------------------------------------------------- job runners' access (the engineer)
    runner_nats_url: str | None = _setting(None, "The NATS URL job runners connect to.", "services.host.wiring", shown="the agent's own")
    runner_user: str | None = _setting(
        None, "The NATS user of job runners (`job`: each job its own user, via the auth service).", "services.host.wiring",
    )
    runner_password: SecretStr | None = _setting(None, "The shared runner user's password.", "services.host.wiring")
    runner_password_file: Path | None = _setting(None, "A file holding the runner password.", "services.host.wiring")
    job_secret: SecretStr | None = _setting(
        None, "The engineers' job secret: each job's status key derives from it.", "services.host.wiring, services.auth.callout",
    )
    job_secret_file: Path | None = _setting(
        None, "A file holding the job secret (`lab up` writes one).", "services.host.wiring, services.auth.callout",
    )

    # ---------------------------------------------------------------- the auth service
    auth_issuer_seed: SecretStr | None = _setting(None, "The auth callout's signing seed (prefer the file).", "services.auth.callout")
    auth_issuer_seed_file: Path | None = _setting(None, "A file holding the auth callout's signing seed.", "services.auth.callout")
    auth_ready_file: Path | None = _setting(None, "A file the auth service writes once it serves (`lab up` waits for it).", "services.auth.callout")
    job_token_ttl_s: float = _setting(86400.0, "Seconds a job runner's NATS token stays valid.", "services.auth.callout", gt=0)

    # ---------------------------------------------------------------- the web view
    web_token: SecretStr | None = _setting(None, "A fixed token for the web view (16 characters or more).", "services.web.serve", shown="a new one per start")
    web_token_file: Path | None = _setting(None, "A file holding the web view's token (a mounted Secret).", "services.web.serve")
    web_hosts: list[str] = _setting(
        [], "Host names the web view answers besides 127.0.0.1, localhost and its --host, comma-separated (any other Host header: 400).",
        "services.web.serve", shown="none",
    )

    # ---------------------------------------------------------------- agent processes
    concurrency: int = _setting(8, "Projects one agent handles at once.", "services.host.agent", ge=1)
    concurrency_pi: int | None = _setting(None, "LAB_CONCURRENCY for the PI alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    concurrency_literature: int | None = _setting(None, "LAB_CONCURRENCY for the literature agent alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    concurrency_engineer: int | None = _setting(None, "LAB_CONCURRENCY for the engineer alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    concurrency_analyst: int | None = _setting(None, "LAB_CONCURRENCY for the analyst alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    concurrency_writer: int | None = _setting(None, "LAB_CONCURRENCY for the writer alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    concurrency_reviewer: int | None = _setting(None, "LAB_CONCURRENCY for the reviewer alone.", "services.host.agent", shown="LAB_CONCURRENCY", ge=1)
    replica: int | None = _setting(
        None, "This process's index (0-based) among its role's replicas.", "services.host.agent", shown="a StatefulSet pod's ordinal, else 0", ge=0,
    )
    replicas: int = _setting(1, "How many processes run this role (they split its 16 partitions).", "services.host.agent", ge=1)
    instance: str | None = _setting(
        None, "This process's name (`pi-2`): its heartbeat key and run/ files.", "services.host.agent", shown="the role, then -N by replica",
    )
    fault_delay_after_store: float = _setting(
        0.0, "Fault injection (chaos tests): seconds to pause between storing state and publishing.", "services.host.agent", ge=0,
    )
    bench_mind_latency_s: float = _setting(0.0, "A simulated mind call of this many seconds per message (bench/lab.py).", "services.host.agent", ge=0)
    metrics_port: int | None = _setting(
        None, "The port an agent serves its Prometheus metrics on, at /metrics (0: any free port).", "services.host.agent",
        shown="none: no metrics served", ge=0, le=65535,
    )

    # ---------------------------------------------------------------- the job runner and its experiment
    job: SecretStr | None = _setting(None, "The job as JSON (Docker; elsewhere LAB_JOB_FILE keeps it out of the environment).", "services.runner.runner")
    job_file: Path | None = _setting(None, "A file holding the job as JSON (mode 0600, or a mounted Secret).", "services.runner.runner")
    job_dir: Path | None = _setting(
        None, "The runner's work folder: its log, env.json, result.json.", "services.runner.runner", shown="$LAB_SCRATCH/<job>, else a new temp folder",
    )
    scratch: Path | None = _setting(None, "A container's writable scratch volume, where the job folder goes.", "services.runner.runner")
    shared_dir: Path | None = _setting(
        None, "The volume the runner and the experiment container share (Docker, Kubernetes).", "services.runner.runner, services.runner.launcher",
    )
    runner_metrics_port: int | None = _setting(
        None, "The port a job's runner serves its Prometheus metrics on, at /metrics, while the job runs (0: any free port; "
        "the Kubernetes executor sets it in job pods).", "services.runner.runner", shown="none: no metrics served", ge=0, le=65535,
    )
    executor_kind: ExecutorKind = _setting("local", "The executor that started this runner, recorded in env.json.", "services.runner.runner")
    node_name: str | None = _setting(
        None, "Set by the executor: the node the job runs on (Kubernetes: the pod's, from the downward API), recorded in env.json.",
        "services.runner.runner", shown="the host name",
    )
    job_image: str | None = _setting(
        None, "Set by the executor: the container image the job runs in, with its digest or id when known, recorded in env.json.",
        "services.runner.runner",
    )
    job_max_processes: int = _setting(
        256, "Tasks (processes and threads) a job may run at once before it is killed (a fork or thread bomb).", "services.runner.runner", ge=1,
    )
    runner_connect_timeout_s: float = _setting(30.0, "Seconds the runner waits for NATS before exiting for a retry.", "services.runner.runner", gt=0)
    runner_alive_stale_s: float = _setting(
        60.0, "Seconds without the runner's heartbeat before the experiment container stops.", "services.runner.split, services.runner.launcher", gt=0,
    )
    launcher_start_timeout_s: float = _setting(
        900.0, "Seconds the experiment container waits for the runner to hand it the code.", "services.runner.launcher", gt=0,
    )
    job_output_max_bytes: int = _setting(
        64 << 20, "Bytes a job may upload in all, and a checkpoint may hold (a file counts its apparent size or its blocks, the larger).",
        "services.runner.outputs, services.runner.checkpoint", shown="`64M`", type_shown="size (bytes)", gt=0,
    )
    job_output_file_max_bytes: int = _setting(
        32 << 20, "Bytes one uploaded output file may hold (a sparse file counts its apparent size).", "services.runner.outputs",
        shown="`32M`", type_shown="size (bytes)", gt=0,
    )
    job_output_max_files: int = _setting(200, "Output files a job may upload (results and figures).", "services.runner.outputs", ge=1)
    job_final_info_max_bytes: int = _setting(
        256 << 10, "Bytes a final_info.json may hold; it travels in the job's status and the results.", "services.runner.runner",
        shown="`256K`", type_shown="size (bytes)", gt=0,
    )
    job_log_line_max_bytes: int = _setting(
        4096, "Bytes of one line of the experiment's output kept; the rest is cut with a marker.", "services.runner.outputs, services.runner.split",
        ge=80,
    )
    job_log_keep_bytes: int = _setting(
        1 << 20, "Bytes of a job's log kept at its start, and again at its end; what lies between is dropped with a marker.",
        "services.runner.outputs", shown="`1M`", type_shown="size (bytes)", ge=4096,
    )
    term_grace_s: float = _setting(20.0, "Seconds an experiment gets after SIGTERM to save its checkpoint.", "services.runner.runner", ge=0)
    node_rank: int = _setting(
        0, "Set by the executor on a multi-node job: this pod's rank (its completion index); 0 reports the result.",
        "services.runner.runner, services.runner.launcher", ge=0,
    )
    rdzv_endpoint: str | None = _setting(
        None, "Set by the executor on a multi-node job: host:port of node 0's torchrun rendezvous.",
        "services.runner.runner, services.runner.launcher",
    )
    gang_settle_s: float = _setting(
        60.0, "Multi-node: seconds a rank whose experiment failed waits to be stopped (a peer's preemption) before failing.",
        "services.runner.runner", ge=0,
    )
    checkpoint_sync_s: float = _setting(30.0, "Seconds between uploads of a resumable experiment's checkpoint.", "services.runner.checkpoint", gt=0)
    checkpoint_dir: Path | None = _setting(None, "Set by the runner: where a resumable experiment keeps its checkpoint.", "templates' experiment.py")
    checkpoint_every: int | None = _setting(
        None, "Steps between a resumable experiment's checkpoints; the runner passes it on.", "services.runner.runner, templates' experiment.py",
        shown="the template's", ge=1,
    )
    pip_index_url: str | None = _setting(
        None, "The package index a template's requirements are installed from (pip's --index-url).", "services.runner.envs",
        shown="pip's own (PyPI, or PIP_INDEX_URL)",
    )
    pip_args: str = _setting(
        "", "Extra pip arguments for installing a template's requirements, split like a shell line (e.g. `--no-index --find-links DIR`).",
        "services.runner.envs",
    )
    env_build_timeout_s: float = _setting(
        900.0, "Seconds building a template's environment (venv + pip install) may take.", "services.runner.envs", gt=0,
    )
    bwrap: str = _setting("bwrap", "The bubblewrap binary; one that does not resolve means no sandbox.", "services.runner.sandbox")
    sandbox_uid: int = _setting(
        65534, "Host uid and gid the sandbox runs as when the lab runs as root (never 0).", "services.runner.sandbox", ge=1,
    )
    unsafe_no_sandbox: bool = _setting(
        False, "Set by --unsafe-no-sandbox: run model-written code unconfined where no sandbox works.", "services.runner.sandbox",
    )
    tex_unsandboxed: bool = _setting(
        False, "Build the paper's PDF with TeX unconfined where bubblewrap does not work (else no PDF, with the reason).",
        "agents.writer.texbox",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the process environment (or the mapping given to settings()): no .env file, no secrets dir.
        return init_settings, _Environ(settings_cls)

    @field_validator("templates", mode="before")
    @classmethod
    def _path_list(cls, value: Any) -> Any:
        return [p for p in value.split(os.pathsep) if p] if isinstance(value, str) else value

    @field_validator("lit_sources", "web_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value

    @field_validator("llm_timeout_s", "llm_temperature", "llm_max_tokens", "llm_output_mode", "llm_family", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        # These were YAML scalars: `null` clears what the config file set (max_tokens: no limit).
        return None if isinstance(value, str) and value.strip() in ("null", "Null", "NULL", "~") else value

    @field_validator(
        "max_store", "job_output_max_bytes", "job_output_file_max_bytes", "job_final_info_max_bytes", "job_log_keep_bytes", mode="before",
    )
    @classmethod
    def _size(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        raw = value.strip().upper().removesuffix("B").removesuffix("I")
        try:
            return int(float(raw[:-1] if raw[-1:] in _UNITS else raw) * _UNITS.get(raw[-1:], 1))
        except (ValueError, IndexError):
            raise ValueError("not a size like 10G or 512M") from None

    @field_validator("unsafe_no_sandbox", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        # The CLI writes "1"; anything else that is not a boolean word stays off, as before.
        if isinstance(value, str) and value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            return False
        return value

    def secret(self, name: SecretName) -> str | None:
        """A credential from ``LAB_<NAME>``, else from the file ``LAB_<NAME>_FILE`` names (a Secret mount or `lab up`'s 0600 file)."""
        value = getattr(self, name)
        if value:
            return value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        path: Path | None = getattr(self, f"{name}_file")
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{env_name(name)}_FILE={path}: cannot read the credential ({e.strerror})") from None

    def concurrency_of(self, role: str) -> int:
        """``LAB_CONCURRENCY_<ROLE>``, else ``LAB_CONCURRENCY``."""
        own: int | None = getattr(self, f"concurrency_{role}", None)
        return own if own is not None else self.concurrency

    @classmethod
    def environ(cls, **values: object) -> dict[str, str]:
        """Variables for a child process, by field name: ``environ(home=p)`` is ``{"LAB_HOME": str(p)}``."""
        out: dict[str, str] = {}
        for name, value in values.items():
            if name not in cls.model_fields:
                raise KeyError(f"no setting {name!r} (bus.settings.Settings)")
            if value is None:
                continue
            if isinstance(value, bool):
                out[env_name(name)] = "1" if value else "0"
            elif isinstance(value, (list, tuple)):
                out[env_name(name)] = (os.pathsep if name == "templates" else ",").join(map(str, value))
            else:
                out[env_name(name)] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return out


def env_name(field: str) -> str:
    """The variable of a field: ``home`` is ``LAB_HOME``."""
    return PREFIX + field.upper()


def _phrase(error: Any) -> str:
    """Pydantic's complaint in the words the lab always used for a bad variable."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "expected a whole number"
    if kind in ("float_parsing", "float_type"):
        return "expected a number"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge" if kind == "greater_than_equal" else "gt")
        shown = int(bound) if isinstance(bound, float) and bound.is_integer() else bound  # 0, not 0.0
        return f"must be at least {shown}" if kind == "greater_than_equal" else f"must be more than {shown}"
    if kind == "bool_parsing":
        return "expected true or false"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}"
    msg: str = error["msg"]
    return msg.removeprefix("Value error, ")


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings now, from ``os.environ`` or from ``environ``; ConfigError names the first bad variable."""
    token = _ENVIRON.set(environ)
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{env_name(name)}={first['input']!r}: {_phrase(first)}{more}") from None
    finally:
        _ENVIRON.reset(token)


# ---------------------------------------------------------------- the table (docs/settings.md)

INTRO = """\
# Settings

Every `LAB_*` environment variable the lab reads, generated from `bus/settings.py`
(`python -m bus.settings > docs/settings.md`; `tests/unit/test_settings.py` fails when
the two differ). Each process reads them when it needs them, not once at import, and
an empty variable counts as unset. A value that does not parse stops the command with
one line naming the variable. Credentials (`*_PASSWORD`, `*_SECRET`, `*_SEED`, `*_TOKEN`)
may instead name a file with `<VAR>_FILE`, which is how `lab up`, Docker and Kubernetes
pass them: another process can read an environment, a file's mode says who may read it.
"""


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if args and len(args) < len(get_args(annotation)):  # X | None
        return _type_name(args[0]) if len(args) == 1 else " \\| ".join(_type_name(a) for a in args)
    return {Path: "path", SecretStr: "secret", str: "text", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _default(field: FieldInfo, extra: dict[str, Any]) -> str:
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table() -> str:
    """The Markdown of docs/settings.md: the intro, then one row per variable."""
    rows = ["| Variable | Type | Default | What it does | Read by |", "| --- | --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        type_shown = extra.get("type_shown") or _type_name(field.annotation)
        rows.append(f"| `{env_name(name)}` | {type_shown} | {_default(field, extra)} | {field.description} | {extra.get('read_by', '')} |")
    return INTRO + "\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
