"""Streams read and written whole, by sequence, through the JetStream API: what `lab backup` and `lab restore` stand on.

Raw API requests (``$JS.API.STREAM.*``), so a stream's configuration and each stored message
(subject, raw header block, payload, sequence) travel as the server gives them, whatever nats-py's
models know of them. services/read/backup.py writes them to an archive; services/lab/restore.py
writes them back. The artifact listing and deletion, and the chunk subjects of the object store
with their age (to purge the chunks of a put that never wrote its meta record), are `lab prune`'s
(services/lab/prune.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats.errors

from bus.client import Bus
from bus.errors import LabBusError

API_TIMEOUT_S = 10.0
NO_MESSAGE = 10037  # the server's err_code for "no message found"


class SnapshotError(LabBusError):
    """A stream that could not be read or written whole, in one line."""


class JsApiError(SnapshotError):
    def __init__(self, subject: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("err_code") or 0)
        self.description = str(error.get("description") or error)
        super().__init__(f"{subject}: {self.description}")


async def request(bus: Bus, subject: str, body: dict[str, Any] | None = None, data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One request whose answer is JetStream JSON (an API call, or a publish's ack); an error answer raises :class:`JsApiError`."""
    payload = data if data is not None else json.dumps(body).encode() if body is not None else b""
    try:
        msg = await bus.nc.request(subject, payload, timeout=API_TIMEOUT_S, headers=headers)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
        refusal = bus.refusal()
        why = f"refused: {refusal}" if refusal else f"no answer ({type(e).__name__})"
        raise SnapshotError(f"the NATS server at {bus.config.url} did not answer {subject}: {why}") from None
    resp: dict[str, Any] = json.loads(msg.data)
    if "error" in resp:
        raise JsApiError(subject, resp["error"])
    return resp


async def stream_names(bus: Bus) -> list[str]:
    names: list[str] = []
    while True:
        resp = await request(bus, "$JS.API.STREAM.NAMES", {"offset": len(names)})
        page = resp.get("streams") or []
        names += page
        if not page or len(names) >= int(resp.get("total", 0)):
            return sorted(names)


async def stream_info(bus: Bus, name: str) -> dict[str, Any]:
    """``{"config": ..., "state": ...}`` as the server gives them."""
    return await request(bus, f"$JS.API.STREAM.INFO.{name}")


async def messages(bus: Bus, name: str, first: int, last: int) -> AsyncIterator[dict[str, Any]]:
    """Every stored message of ``name`` from ``first`` to ``last`` in order (``seq``, ``subject``, ``hdrs``, ``data``, ``time``); gaps skipped."""
    seq = first
    while seq <= last:
        try:
            resp = await request(bus, f"$JS.API.STREAM.MSG.GET.{name}", {"seq": seq, "next_by_subj": ">"})
        except JsApiError as e:
            if e.code == NO_MESSAGE:  # nothing after ``seq``
                return
            raise
        m = resp["message"]
        if int(m["seq"]) > last:
            return
        yield m
        seq = int(m["seq"]) + 1


async def create_stream(bus: Bus, config: dict[str, Any]) -> None:
    """Create a stream from a raw configuration; where the store is smaller than its size limit, with none (as bus.client does)."""
    name = config["name"]
    try:
        await request(bus, f"$JS.API.STREAM.CREATE.{name}", config)
    except JsApiError as e:
        if "insufficient storage" not in e.description or int(config.get("max_bytes") or -1) < 0:
            raise
        await request(bus, f"$JS.API.STREAM.CREATE.{name}", {**config, "max_bytes": -1})


async def delete_stream(bus: Bus, name: str) -> None:
    await request(bus, f"$JS.API.STREAM.DELETE.{name}")


async def publish(bus: Bus, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
    """Publish one message with exactly these headers (no ``Nats-Expected-Stream`` added) and return its ack."""
    return await request(bus, subject, data=data, headers=headers)


async def fill(bus: Bus, subject: str, count: int) -> None:
    """``count`` empty messages on ``subject``, unacknowledged (the next acked publish says where the sequence is)."""
    for _ in range(count):
        await bus.nc.publish(subject, b"")
    await bus.nc.flush()


async def purge_subject(bus: Bus, name: str, subject: str) -> None:
    await request(bus, f"$JS.API.STREAM.PURGE.{name}", {"filter": subject})


async def artifact_infos(bus: Bus) -> list[Any]:
    """Every live object of the artifact store (nats-py's ObjectInfo: name, size, mtime), for retention (services/lab/prune.py)."""
    import nats.js.errors

    from bus.schema.constants import ARTIFACTS_BUCKET

    try:
        obs = await bus.js.object_store(ARTIFACTS_BUCKET)
        return list(await obs.list(ignore_deletes=True))
    except nats.js.errors.NotFoundError:  # no bucket yet, or an empty one (nats-py raises for both)
        return []


async def delete_artifact(bus: Bus, name: str) -> None:
    """Delete one object: its chunks are purged, which only the admin may do."""
    from bus.schema.constants import ARTIFACTS_BUCKET

    obs = await bus.js.object_store(ARTIFACTS_BUCKET)
    await obs.delete(name)


def chunk_prefix(bucket: str) -> str:
    """Where an object store keeps its objects' chunks: ``$O.<bucket>.C.<nuid>`` (a job's nuid holds dots: project.job.id)."""
    return f"$O.{bucket}.C."


async def chunk_subjects(bus: Bus, bucket: str) -> dict[str, int]:
    """Every chunk subject of the object store ``bucket`` with its message count (STREAM.INFO's ``subjects_filter``, paged)."""
    found: dict[str, int] = {}
    while True:
        resp = await request(bus, f"$JS.API.STREAM.INFO.OBJ_{bucket}", {"subjects_filter": chunk_prefix(bucket) + ">", "offset": len(found)})
        page = (resp.get("state") or {}).get("subjects") or {}
        found.update(page)
        if not page or len(found) >= int(resp.get("total") or 0):
            return found


async def last_written(bus: Bus, stream: str, subject: str) -> str | None:
    """When the newest message on ``subject`` was stored (RFC 3339, as the server gives it); None when there is none."""
    try:
        resp = await request(bus, f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
    except JsApiError as e:
        if e.code == NO_MESSAGE:
            return None
        raise
    return str(resp["message"].get("time") or "") or None
