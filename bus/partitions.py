"""Replicas by partition: each project's messages go to one replica of a role, in order.

Replicas sharing one durable would each take messages of the same project
at once (they then conflict on compare-and-set, and order is lost). Instead
NATS itself assigns every project to one of ``PARTITIONS`` partitions: the
``LAB_WORK`` stream sources the conversation and the job statuses through a
deterministic subject transform, ``partition(16, <project>)``::

    lab.convo.<project>.<sender>.<recipient>  ->  lab.part.<p>.convo.<project>.<sender>.<recipient>
    lab.jobs.<project>.<job>.status           ->  lab.part.<p>.jobs.<project>.<job>.status

Each role has one durable per partition (``role-<role>-p<NN>``, so a
partition's position survives any change of the replica count), and replica
``i`` of ``n`` reads the partitions ``p`` with ``p % n == i``: one project is
in one partition, read by one replica, whose lanes handle it in order. The
conversation stream and its subjects stay as they are (the log, replays,
permissions to publish); only the roles' reading moves.

A replica that dies leaves its partitions' messages in their durables (acked
messages are done, unacked ones come back after the ack wait) until the
supervisor (`lab up`) or Kubernetes restarts the same index: a static ``n``,
no lock service of our own.
"""

from __future__ import annotations

from nats.js import api

from bus.schema.constants import CONVO_STREAM, JOBS_STREAM

PARTITIONS = 16
WORK_STREAM = "LAB_WORK"
SOURCED = (CONVO_STREAM, JOBS_STREAM)  # streams whose role inputs LAB_WORK copies (job statuses only, not logs)
WORK_MAX_AGE_S = 7 * 24 * 3600  # a copy for the roles to read; the conversation stream is the lab's log
WORK_MAX_BYTES = 1 << 30


def _transform(src: str, dest_tail: str) -> api.SubjectTransform:
    return api.SubjectTransform(src=src, dest=f"lab.part.{{{{partition({PARTITIONS},1)}}}}.{dest_tail}")


def work_stream_config(replicas: int = 1, after: dict[str, int] | None = None) -> api.StreamConfig:
    """``LAB_WORK``: the roles' inputs, partitioned by project; copies what comes after ``after[stream]`` (a sequence)."""
    after = after or {}
    return api.StreamConfig(
        name=WORK_STREAM,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=WORK_MAX_AGE_S,
        max_bytes=WORK_MAX_BYTES,
        duplicate_window=15 * 60,  # as the conversation's: a source that resends after a leader change adds nothing
        num_replicas=max(1, replicas),
        sources=[
            api.StreamSource(
                name=CONVO_STREAM, opt_start_seq=after.get(CONVO_STREAM, 0) + 1,
                subject_transforms=[_transform("lab.convo.*.*.*", "convo.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}")],
            ),
            api.StreamSource(
                name=JOBS_STREAM, opt_start_seq=after.get(JOBS_STREAM, 0) + 1,
                subject_transforms=[_transform("lab.jobs.*.*.status", "jobs.{{wildcard(1)}}.{{wildcard(2)}}.status")],
            ),
        ],
    )


def owned(index: int, count: int) -> list[int]:
    """The partitions replica ``index`` (0-based) of ``count`` reads."""
    if not 1 <= count <= PARTITIONS:
        raise ValueError(f"replicas must be 1 to {PARTITIONS}, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"replica index {index} is not one of 0..{count - 1}")
    return [p for p in range(PARTITIONS) if p % count == index]


def durable(role: str, partition: int) -> str:
    return f"role-{role}-p{partition:02d}"


def filters(partition: int, originals: list[str]) -> list[str]:
    """What a partition's durable reads: the role's own filters (``lab.convo.…``, ``lab.jobs.…``) within the partition."""
    return [f"lab.part.{partition}.{s.removeprefix('lab.')}" for s in originals]


def origin(subject: str) -> str:
    """The subject a message was published on (``lab.part.<p>.convo.…`` -> ``lab.convo.…``); others as they are."""
    if not subject.startswith("lab.part."):
        return subject
    parts = subject.split(".")
    return ".".join(["lab", *parts[3:]])


def partition_of(subject: str) -> int | None:
    """The partition a ``lab.part.<p>.…`` subject is in, else None."""
    parts = subject.split(".")
    return int(parts[2]) if subject.startswith("lab.part.") and len(parts) > 2 and parts[2].isdigit() else None
