"""Subject names, built in one place and validated token by token.

A token with '.', '*', '>' or whitespace would silently widen or split a
subject (a project named "a.b" would read another project's messages), so
every token is checked where subjects are built.
"""

from __future__ import annotations

import re

from bus.errors import InvalidToken

# Stream names are contracts; subjects re-exports them for the callers that build subjects and name streams together.
from bus.schema.constants import CONVO_STREAM as CONVO_STREAM
from bus.schema.constants import DLQ_STREAM as DLQ_STREAM
from bus.schema.constants import JOBS_STREAM as JOBS_STREAM

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def token(value: str, what: str = "token") -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidToken(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '-' or '_' (no '.', '*', '>', whitespace)"
        )
    return value


def convo(project: str, sender: str, recipient: str) -> str:
    return f"lab.convo.{token(project, 'project')}.{token(sender, 'sender')}.{token(recipient, 'recipient')}"


def convo_for(recipient: str, project: str = "*") -> list[str]:
    """What a role reads: messages to it and to everyone."""
    p = project if project == "*" else token(project, "project")
    return [f"lab.convo.{p}.*.{token(recipient, 'recipient')}", f"lab.convo.{p}.*.all"]


def convo_all(project: str | None = None) -> str:
    return f"lab.convo.{token(project, 'project')}.>" if project else "lab.convo.>"


def job_log(project: str, job: str) -> str:
    return f"lab.jobs.{token(project, 'project')}.{token(job, 'job')}.log"


def job_status(project: str, job: str) -> str:
    return f"lab.jobs.{token(project, 'project')}.{token(job, 'job')}.status"


def job_statuses(project: str = "*") -> str:
    p = project if project == "*" else token(project, "project")
    return f"lab.jobs.{p}.*.status"


def jobs_all(project: str) -> str:
    """Everything the runners said about a project's jobs: statuses and log lines."""
    return f"lab.jobs.{token(project, 'project')}.>"


def dlq(role: str) -> str:
    return f"lab.dlq.{token(role, 'role')}"


def parse_convo(subject: str) -> tuple[str, str, str]:
    """(project, sender, recipient) of a conversation subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["lab", "convo"]:
        raise InvalidToken(f"not a conversation subject: {subject!r}")
    return parts[2], parts[3], parts[4]
