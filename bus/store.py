"""State and artifacts on JetStream: a KV bucket with compare-and-set, and the object store.

State is written only with compare-and-set on the revision read, so two
instances of a role (or a restarted one racing a late one) cannot overwrite
each other: the loser gets StateConflict and retries from the new state.

Every bucket the lab keeps has its typed class here (state, heartbeats, idea
archive, cache, artifacts, and the auth service's object commits); what
nats-py raises in their methods leaves as the lab's ``BusFailure``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import nats
from nats.js.api import Header
from nats.js.errors import KeyNotFoundError, KeyValueError, KeyWrongLastSequenceError, ObjectNotFoundError

from bus.client import Bus
from bus.errors import ArtifactMissing, LabBusError, StateConflict, translated
from bus.schema import Heartbeat
from bus.schema.archive import ArchiveRecord, archive_key, key_token
from bus.schema.constants import AGENTS_BUCKET, ARTIFACTS_BUCKET, CACHE_BUCKET, IDEAS_BUCKET, STATE_BUCKET, object_stream


class StateStore:
    """JSON documents under keys like ``pi.<project>``, with their revisions."""

    def __init__(self, kv: Any):
        self.kv = kv

    @classmethod
    @translated
    async def open(cls, bus: Bus, bucket: str = STATE_BUCKET) -> StateStore:
        return cls(await bus.js.key_value(bucket))

    @translated
    async def read(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """(document, revision); (None, 0) when absent or deleted."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None, entry.revision or 0
        return json.loads(entry.value), entry.revision

    @translated
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

    @translated
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
            except (TimeoutError, nats.errors.TimeoutError):  # nats-py raises either, by where the wait ran out
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


class _NamedBucket:
    """A KV bucket the lab keeps under one fixed name, ``BUCKET``, opened as its typed class."""

    BUCKET: ClassVar[str]

    def __init__(self, kv: Any):
        self.kv = kv

    @classmethod
    @translated
    async def open(cls, bus: Bus) -> Self:
        return cls(await bus.js.key_value(cls.BUCKET))


class Heartbeats(_NamedBucket):
    """The agents bucket: each agent process's last heartbeat under its key (``<role>`` or ``<role>.<n>``), gone with the TTL."""

    BUCKET = AGENTS_BUCKET

    @translated
    async def put(self, key: str, beat: Heartbeat) -> None:
        await self.kv.put(key, beat.model_dump_json().encode())

    @translated
    async def get(self, key: str) -> Heartbeat | None:
        """The last heartbeat under ``key``, or None when there is none (never written, or expired)."""
        try:
            entry = await self.kv.get(key)
        except KeyValueError:  # not found, deleted, expired
            return None
        return Heartbeat.model_validate_json(entry.value) if entry.value else None

    @translated
    async def keys(self) -> list[str]:
        """Every key that holds a heartbeat, sorted."""
        try:
            return sorted(await self.kv.keys())
        except KeyValueError:  # nats-py raises NoKeysError on an empty bucket
            return []


class IdeaArchive(_NamedBucket):
    """The idea archive: one ``ArchiveRecord`` per (template, idea signature, project), kept across projects.

    A record's key and content derive only from the project's state and the
    message being handled, so a redelivered handler writes the same bytes
    under the same key: the put is idempotent.
    """

    BUCKET = IDEAS_BUCKET

    @translated
    async def put(self, record: ArchiveRecord) -> None:
        key = archive_key(record.template, record.signature, record.project)
        await self.kv.put(key, record.model_dump_json().encode())

    @translated
    async def records(self, template: str | None = None) -> list[ArchiveRecord]:
        """Every record for a template (every template's with None: the web view's archive page), oldest first."""
        values = await _latest(self.kv, f"{key_token(template)}." if template is not None else "", headers_only=False)
        out = [ArchiveRecord.model_validate_json(v) for v in values.values() if v]
        return sorted(out, key=lambda r: (r.recorded_at, r.project, r.outcome.idea_id))


def object_digest(data: bytes) -> str:
    """An object's digest as the NATS object store records it in the object's info."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


VERSION_MARK = "~"
MAX_OBJECT_NAME = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidObjectName(LabBusError, ValueError):
    """An object name that could escape a folder it is written to, or hide what it is (refused where names are written)."""


def object_name_refusal(name: object) -> str | None:
    """Why ``name`` may not name an object, or None.

    Names are ``<project>/<path>`` and become paths on disk (`lab export`, the writer's figures): a
    name must be relative, with no empty, ``.`` or ``..`` segment, no backslash and no control
    character, so that no name, once joined to a folder, points outside it.
    """
    if not isinstance(name, str) or not name:
        return "an object name must be a non-empty string"
    shown = repr(name[:120])
    if len(name) > MAX_OBJECT_NAME:
        return f"object name {shown}… is longer than {MAX_OBJECT_NAME} characters"
    if _CONTROL.search(name):
        return f"object name {shown} holds a control character"
    if "\\" in name:
        return f"object name {shown} holds a backslash"
    if name.startswith("/"):
        return f"object name {shown} is an absolute path"
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        return f"object name {shown} has an empty, '.' or '..' segment"
    return None


def check_object_name(name: object) -> str:
    """``name`` if it may name an object; else InvalidObjectName with the reason."""
    if (why := object_name_refusal(name)) is not None:
        raise InvalidObjectName(why)
    assert isinstance(name, str)
    return name


def versioned(name: str, version: int) -> str:
    """The name of a later version: ``p/figures/acc~2.png`` (before the extension, so readers still see ``.png``)."""
    if version <= 1:
        return name
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return f"{folder}/{stem}{VERSION_MARK}{version}{dot}{ext}" if folder else f"{stem}{VERSION_MARK}{version}{dot}{ext}"


_VERSION = re.compile(r"~([0-9]+)(?=\.|$)")


def base_name(name: str) -> str:
    """The name a version was written under: ``p/acc~2.png`` -> ``p/acc.png``."""
    folder, sep, base = name.rpartition("/")
    return folder + sep + _VERSION.sub("", base, count=1)


class Artifacts:
    """The object store; names are ``<project>/<path>``, and an object, once written, is never replaced.

    Replacing an object in a NATS object store purges the old one's chunks, and the purge API
    cannot be limited to one object, so only the admin may purge (bus/permissions.py). Writing a
    name again with other bytes writes the next version (``name~2``, ``name~3``: ``versioned``)
    and returns that name; reading a name returns its latest version. Writing the same bytes
    again (a redelivered handler) writes nothing.
    """

    def __init__(self, obs: Any):
        self.obs = obs

    @classmethod
    @translated
    async def open(cls, bus: Bus) -> Artifacts:
        return cls(await bus.js.object_store(ARTIFACTS_BUCKET))

    @classmethod
    @translated
    async def open_for_job(cls, bus: Bus, commit_subject: str, chunk_prefix: str) -> Artifacts:
        """The store as a job runner with its own NATS user writes it: objects committed by the auth service."""
        return cls(CommittedObjects(bus, await bus.js.object_store(ARTIFACTS_BUCKET), commit_subject, chunk_prefix))

    async def _info(self, name: str) -> Any | None:
        try:
            info = await self.obs.get_info(name)
        except (ObjectNotFoundError, nats.js.errors.NotFoundError):
            return None
        return None if info.deleted else info

    async def _latest(self, name: str) -> tuple[int, Any | None]:
        """(latest version, its info); (0, None) when the name was never written."""
        version, info = 0, None
        while (found := await self._info(versioned(name, version + 1))) is not None:
            version, info = version + 1, found
        return version, info

    @translated
    async def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (or its next version); the name actually written.

        A name that could escape a folder (``object_name_refusal``) raises InvalidObjectName, before anything is written.
        """
        check_object_name(name)
        if VERSION_MARK in name.rpartition("/")[2]:
            raise ValueError(f"artifact name {name!r}: {VERSION_MARK!r} marks versions and is not allowed in a name")
        version, info = await self._latest(name)
        digest = object_digest(data)
        if info is not None and info.digest == digest:
            return versioned(name, version)
        target = versioned(name, version + 1)
        try:
            await self.obs.put(target, data)
        except (nats.errors.Error, nats.js.errors.Error) as e:
            # nats-py cleans up a half-written object with a purge, which only the admin may do: the refusal
            # (a timeout) would hide the real error (e.g. a full store), which it carries as its context.
            # The orphaned chunks stay until the admin purges them.
            cause = e.__context__ if isinstance(e, nats.errors.TimeoutError) else None
            while cause is not None and not isinstance(cause, nats.js.errors.APIError):
                cause = cause.__context__
            if cause is not None:
                raise cause from None
            raise
        return target

    @translated
    async def get(self, name: str) -> bytes:
        """The bytes of ``name``: its latest version, or exactly that version when ``name`` names one."""
        if base_name(name) == name:
            version, _ = await self._latest(name)
            name = versioned(name, max(version, 1))
        try:
            result = await self.obs.get(name)
        except ObjectNotFoundError:
            raise ArtifactMissing(f"no artifact named {name!r}") from None
        return result.data or b""

    @translated
    async def deleted(self, prefix: str) -> list[str]:
        """Names under ``prefix`` every version of which was deleted (only the admin deletes: `lab prune`), each once."""
        infos = await self._infos()
        live = {base_name(i.name) for i in infos if not i.deleted}
        return sorted({base_name(i.name) for i in infos if i.name.startswith(prefix) and i.deleted} - live)

    @translated
    async def list(self, prefix: str) -> list[str]:
        """Names under ``prefix``, each once (not its versions)."""
        return sorted({base_name(i.name) for i in await self._infos() if i.name.startswith(prefix) and not i.deleted})

    async def _infos(self) -> Sequence[Any]:
        """Every object's info, deleted ones included; none in a bucket with none (nats-py raises for it)."""
        try:
            return list(await self.obs.list())
        except nats.js.errors.NotFoundError:
            return []


class CommitRefused(LabBusError, ValueError):
    """An object meta record a job may not write (another project's name, one it would replace), with the reason."""


class CommittedObjects:
    """A job runner's view of the object store: it writes chunks, and the auth service commits each object.

    A runner's NATS user (services/auth/callout.py) may publish object chunks but no meta
    record, because an object's name is one base64 subject token that permissions cannot
    scope by project. So ``put`` writes the chunks on a fresh subject under the job's own chunk
    prefix (``bus.permissions.chunk_prefix``, all its user may write), then asks the auth
    service (``lab.files.<project>.<job>``) to write the meta record, which it does only
    for a name under the job's own project. Reads go to the object store as usual.
    """

    def __init__(self, bus: Bus, obs: Any, commit_subject: str, chunk_prefix: str, chunk_size: int = 128 * 1024, timeout: float = 30.0):
        self.bus, self.obs, self.commit_subject = bus, obs, commit_subject
        self.chunk_prefix = chunk_prefix  # $O.<bucket>.C.<project>.<job>: the only chunk subjects its user may write
        self.chunk_size, self.timeout = chunk_size, timeout

    @translated
    async def put(self, name: str, data: bytes) -> dict[str, Any]:
        # nats-py's own random object id, as its put does, under the job's prefix (a reader takes the nuid as is)
        nuid = self.chunk_prefix.removeprefix(f"$O.{ARTIFACTS_BUCKET}.C.") + "." + self.bus.nc._nuid.next().decode()
        chunk_subject = f"$O.{ARTIFACTS_BUCKET}.C.{nuid}"
        chunks = 0
        for start in range(0, len(data), self.chunk_size):
            await self.bus.js.publish(chunk_subject, data[start : start + self.chunk_size])
            chunks += 1
        info = {
            "name": name, "bucket": ARTIFACTS_BUCKET, "nuid": nuid, "size": len(data), "chunks": chunks,
            "digest": object_digest(data),
            "mtime": datetime.now(UTC).isoformat(), "options": {"max_chunk_size": self.chunk_size},
        }
        reply = await self.bus.nc.request(self.commit_subject, json.dumps(info).encode(), timeout=self.timeout)
        answer = json.loads(reply.data)
        if "error" in answer:
            raise CommitRefused(f"artifact {name!r} not stored: {answer['error']}")
        return info

    async def get_info(self, name: str) -> Any:
        return await self.obs.get_info(name)

    async def get(self, name: str) -> Any:
        return await self.obs.get(name)

    async def list(self) -> Any:
        return await self.obs.list()


class KVCache:
    """The literature cache and friends: a KV bucket whose entries expire with the bucket's TTL."""

    def __init__(self, kv: Any, namespace: str):
        self.kv = kv
        self.namespace = namespace

    @classmethod
    @translated
    async def open(cls, bus: Bus, namespace: str) -> KVCache:
        return cls(await bus.js.key_value(CACHE_BUCKET), namespace)

    def _key(self, key: str) -> str:
        import hashlib

        return f"{self.namespace}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    @translated
    async def get(self, key: str) -> Any | None:
        try:
            entry = await self.kv.get(self._key(key))
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    @translated
    async def put(self, key: str, value: Any) -> None:
        await self.kv.put(self._key(key), json.dumps(value, default=str).encode())


def _meta_subject(name: str) -> str:
    return f"$O.{ARTIFACTS_BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class ObjectCommits:
    """The auth service's side of ``CommittedObjects``: the chunks a job wrote, and the meta record that commits them.

    Whether a job may commit a name is the auth service's rule (services/auth/callout.py);
    this is only how the record is read and written.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.stream = object_stream(ARTIFACTS_BUCKET)

    @translated
    async def chunks_stored(self, nuid: str) -> int:
        """How many chunks the store holds under the object id ``nuid``."""
        subject = f"$O.{ARTIFACTS_BUCKET}.C.{nuid}"
        held = (await self.bus.js.stream_info(self.stream, subjects_filter=subject)).state.subjects or {}
        return int(held.get(subject, 0))

    @translated
    async def meta(self, name: str) -> dict[str, Any] | None:
        """The meta record last written for ``name``, or None when there is none."""
        try:
            last = await self.bus.js.get_last_msg(self.stream, _meta_subject(name))
        except nats.js.errors.NotFoundError:
            return None
        record: dict[str, Any] = json.loads(last.data or b"{}")
        return record

    @translated
    async def write_meta(self, name: str, info: dict[str, Any]) -> None:
        """Write the meta record of ``name``: refused by the stream if another writer got there first."""
        headers = {Header.ROLLUP.value: "sub", "Nats-Expected-Last-Subject-Sequence": "0"}
        await self.bus.js.publish(_meta_subject(name), json.dumps(info).encode(), headers=headers)
