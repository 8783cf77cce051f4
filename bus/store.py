"""State and artifacts on JetStream: a KV bucket with compare-and-set, and the object store.

State is written only with compare-and-set on the revision read, so two
instances of a role (or a restarted one racing a late one) cannot overwrite
each other: the loser gets StateConflict and retries from the new state.
"""

from __future__ import annotations

import json
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ObjectNotFoundError

from bus.client import Bus
from bus.schema.archive import ArchiveRecord, archive_key, key_token
from bus.schema.constants import ARTIFACTS_BUCKET, CACHE_BUCKET, IDEAS_BUCKET, STATE_BUCKET
from bus.errors import ArtifactMissing, StateConflict


class StateStore:
    """JSON documents under keys like ``pi.<project>``, with their revisions."""

    def __init__(self, kv: Any):
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, bucket: str = STATE_BUCKET) -> "StateStore":
        return cls(await bus.js.key_value(bucket))

    async def read(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """(document, revision); (None, 0) when absent or deleted."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None, entry.revision or 0
        return json.loads(entry.value), entry.revision

    async def write(self, key: str, doc: dict[str, Any], revision: int) -> int:
        data = json.dumps(doc, default=str).encode()
        try:
            if revision == 0:
                created: int = await self.kv.create(key, data)
                return created
            updated: int = await self.kv.update(key, data, last=revision)
            return updated
        except (KeyWrongLastSequenceError, nats.js.errors.APIError) as e:
            if isinstance(e, KeyWrongLastSequenceError) or "wrong last sequence" in str(e):
                raise StateConflict(f"state {key} changed since revision {revision}") from None
            raise

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a role's own, e.g. ``engineer.``)."""
        return sorted(await _latest(self.kv, prefix, headers_only=True))


async def _latest(kv: Any, prefix: str, *, headers_only: bool) -> dict[str, bytes]:
    """The latest value of every live key under ``prefix`` (empty values when ``headers_only``).

    Read through a named, filtered consumer: its filter is part of the API
    subject, so the server's permissions can hold a role to its own keys
    (nats-py's own watcher creates unnamed consumers, which cannot be).
    """
    from nats.js import api

    subject = f"{kv._pre}{prefix}>"
    config = api.ConsumerConfig(
        filter_subject=subject,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        headers_only=headers_only,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await kv._js.pull_subscribe(subject, stream=kv._stream, config=config)
    values: dict[str, bytes] = {}
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=0.5)
            except nats.errors.TimeoutError:
                break
            for msg in batch:
                op = (msg.headers or {}).get("KV-Operation")
                key = msg.subject[len(kv._pre) :]
                if op in ("DEL", "PURGE"):
                    values.pop(key, None)
                else:
                    values[key] = msg.data or b""
            if batch and batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
        try:
            await kv._js.delete_consumer(kv._stream, sub._consumer)
        except (nats.errors.Error, OSError):
            pass  # it expires by itself (inactive_threshold)
    return values


class IdeaArchive:
    """The idea archive: one ``ArchiveRecord`` per (template, idea signature, project), kept across projects.

    A record's key and content derive only from the project's state and the
    message being handled, so a redelivered handler writes the same bytes
    under the same key: the put is idempotent.
    """

    def __init__(self, kv: Any):
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> "IdeaArchive":
        return cls(await bus.js.key_value(IDEAS_BUCKET))

    async def put(self, record: ArchiveRecord) -> None:
        key = archive_key(record.template, record.signature, record.project)
        await self.kv.put(key, record.model_dump_json().encode())

    async def records(self, template: str) -> list[ArchiveRecord]:
        """Every record for a template, oldest first."""
        values = await _latest(self.kv, f"{key_token(template)}.", headers_only=False)
        out = [ArchiveRecord.model_validate_json(v) for v in values.values() if v]
        return sorted(out, key=lambda r: (r.recorded_at, r.project, r.outcome.idea_id))


class Artifacts:
    """The object store; names are ``<project>/<path>``."""

    def __init__(self, obs: Any):
        self.obs = obs

    @classmethod
    async def open(cls, bus: Bus) -> "Artifacts":
        return cls(await bus.js.object_store(ARTIFACTS_BUCKET))

    async def put(self, name: str, data: bytes) -> str:
        await self.obs.put(name, data)
        return name

    async def get(self, name: str) -> bytes:
        try:
            result = await self.obs.get(name)
        except ObjectNotFoundError:
            raise ArtifactMissing(f"no artifact named {name!r}") from None
        return result.data or b""

    async def list(self, prefix: str) -> list[str]:
        try:
            infos = await self.obs.list()
        except nats.js.errors.NotFoundError:
            return []
        return sorted(i.name for i in infos if i.name.startswith(prefix) and not i.deleted)


class KVCache:
    """The literature cache and friends: a KV bucket whose entries expire with the bucket's TTL."""

    def __init__(self, kv: Any, namespace: str):
        self.kv = kv
        self.namespace = namespace

    @classmethod
    async def open(cls, bus: Bus, namespace: str) -> "KVCache":
        return cls(await bus.js.key_value(CACHE_BUCKET), namespace)

    def _key(self, key: str) -> str:
        import hashlib

        return f"{self.namespace}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    async def get(self, key: str) -> Any | None:
        try:
            entry = await self.kv.get(self._key(key))
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    async def put(self, key: str, value: Any) -> None:
        await self.kv.put(self._key(key), json.dumps(value, default=str).encode())
