"""The bytes that cross a process boundary outside the envelope: one model each, for writer and reader alike.

- ``LabFile``: ``$LAB_HOME/lab.json``, what `lab up` records of the lab it runs (its URL, pids, the
  co-PI's credential, its mind and executor) for the CLI, `lab down` and `lab web` on this machine;
- ``LabConfig``: ``$LAB_HOME/config.yaml`` (or ``LAB_CONFIG``), the executor, mind and literature sections;
  each section's options are validated by their owner (the executor's settings, ``MindConfig``,
  the literature ``Settings``), so here they stay mappings;
- ``RoleDocument``: what an agent host stores under ``<role>.<project>`` in the state bucket (the role's
  state, its outbox, what the project spent with it, the project's mind); the CLI, the web view and the
  engineer's job watch read its ``state``; an agent's heartbeat is ``bus.schema.state.Heartbeat``;
- ``JobLogLine``: one line of an experiment's output as the runner publishes it on ``lab.jobs.<p>.<job>.log``;
- the runner's ``result.json`` is the final ``JobStatus`` it published (:func:`read_result`, :func:`dump_result`).

Every reader tolerates the fields an older writer left out (each has a default), so files written
before these models load; a document that is not one gives :class:`FormatError`, one line naming
the document and its first bad field.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from bus.errors import LabError
from bus.schema.base import Model
from bus.schema.kinds import ExecutorKind, MindKind
from bus.schema.messages import JobStatus
from bus.schema.project import ApprovalPolicy, BudgetLimits, MindChoice, Usage

LOCAL_LAB_FILE = "lab.json"
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"

M = TypeVar("M", bound=BaseModel)


class FormatError(LabError, ValueError):
    """A file or message that is not the document it should be; one line naming it and its first bad field."""


def _invalid(what: str, e: ValidationError) -> FormatError:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return FormatError(f"{what}: {where + ': ' if where else ''}{first['msg']}{more}")


def parse(model: type[M], data: str | bytes | dict[str, Any], what: str) -> M:
    """``data`` (JSON text or an already-decoded mapping) as ``model``; FormatError names ``what`` when it is not one."""
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise FormatError(f"{what}: not valid JSON") from None
        raise _invalid(what, e) from None


class LabFile(BaseModel):
    """``lab.json``: the lab `lab up` runs on this machine. Written 0600 by the supervisor alone."""

    # A newer lab may record more; this machine's CLI still finds the URL and its credential.
    model_config = ConfigDict(extra="ignore")

    url: str | None = None
    home: str | None = None
    supervisor_pid: int | None = None
    server_pid: int | None = None
    server_pids: list[int] = []
    cluster: int = 1  # nats-server nodes, which is also the streams' replicas
    agents: dict[str, int] = {}  # instance -> pid
    credentials: dict[str, str] = {}  # only the co-PI's: the roles' passwords are in secrets/
    max_store_bytes: int | None = None
    mind: MindKind = "offline"
    executor: ExecutorKind = "local"
    runner_user: str | None = None  # `job`: each job's runner logs in as its own user (the auth service)
    started: float | None = None

    @classmethod
    def parse(cls, data: str | bytes) -> LabFile:
        return parse(cls, data, LOCAL_LAB_FILE)

    def dump(self) -> str:
        return self.model_dump_json(indent=2)

    def serves(self, url: str | None) -> bool:
        """Whether this is the lab at ``url`` (credentials recorded here are for that server only)."""
        return url is not None and url == self.url


class LabConfig(Model):
    """``config.yaml``: the lab's config. A section name not listed here is a typo, and an error."""

    executor: dict[ExecutorKind, dict[str, Any]] = {}  # options by executor kind (services.executors.*Settings)
    mind: dict[str, Any] = {}  # the llm mind (agents.minds.llm.config.MindConfig)
    literature: dict[str, Any] = {}  # the literature agent (agents.literature.workflow.Settings)
    budgets: BudgetLimits = BudgetLimits()  # the lab's caps on each project's budget (the PI applies them)
    approval: ApprovalPolicy = ApprovalPolicy()  # when a project waits for the co-PI's approval (the PI applies it)

    @field_validator("executor", "mind", "literature", "budgets", "approval", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's empty section (`executor:` or `local:` with nothing under it) is null; it always meant "none".
        if value is None:
            return {}
        if info.field_name == "executor" and isinstance(value, dict):
            return {k: {} if v is None else v for k, v in value.items()}
        return value

    @classmethod
    def parse(cls, text: str, where: str = CONFIG_FILE) -> LabConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FormatError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected a mapping at the top level")
        return parse(cls, data, where)

    def executor_options(self, kind: str) -> dict[str, Any]:
        """The options of one executor (empty when the config says nothing about it)."""
        return next((dict(options) for k, options in self.executor.items() if k == kind), {})


class RoleDocument(BaseModel):
    """What an agent host stores under ``<role>.<project>``: written by that role's host alone."""

    # The role's state is the role's own model (validated by the role); readers see it as a mapping.
    model_config = ConfigDict(extra="ignore")

    state: dict[str, Any] | None = None  # None: the role has no state for this project yet (the PI before it starts)
    outbox: dict[str, list[str]] = {}  # handled message id -> the envelopes (JSON) it produced, the last few
    usage: Usage = Usage()  # what the minds spent on this project in this role
    mind: MindChoice | None = None  # the project's mind, for messages that carry none (job statuses)

    @classmethod
    def parse(cls, data: dict[str, Any] | None, key: str) -> RoleDocument:
        """A stored document (as ``bus.store.StateStore.read`` returns it); None is the empty one."""
        return cls() if data is None else parse(cls, data, f"state {key}")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class JobLogLine(Model):
    """One line of an experiment's output, as the runner publishes it on the job's log subject."""

    job: str
    line: str
    t: float  # when the runner read it (Unix seconds)

    def dump(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, data: bytes) -> JobLogLine:
        return parse(cls, data, "job log line")


def read_result(data: str | bytes) -> JobStatus:
    """The runner's ``result.json``: the final status it published, unsigned."""
    return parse(JobStatus, data, RESULT_FILE)


def dump_result(status: JobStatus) -> str:
    return status.model_dump_json()


__all__ = [
    "CONFIG_FILE", "LOCAL_LAB_FILE", "RESULT_FILE", "FormatError", "JobLogLine", "LabConfig", "LabFile", "RoleDocument",
    "dump_result", "parse", "read_result",
]
