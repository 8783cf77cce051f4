"""Who may publish and read what on the bus.

Each role connects as its own NATS user. It may publish conversation messages
only with itself as sender, so a compromised or buggy agent cannot speak as
another; it reads replies only on its own inbox prefix, so it cannot read
another role's replies. JetStream acks go to ``$JS.ACK.>``, which covers both
the old and the nats-server 2.14+ ack subject formats.
"""

from __future__ import annotations

from typing import Any

from bus.messages import ROLES

ADMIN = "lab"  # sets up streams and buckets; used by `lab up` and tests
COPI = "copi"  # the human, through the CLI
RUNNER = "runner"  # job runners
USERS: tuple[str, ...] = (*ROLES, COPI, RUNNER, ADMIN)

_JS_COMMON = ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>"]
# A job runner needs only the artifact store (its bundle in, its results out) and its job subjects:
# no JetStream API beyond that bucket, so it cannot read the conversation or anyone's state.
_ARTIFACTS = "OBJ_lab_artifacts"
_RUNNER_JS = [
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",  # nats-py finds the bucket's stream by subject before reading an object
    f"$JS.API.STREAM.INFO.{_ARTIFACTS}",
    f"$JS.API.STREAM.MSG.GET.{_ARTIFACTS}",
    f"$JS.API.STREAM.PURGE.{_ARTIFACTS}",
    f"$JS.API.DIRECT.GET.{_ARTIFACTS}",
    f"$JS.API.DIRECT.GET.{_ARTIFACTS}.>",
    f"$JS.API.CONSUMER.CREATE.{_ARTIFACTS}",
    f"$JS.API.CONSUMER.CREATE.{_ARTIFACTS}.>",
    f"$JS.API.CONSUMER.DELETE.{_ARTIFACTS}.>",
    f"$JS.API.CONSUMER.INFO.{_ARTIFACTS}.>",
    "$JS.ACK.>",
    "$JS.FC.>",
    "$O.lab_artifacts.>",
]


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def permissions(user: str) -> dict[str, Any] | None:
    """nats-server permissions for a user; None means unrestricted (the admin)."""
    if user == ADMIN:
        return None
    inbox = f"{inbox_prefix(user)}.>"
    if user == RUNNER:
        publish = ["lab.jobs.>", *_RUNNER_JS]
    elif user == COPI:
        publish = ["lab.convo.*.copi.*", *_JS_COMMON]
    else:
        publish = [f"lab.convo.*.{user}.*", f"lab.dlq.{user}", *_JS_COMMON]
        if user == "engineer":
            # The engineer reports failures the runner could not (e.g. a pod that never started).
            publish.append("lab.jobs.*.*.status")
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox]}}
