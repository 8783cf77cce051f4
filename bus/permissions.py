"""Who may publish and read what on the bus.

Each role connects as its own NATS user. It may publish conversation messages
only with itself as sender, so a compromised or buggy agent cannot speak as
another; it reads replies only on its own inbox prefix. Reading through
JetStream is held to the same line: a role may create and pull only its own
durable consumers, read and write only its own keys in the state bucket, and
ack only its own consumers' messages — so it cannot read the conversation
addressed to others, or rewrite their state. Acks are allowed in both the old
``$JS.ACK.<stream>.<consumer>...`` and the nats-server 2.14+
``$JS.ACK.<domain>.<account>.<stream>.<consumer>...`` forms.

Artifacts are shared by design (a writer reads the analyst's figures), so the
object store is open to every lab user; the co-PI's CLI reads everything.
"""

from __future__ import annotations

from typing import Any

from bus.messages import ROLES

ADMIN = "lab"  # sets up streams and buckets; used by `lab up` and tests
COPI = "copi"  # the human, through the CLI
RUNNER = "runner"  # job runners
USERS: tuple[str, ...] = (*ROLES, COPI, RUNNER, ADMIN)

STREAMS = ("LAB_CONVO", "LAB_JOBS", "LAB_DLQ", "KV_lab_state", "KV_lab_agents", "KV_lab_cache", "OBJ_lab_artifacts")
_OPEN = ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>"]


def _bucket_reads(stream: str, subjects: str = ">") -> list[str]:
    """Read access to a KV/object bucket's stream, limited to ``subjects`` where the API subject names them."""
    return [
        f"$JS.API.DIRECT.GET.{stream}.{subjects}",
        f"$JS.API.CONSUMER.CREATE.{stream}.*.{subjects}",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",  # pulls from a consumer created under the rule above
    ]


def _artifacts() -> list[str]:
    stream = "OBJ_lab_artifacts"
    return [
        "$O.lab_artifacts.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",  # replacing an object drops its old chunks
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",  # nats-py reads and lists objects through unnamed consumers
        *_bucket_reads(stream),
    ]


def _consumer(stream: str, name: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.INFO.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
        f"$JS.ACK.*.*.{stream}.{name}.>",
    ]


def _role(role: str) -> list[str]:
    allow = [
        f"lab.convo.*.{role}.*",
        f"lab.dlq.{role}",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.FC.>",
        # Whoever starts first creates the lab's streams; the server refuses one that overlaps an existing stream.
        *(f"$JS.API.STREAM.{op}.{s}" for s in STREAMS for op in ("INFO", "CREATE")),
        *_consumer("LAB_CONVO", f"role-{role}"),
        f"$KV.lab_state.{role}.>",
        *_bucket_reads("KV_lab_state", f"$KV.lab_state.{role}.>"),
        f"$KV.lab_agents.{role}",
        f"$KV.lab_agents.{role}.*",  # replicas' heartbeats (pi.2, …)
        f"$KV.lab_cache.{role}.>",
        *_bucket_reads("KV_lab_cache", f"$KV.lab_cache.{role}.>"),
        *_artifacts(),
    ]
    if role == "engineer":
        # The engineer reads job outcomes, and reports failures the runner could not (a pod that never started).
        allow += [*_consumer("LAB_JOBS", "role-engineer-jobs"), "lab.jobs.*.*.status"]
    return allow


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def permissions(user: str) -> dict[str, Any] | None:
    """nats-server permissions for a user; None means unrestricted (the admin)."""
    if user == ADMIN:
        return None
    inbox = f"{inbox_prefix(user)}.>"
    if user == RUNNER:
        # Its bundle in, its results and status out: nothing of the conversation or anyone's state.
        publish = ["lab.jobs.>", "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.FC.>", *_artifacts()]
    elif user == COPI:
        publish = ["lab.convo.*.copi.*", *_OPEN]
    else:
        publish = _role(user)
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox]}}
