"""A connection to the lab's bus: streams, publishing with de-duplication ids, dead letters.

Why a wrapper over nats-py at all: every publish must carry a ``Nats-Msg-Id``
(exactly-once effects), every envelope must pass the size limit, and the
streams/buckets must exist with the same settings whoever starts first.

It is also the one door to NATS: nothing outside bus/ imports nats or touches
``Bus.nc``/``Bus.js`` (tests/unit/test_layers.py checks), so what services need
(core publishes, request services, ordered feeds, the store's usage) is a typed
method here, and what nats-py raises leaves as the lab's ``BusFailure``
(``bus.errors.translated``). ``nc`` and ``js`` stay public for tests and the
benchmarks, which measure NATS itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError

from bus import partitions, subjects
from bus.errors import ConnectError, MessageTooLarge, nats_errors, translated
from bus.permissions import inbox_prefix
from bus.retry import RetryPolicy
from bus.schema import ROLES, Envelope, encode
from bus.schema.constants import AGENTS_BUCKET, AGENTS_TTL_S, ARTIFACTS_BUCKET, CACHE_BUCKET, IDEAS_BUCKET, RESULTS_BUCKET, STATE_BUCKET
from bus.settings import settings

MAX_ENVELOPE_BYTES = 512 * 1024
DUPLICATE_WINDOW_S = 15 * 60
# Retention (limits policy, oldest dropped first): the conversation is the lab's log and is kept
# whole up to CONVO_MAX_BYTES; job logs for 7 days up to JOBS_MAX_BYTES; dead letters 90 days.
# nats-server reserves each stream's max_bytes against its max_file_store (the embedded server's is 10G).
CONVO_MAX_BYTES = 4 << 30
JOBS_MAX_BYTES = 1 << 30
DLQ_MAX_BYTES = 256 << 20
# A fresh cluster answers "JetStream not ready" until it has elected its meta leader: asked again every 0.3 s.
JETSTREAM_READY_EVERY_S = 0.3

# A request service's handler: (subject, request bytes) -> reply bytes.
Handler = Callable[[str, bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class StoreUsage:
    """The account's JetStream file store: bytes used, and its own limit (None when the account sets none)."""

    used: int
    limit: int | None


class Feed:
    """An ordered read of a stream's subject from its first message, live: each message's bytes, in order.

    Subscribed when made (so a refusal shows at once, not in the task that reads it); ``close`` unsubscribes.
    """

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with nats_errors():
            async for msg in self._sub.messages:
                yield msg.data

    @translated
    async def close(self) -> None:
        await self._sub.unsubscribe()



@dataclass(frozen=True)
class BusConfig:
    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    name: str = "lab"
    replicas: int = 1  # copies of each stream/bucket this process creates (the cluster's size)
    # TLS (PEM files); None: LAB_NATS_CA_FILE, LAB_NATS_TLS_CERT, LAB_NATS_TLS_KEY.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def servers(self) -> list[str]:
        """``url`` may list several nodes of a cluster, comma-separated."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


def tls_context(config: BusConfig) -> ssl.SSLContext | None:
    """The TLS context for ``config``'s CA and client certificate (else the LAB_NATS_* settings); None: no CA, no certificate."""
    s = settings()
    ca = config.ca_file or (str(s.nats_ca_file) if s.nats_ca_file else None)
    cert = config.cert_file or (str(s.nats_tls_cert) if s.nats_tls_cert else None)
    key = config.key_file or (str(s.nats_tls_key) if s.nats_tls_key else None)
    if not ca and not cert:
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca)  # only this CA when one is given, else the system's
    except (OSError, ssl.SSLError) as e:
        raise ConnectError(f"LAB_NATS_CA_FILE={ca}: cannot read the CA ({getattr(e, 'strerror', None) or e})") from None
    try:
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConnectError(f"LAB_NATS_TLS_CERT={cert}: cannot read the client certificate and key ({getattr(e, 'strerror', None) or e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _refusal(e: BaseException, errors: list[str], timeout: float, tls: bool) -> str:
    """One line for why a first connect failed: credentials, an untrusted certificate, a server without TLS, or silence."""
    reason = str(e) or type(e).__name__
    if isinstance(e, asyncio.TimeoutError):
        reason = f"no answer within {timeout:.0f}s" + (f" ({errors[-1]})" if errors else "")
    seen = " ".join([reason, *errors[-1:]])
    if "Authorization" in seen or "authorization" in seen:
        return "credentials refused"
    if "CERTIFICATE_VERIFY_FAILED" in seen and "mismatch" in seen:
        return "the server's TLS certificate is not for this address (connect by a name it holds, e.g. nats or localhost)"
    if "CERTIFICATE_VERIFY_FAILED" in seen:
        return "the server's TLS certificate is not signed by a CA this client trusts (set LAB_NATS_CA_FILE to the lab's CA)"
    if tls and not isinstance(e, asyncio.TimeoutError) and "refused" not in seen.lower() and "Connect call failed" not in seen:
        return f"no TLS session ({reason}): with LAB_NATS_CA_FILE set the lab speaks TLS first, and this server does not"
    if "TLS Required" in seen or "tls_required" in seen:
        return "the server requires TLS: set LAB_NATS_CA_FILE to the CA that signed its certificate"
    return reason


class Bus:
    """One NATS connection with JetStream, as one lab user."""

    def __init__(self, nc: Client, config: BusConfig):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.config = config
        self.errors: list[str] = []

    @classmethod
    async def connect(cls, config: BusConfig, *, reconnect: bool = True, timeout: float = 10.0) -> Bus:
        """Connect, or raise ConnectError within ``timeout`` (nats-py alone may retry a refused first connect forever)."""
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))

        if not config.servers or not all(u.startswith(("nats://", "tls://", "ws://", "wss://")) for u in config.servers):
            raise ConnectError(f"bad NATS URL {config.url!r}: expected nats://host:port (several comma-separated for a cluster)")
        tls = tls_context(config)
        try:
            nc = await asyncio.wait_for(nats.connect(
                servers=config.servers,
                user=config.user,
                password=config.password,
                name=config.name,
                inbox_prefix=inbox_prefix(config.user) if config.user else "_INBOX",
                connect_timeout=3,
                allow_reconnect=reconnect,
                max_reconnect_attempts=-1 if reconnect else 0,
                reconnect_time_wait=0.5,
                drain_timeout=5,
                error_cb=on_error,
                # With a CA the handshake comes first: no byte, password included, goes out before TLS,
                # so a server that does not speak TLS (or an impostor on its address) learns nothing.
                **({"tls": tls, "tls_handshake_first": True} if tls else {}),
            ), timeout)
        except (TimeoutError, Exception) as e:  # nats-py raises several unrelated types here
            raise ConnectError(f"cannot connect to NATS at {config.url}: {_refusal(e, errors, timeout, tls is not None)}") from None
        bus = cls(nc, config)
        bus.errors = errors
        return bus

    def refusal(self) -> str | None:
        """The server's last "Permissions Violation" on this connection, or None.

        A request the server refuses gets no reply, so nats-py raises only a timeout;
        the reason arrives apart, through the error callback, and is kept here.
        """
        return next((e.removeprefix("nats: ") for e in reversed(self.errors) if "permissions violation" in e.lower()), None)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (the web view's health check)."""
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.Error, OSError):  # a connection already broken cannot drain: close it outright
                await self.nc.close()

    # ------------------------------------------------------------ topology

    @translated
    async def ensure_topology(self, ready_timeout: float = 30.0) -> None:
        """Create streams and buckets if absent; an existing one is left as it is.

        Each is created with ``config.replicas`` copies (a cluster's size). A fresh cluster answers
        "JetStream not ready" until it has elected its meta leader, so creation waits for that.
        """
        await self._wait_for_jetstream(ready_timeout)
        r = max(1, self.config.replicas)
        for cfg in self._core_streams(r):
            await self._ensure_stream(cfg)
        await self._ensure_buckets(r)
        await self._ensure_work_streams(r)

    async def _wait_for_jetstream(self, ready_timeout: float) -> None:
        ready = RetryPolicy(attempts=None, budget_s=ready_timeout, base_wait_s=JETSTREAM_READY_EVERY_S,
                            max_wait_s=JETSTREAM_READY_EVERY_S, event="jetstream_not_ready", level=None)
        try:
            await ready.run(self.js.account_info, (nats.js.errors.APIError, nats.errors.NoRespondersError, nats.errors.TimeoutError))
        except (nats.js.errors.APIError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as e:
            raise ConnectError(f"JetStream not ready at {self.config.url} after {ready_timeout:.0f}s: {e}") from None

    def _core_streams(self, r: int) -> list[api.StreamConfig]:
        """The conversation, the jobs and the dead letters, each with ``r`` replicas."""
        return [
            api.StreamConfig(
                name=subjects.CONVO_STREAM,
                subjects=["lab.convo.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                duplicate_window=DUPLICATE_WINDOW_S,
                max_msg_size=MAX_ENVELOPE_BYTES * 2,  # larger ones still land, so they can be dead-lettered with a reason
                max_bytes=CONVO_MAX_BYTES,  # the lab's log: kept whole until this, then the oldest go first
                num_replicas=r,
            ),
            api.StreamConfig(
                name=subjects.JOBS_STREAM,
                subjects=["lab.jobs.>"],
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
                max_age=7 * 24 * 3600,
                max_bytes=JOBS_MAX_BYTES,  # experiment logs are the bulk; results live in the object store
                num_replicas=r,
            ),
            api.StreamConfig(
                name=subjects.DLQ_STREAM, subjects=["lab.dlq.>"], storage=api.StorageType.FILE,
                max_age=90 * 24 * 3600, max_bytes=DLQ_MAX_BYTES, num_replicas=r,
            ),
        ]

    async def _ensure_stream(self, cfg: api.StreamConfig) -> None:
        assert cfg.name is not None  # every core stream is named
        try:
            await self.js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            try:
                await self._add_stream(cfg)
            except BadRequestError as e:
                try:
                    await self.js.stream_info(cfg.name)  # created concurrently: fine
                except nats.js.errors.NotFoundError:
                    raise ConnectError(f"cannot create stream {cfg.name}: {e.description}") from None

    async def _ensure_buckets(self, r: int) -> None:
        """The KV buckets (states, agents, cache, ideas, results) and the artifact object store."""
        buckets = (
            (STATE_BUCKET, None, 8), (AGENTS_BUCKET, AGENTS_TTL_S, 1), (CACHE_BUCKET, 7 * 24 * 3600.0, 1), (IDEAS_BUCKET, None, 1),
            (RESULTS_BUCKET, None, 1),
        )
        for bucket, ttl, history in buckets:
            try:
                await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                # Direct gets name the key in the API subject, which lets permissions limit a role to its own keys.
                await self.js.create_key_value(api.KeyValueConfig(bucket=bucket, history=history, ttl=ttl, direct=True, replicas=r))
        try:
            await self.js.object_store(ARTIFACTS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            await self.js.create_object_store(ARTIFACTS_BUCKET, config=api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=r))

    async def _ensure_work_streams(self, replicas: int) -> None:
        """Create each role's work stream (bus/partitions) if absent, copying from what comes next in its sources.

        Only what comes next: a lab upgraded from one whose roles read the conversation directly does not
        handle again what they read (upgrade it idle; what was still unread would not be copied).
        """
        after: dict[str, int] | None = None
        for role in ROLES:
            name = partitions.work_stream(role)
            try:
                await self.js.stream_info(name)
                continue
            except nats.js.errors.NotFoundError:
                pass
            if after is None:
                after = {s: (await self.js.stream_info(s)).state.last_seq for s in (subjects.CONVO_STREAM, subjects.JOBS_STREAM)}
            try:
                await self._add_stream(partitions.work_stream_config(role, replicas, after))
            except BadRequestError as e:
                try:
                    await self.js.stream_info(name)  # created concurrently: fine
                except nats.js.errors.NotFoundError:
                    raise ConnectError(f"cannot create stream {name}: {e.description}") from None

    async def _add_stream(self, cfg: api.StreamConfig) -> None:
        """Create a stream; where the server's store is smaller than its size limit, with no limit of its own.

        nats-server reserves each stream's ``max_bytes`` against its ``max_file_store`` and refuses
        the stream outright when that does not fit (a small store, set on purpose or by a small
        disk). Then the store's own limit is the cap: the stream is created without a reservation
        rather than the lab not starting (or its reservations leaving no room for artifacts).
        """
        try:
            await self.js.add_stream(cfg)
        except nats.js.errors.APIError as e:
            if "insufficient storage" not in str(e.description) or not cfg.max_bytes or cfg.max_bytes < 0:
                raise
            cfg.max_bytes = -1
            await self.js.add_stream(cfg)

    # ------------------------------------------------------------ publishing

    @translated
    async def publish(self, env: Envelope) -> None:
        """Publish an envelope on its conversation subject, de-duplicated by its id."""
        subject, data, headers = self._prepare(env)
        await self.js.publish(subject, data, headers=headers)

    @translated
    async def publish_many(self, envs: list[Envelope], timeout: float = 10.0) -> None:
        """Publish several envelopes and await their acks together: one round trip, not one each."""
        if len(envs) <= 1:
            for env in envs:
                await self.publish(env)
            return
        prepared = [self._prepare(env) for env in envs]  # every size check before anything is sent
        futures = [await self.js.publish_async(subject, data, headers=headers) for subject, data, headers in prepared]
        await asyncio.wait_for(asyncio.gather(*futures), timeout)

    def _prepare(self, env: Envelope) -> tuple[str, bytes, dict[str, str]]:
        data = encode(env)
        if len(data) > MAX_ENVELOPE_BYTES:
            raise MessageTooLarge(f"{env.kind} message of {len(data)} bytes exceeds the bus limit of {MAX_ENVELOPE_BYTES}")
        return subjects.convo(env.project, env.sender, env.recipient), data, {"Nats-Msg-Id": env.id}

    @translated
    async def publish_job(self, subject: str, env: Envelope) -> None:
        await self.js.publish(subject, encode(env), headers={"Nats-Msg-Id": env.id})

    @translated
    async def publish_unacked(self, subject: str, data: bytes) -> None:
        """Publish without waiting for a stream's ack (a job's log lines: one lost in a reconnect is not worth a stall)."""
        await self.nc.publish(subject, data)

    @translated
    async def dead_letter(self, role: str, reason: str, msg: Any) -> None:
        """Park a message we will not process, with the reason, in ``lab.dlq.<role>``."""
        meta = getattr(msg, "metadata", None)
        record = {
            "reason": reason,
            "role": role,
            "subject": partitions.origin(msg.subject),  # where it was published; the role read it from its work stream
            "read_on": msg.subject,
            "stream_seq": getattr(getattr(meta, "sequence", None), "stream", None),
            "num_delivered": getattr(meta, "num_delivered", None),
            "size": len(msg.data),
            "data_b64": base64.b64encode(msg.data[:64 * 1024]).decode(),
            "truncated": len(msg.data) > 64 * 1024,
            "at": datetime.now(UTC).isoformat(),
        }
        await self.js.publish(subjects.dlq(role), json.dumps(record).encode())

    # ------------------------------------------------------------ what services read and serve

    @translated
    async def has_bucket(self, bucket: str) -> bool:
        """Whether the KV bucket exists (a lab whose store lost one says which)."""
        try:
            await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return False
        return True

    @translated
    async def store_usage(self) -> StoreUsage:
        """How much of its JetStream store this account uses, and the account's own limit."""
        info = await self.js.account_info()
        limit = info.limits.max_storage if info.limits.max_storage and info.limits.max_storage > 0 else None
        return StoreUsage(used=info.storage, limit=limit)

    @translated
    async def feed(self, subject: str, stream: str) -> Feed:
        """An ordered, live read of ``subject`` in ``stream`` from its first message (see ``Feed``)."""
        return Feed(await self.js.subscribe(subject, stream=stream, ordered_consumer=True))

    @translated
    async def serve(self, subject: str, handler: Handler, queue: str) -> None:
        """Answer requests on ``subject`` with ``handler`` (one member of ``queue`` answers each); returns once routed here.

        The handler answers every request it can, refusals included; an error it raises is a bug, which
        the connection's error callback records, and the requester times out.
        """

        async def answer(msg: Msg) -> None:
            await msg.respond(await handler(msg.subject, msg.data))

        await self.nc.subscribe(subject, queue=queue, cb=answer)
        await self.nc.flush()

