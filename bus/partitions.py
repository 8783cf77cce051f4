"""Replicas by partition: each project's messages go to one replica of a role, in order.

Replicas sharing one durable would each take messages of the same project
at once (they then conflict on compare-and-set, and order is lost). Instead
NATS itself assigns every project to one of ``PARTITIONS`` partitions. Each
role has its own work stream, ``LAB_WORK_<ROLE>``, which sources what the
role reads through deterministic subject transforms (``partition(16, <project>)``)::

    lab.convo.<project>.<sender>.<role>  ->  lab.work.<role>.<p>.convo.<project>.<sender>.<role>
    lab.convo.<project>.<sender>.all     ->  lab.work.<role>.<p>.convo.<project>.<sender>.all
    lab.jobs.<project>.<job>.status      ->  lab.work.engineer.<p>.jobs.<project>.<job>.status   (the engineer only)

A stream copies one source in that source's order, so one project's mail and
broadcasts reach its partition in the order they were published. Each role
has one durable per partition (``role-<role>-p<NN>``) with ONE filter,
``lab.work.<role>.<p>.>``: the filter the permissions pin in the durable's
create subject (bus.permissions). A partition's position survives any change
of the replica count; replica ``i`` of ``n`` reads the partitions ``p`` with
``p % n == i`` (one replica reads all sixteen). The conversation stream and
its subjects stay as they are (the log, replays, permissions to publish);
only the roles' reading goes through the work streams.

A work stream is a work queue: a message leaves it when its partition's
durable acks it (the partitions' filters do not overlap, which a work queue
requires), so it holds only what the role has yet to handle, and needs no
size limit (none that would drop unread messages, none reserved in the
store): it is bounded by the conversation's own traffic, and by seven days.

A replica that dies leaves its partitions' messages in their durables (acked
messages are done, unacked ones come back after the ack wait) until the
supervisor (`lab up`) or Kubernetes restarts the same index: a static ``n``,
no lock service of our own.
"""

from __future__ import annotations

from nats.js import api

from bus.schema import ROLES
from bus.schema.constants import CONVO_STREAM, JOBS_STREAM

PARTITIONS = 16
WORK_MAX_AGE_S = 7 * 24 * 3600  # a copy for the role to read; the conversation stream is the lab's log
DUPLICATE_WINDOW_S = 15 * 60  # as the conversation's: a source that resends after a leader change adds nothing
_PART = f"{{{{partition({PARTITIONS},1)}}}}"  # the project is the first wildcard of every source filter below


def work_stream(role: str) -> str:
    """The stream a role reads from: ``LAB_WORK_PI``, ``LAB_WORK_ENGINEER``…"""
    return f"LAB_WORK_{role.upper()}"


WORK_STREAMS = tuple(work_stream(r) for r in ROLES)


def inputs(role: str) -> dict[str, list[str]]:
    """What a role reads, by source stream: its own mail and the broadcasts; the engineer also its jobs' statuses."""
    out = {CONVO_STREAM: [f"lab.convo.*.*.{role}", "lab.convo.*.*.all"]}
    if role == "engineer":
        out[JOBS_STREAM] = ["lab.jobs.*.*.status"]
    return out


def _transform(role: str, src: str) -> api.SubjectTransform:
    """``lab.<a>.<project>.<b>.<c>`` -> ``lab.work.<role>.<p>.<a>.<project>.<b>.<c>``, literal tokens kept."""
    tokens = src.split(".")
    wild, tail = 0, []
    for t in tokens[1:]:
        if t == "*":
            wild += 1
            tail.append(f"{{{{wildcard({wild})}}}}")
        else:
            tail.append(t)
    return api.SubjectTransform(src=src, dest=f"lab.work.{role}.{_PART}.{'.'.join(tail)}")


def work_stream_config(role: str, replicas: int = 1, after: dict[str, int] | None = None) -> api.StreamConfig:
    """The role's work stream; copies what comes after ``after[stream]`` (a sequence) of each source."""
    after = after or {}
    return api.StreamConfig(
        name=work_stream(role),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        max_age=WORK_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=max(1, replicas),
        sources=[
            api.StreamSource(name=stream, opt_start_seq=after.get(stream, 0) + 1, subject_transforms=[_transform(role, f) for f in filters])
            for stream, filters in inputs(role).items()
        ],
    )


def partition(project: str) -> int:
    """The partition NATS's ``partition(16, 1)`` puts a project in (FNV-1a 32 of the token, mod 16).

    The server's mapping is the authority (tests check this agrees with it); this tells a caller which
    durable holds a project without reading the stream (the bench, tests).
    """
    h = 0x811C9DC5
    for byte in project.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


def owned(index: int, count: int) -> list[int]:
    """The partitions replica ``index`` (0-based) of ``count`` reads."""
    if not 1 <= count <= PARTITIONS:
        raise ValueError(f"replicas must be 1 to {PARTITIONS}, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"replica index {index} is not one of 0..{count - 1}")
    return [p for p in range(PARTITIONS) if p % count == index]


def durable(role: str, partition: int) -> str:
    return f"role-{role}-p{partition:02d}"


def partition_filter(role: str, partition: int) -> str:
    """A partition durable's one filter (pinned by the permissions)."""
    return f"lab.work.{role}.{partition}.>"


def consumers(role: str) -> list[tuple[str, str, str]]:
    """Every (stream, durable, filter) a role may read through, whatever its replica count."""
    return [(work_stream(role), durable(role, p), partition_filter(role, p)) for p in range(PARTITIONS)]


def origin(subject: str) -> str:
    """The subject a message was published on (``lab.work.<role>.<p>.convo.…`` -> ``lab.convo.…``); others as they are."""
    if not subject.startswith("lab.work."):
        return subject
    parts = subject.split(".")
    return ".".join(["lab", *parts[4:]])


def partition_of(subject: str) -> int | None:
    """The partition a ``lab.work.<role>.<p>.…`` subject is in, else None."""
    parts = subject.split(".")
    return int(parts[3]) if subject.startswith("lab.work.") and len(parts) > 3 and parts[3].isdigit() else None
