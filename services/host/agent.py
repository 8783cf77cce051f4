"""`lab agent ROLE`: runs one role on the bus.

For each message: validate (else dead-letter with the reason), load the
role's state for the project, run the handler, store the new state together
with the outputs (compare-and-set), publish the outputs with derived ids, then
ack. A crash at any point repeats at most the same outputs, which JetStream's
duplicate window drops; a message that already has stored outputs is only
republished. On SIGTERM the host stops fetching, finishes the messages in
hand, returns the ones it had not started, and drains.

Messages of different projects are handled concurrently (up to the role's
``concurrency``), one project's in order and one at a time (``services/lanes``).
The mind is the project's (``Envelope.mind``, remembered in the role's state),
built once per (project, kind, model) by the wiring's ``Minds``; what its calls cost is metered per
message (``agents/minds/meter``), so concurrent projects are charged apart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from agents import role_class
from agents.base import Rejected, Role, UnhandledKind, is_permanent
from agents.minds.meter import metered
from bus import metrics, partitions
from bus.client import MAX_ENVELOPE_BYTES, Bus, BusConfig
from bus.consumer import MAX_DELIVER, messages, pull, release
from bus.errors import BusTimeout, LabError, MindError, StateConflict
from bus.retry import RetryPolicy, backoff_delay, cancel_and_wait, cancel_requested
from bus.schema import Envelope, Heartbeat, MindKind, RoleDocument, RoleName, StepFailed, Usage, UsageReport, decode
from bus.schema.constants import HEARTBEAT_EVERY_S
from bus.settings import ConfigError, Settings, settings
from bus.store import Artifacts, Heartbeats, KVCache, StateStore
from services.host import gauges
from services.host.lanes import Lanes
from services.host.logs import setup_logging
from services.host.wiring import Minds, Wiring, role_name

OUTBOX_KEEP = 16
FETCH_WAIT_S = 1.0  # one pull waits this long for messages; stopping waits for the pull in flight
DEFAULT_CONCURRENCY = Settings.model_fields["concurrency"].default
# An agent's start-up JetStream requests: retried on timeouts for up to a minute, then the agent exits with the reason.
STARTUP_RETRY = RetryPolicy(attempts=6, budget_s=60.0, base_wait_s=1.0, max_wait_s=15.0, jitter=0.3, event="startup_retry")
log = structlog.get_logger()


class HostConfigError(LabError, ValueError):
    """A host setting that cannot work (one line for the user)."""


def _settings(environ: Mapping[str, str] | None) -> Settings:
    try:
        return settings(environ)
    except ConfigError as e:
        raise HostConfigError(str(e)) from None


def concurrency_for(role: str, environ: Mapping[str, str] | None = None) -> int:
    """Projects one agent handles at once: ``LAB_CONCURRENCY_<ROLE>``, else ``LAB_CONCURRENCY``, else 8."""
    return _settings(environ).concurrency_of(role)


def replica_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) of this process among its role's replicas: ``LAB_REPLICA`` (0-based) of ``LAB_REPLICAS``.

    Without ``LAB_REPLICA``, a StatefulSet pod's ordinal (``lab-<role>-1`` is 1), read from ``HOSTNAME``.
    """
    s = _settings(environ)
    count, index = s.replicas, s.replica
    hostname = (os.environ if environ is None else environ).get("HOSTNAME") or ""  # the pod's, not a lab setting
    try:
        ordinal = hostname.rpartition("-")[2] if count > 1 else ""
        if count > 1 and index is None and not ordinal.isdigit():
            # Every replica would take index 0 and the other partitions' projects would wait forever.
            raise ValueError("several replicas need LAB_REPLICA or a StatefulSet pod's ordinal in HOSTNAME")
        index = index if index is not None else int(ordinal or 0)
        partitions.owned(index, count)
    except ValueError as e:
        shown = str(s.replica) if s.replica is not None else None
        raise HostConfigError(f"LAB_REPLICA={shown!r} of LAB_REPLICAS={str(count)!r}: {e}") from None
    return index, count


def _project_of(subject: str) -> str:
    """``lab.convo.<project>.…`` and ``lab.jobs.<project>.…`` both name the project third."""
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else ""


def retry_delay(delivered: int) -> float:
    """Seconds before a failed message is tried again: 2, 4, 8, 16, capped at 30."""
    return backoff_delay(delivered, base_s=2.0, max_s=30.0)


class AgentHost:
    def __init__(
        self,
        role: str,
        config: BusConfig,
        *,
        home: Path,
        mind: MindKind = "offline",
        mind_config: dict[str, Any] | None = None,
        wiring: Wiring | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        replica: tuple[int, int] = (0, 1),
    ):
        self.role: Role = role_class(role)()  # an unknown role: ValueError, before anything else
        self.role_name: RoleName = role_name(role)
        self.config = config
        self.home = home
        self.mind_kind = mind
        self.minds = Minds(role, mind, mind_config)
        self.mind = self.minds.default
        self.llm_error = self.minds.unavailable()
        # What this role needs beyond the bus (services/wiring); a role without ports by default.
        self.wiring = wiring or Wiring(self.role_name, home)
        self.stop = asyncio.Event()
        self.concurrency = concurrency
        self.replica = replica
        partitions.owned(*replica)  # a bad index fails here, not in the fetch loop
        self.lanes = Lanes(concurrency, self._process_safely)
        self.handled = 0
        self.failed = False
        self.latencies: list[float] = []  # seconds per handled message, the last 1000 (for `lab status` and bench)
        s = settings()
        self.fault_delay_after_store = s.fault_delay_after_store  # chaos tests: widen the window between store and publish
        self.bench_mind_latency_s = s.bench_mind_latency_s  # bench/lab.py: a simulated mind call per message (0: none)
        self.instance_name = s.instance  # `lab up` names each process (`<role>-2`); None: from the replica index
        self.metrics_port = s.metrics_port  # None: no /metrics
        self.metrics_url = ""  # where this process's metrics are served, once they are
        metrics.prepare(self.role_name)
        metrics.lanes(self.role_name, lambda: self.lanes.held, lambda: self.lanes.in_hand)

    # ------------------------------------------------------------ lifecycle

    @property
    def instance(self) -> str:
        """This process's name among its role's replicas: ``<role>`` for index 0, ``<role>-2`` for index 1… (`lab up` sets it)."""
        index = self.replica[0]
        return self.instance_name or (f"{self.role_name}-{index + 1}" if index else self.role_name)

    def _run_file(self, suffix: str) -> Path:
        # `lab up`'s processes share one home, so their files carry the instance; a pod has a home of its own,
        # and its probes name the role's file whatever the pod's ordinal.
        return self.home / "run" / f"{self.instance_name or self.role_name}.{suffix}"

    def ready_file(self) -> Path:
        return self._run_file("ready")

    def alive_file(self) -> Path:
        """Touched after every heartbeat NATS accepted: the Kubernetes liveness probe reads its age."""
        return self._run_file("alive")

    def heartbeat_key(self) -> str:
        suffix = self.instance.removeprefix(self.role_name).lstrip("-")
        return f"{self.role_name}.{suffix}" if suffix else self.role_name

    async def run(self) -> None:
        self._serve_metrics()
        self.bus = await Bus.connect(self.config)
        # Start-up requests may time out while a cluster elects its stream leaders (a node just restarted, the
        # replicas of every role starting at once): each step is idempotent, so it is retried before giving up.
        await STARTUP_RETRY.run(self._open_stores, (BusTimeout,))
        background = await self.wiring.open(self.bus, self.states)
        subs = await STARTUP_RETRY.run(self._subscribe, (BusTimeout,))
        tasks = [asyncio.create_task(self._consume(s)) for s in subs]
        tasks.append(asyncio.create_task(self._heartbeat()))
        if self.metrics_port is not None:  # the stored projects are read only for a scraper: nobody else sees the gauges
            tasks.append(asyncio.create_task(gauges.seed(self.role_name, self.states, self.replica)))  # beside the work: never delays it
        for t in tasks[: len(subs)]:
            t.add_done_callback(self._consumer_ended)
        tasks += [asyncio.create_task(work) for work in background]
        self.ready_file().parent.mkdir(parents=True, exist_ok=True)
        self.ready_file().write_text(str(os.getpid()))
        log.info("agent ready", role=self.role_name, mind=self.mind_kind, pid=os.getpid())
        try:
            await self.stop.wait()
        finally:
            self.ready_file().unlink(missing_ok=True)
            await self._wind_down(subs, tasks[: len(subs)], tasks)
            log.info("agent stopped", role=self.role_name, handled=self.handled)

    def _serve_metrics(self) -> None:
        """Serve /metrics on LAB_METRICS_PORT; a port taken is logged and the agent works on without them."""
        if self.metrics_port is None:
            return
        try:
            self.metrics_url = metrics.url(metrics.serve(self.metrics_port))
        except OSError as e:
            log.error("cannot serve metrics; going on without them", role=self.role_name, port=self.metrics_port, error=str(e))
            return
        log.info("serving metrics", role=self.role_name, url=self.metrics_url)

    async def _wind_down(self, subs: list[Any], fetching: list[asyncio.Task[None]], tasks: list[asyncio.Task[Any]]) -> None:
        """Stop fetching, finish the messages in hand, give back the queued ones, close the bus.

        The fetch loops see the stop event and end after their current pull (its request expires with it); the
        messages in hand finish meanwhile. Only then do the queued ones go back: NAKed while a pull of ours was
        still open, a message would come straight back to us and wait out the ack wait while our successor ran
        the project's later messages first. What reached a pull subscription after its last fetch goes back too.
        """
        self.lanes.stop_starting()
        if fetching:
            _, stuck = await asyncio.wait(fetching, timeout=FETCH_WAIT_S + 5)
            for t in stuck:
                t.cancel()
        for sub in subs:
            await release(sub)
        await self.lanes.close()
        await cancel_and_wait(tasks)
        await self.wiring.close()
        await self.bus.close()

    async def _open_stores(self) -> None:
        # Whoever starts first creates the streams and buckets (on a cluster there is no `lab up`).
        await self.bus.ensure_topology()
        self.states = await StateStore.open(self.bus)
        self.artifacts = await Artifacts.open(self.bus)
        self.cache = await KVCache.open(self.bus, self.role_name)
        self.beats = await Heartbeats.open(self.bus)

    async def _subscribe(self) -> list[Any]:
        """Pull subscriptions for this replica's partitions of the role's work stream (bus/partitions), and any extra."""
        mine = partitions.owned(*self.replica)
        subs = [await pull(self.bus, partitions.work_stream(self.role_name), partitions.durable(self.role_name, p),
                           partitions.partition_filter(self.role_name, p)) for p in mine]
        for extra in self.wiring.subscriptions:
            subs.append(await pull(self.bus, extra.stream, extra.durable, extra.filter))
        log.info("reading partitions", role=self.role_name, replica=self.replica, partitions=mine)
        return subs

    def _consumer_ended(self, task: asyncio.Task[None]) -> None:
        """A fetch loop that ends before we stop leaves the role deaf: stop, so the supervisor (or Kubernetes) restarts us."""
        if self.stop.is_set() or task.cancelled():
            return
        log.error("consumer loop ended; stopping the agent", role=self.role_name, error=repr(task.exception()))
        self.failed = True
        self.stop.set()

    def heartbeat_doc(self, started: float | None = None) -> Heartbeat:
        lat = sorted(self.latencies)
        return Heartbeat(
            role=self.role_name, instance=self.instance, pid=os.getpid(), host=socket.gethostname(), mind=self.mind_kind,
            llm_error=self.llm_error, concurrency=self.concurrency, busy=self.lanes.in_hand, held=self.lanes.held,
            handled=self.handled, seen=time.time(), started=started,
            p50_s=lat[len(lat) // 2] if lat else None, p99_s=lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            metrics_url=self.metrics_url,
        )

    async def _heartbeat(self) -> None:
        started = time.time()
        while True:
            try:
                await self.beats.put(self.heartbeat_key(), self.heartbeat_doc(started))
                self.alive_file().touch()
            except Exception as e:  # a missed beat is sent again in 5 s; the loop must outlive a bus outage
                if cancel_requested():
                    raise asyncio.CancelledError from e
                log.warning("heartbeat failed", error=str(e))
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def _consume(self, sub: Any) -> None:
        """Fetch what the lanes have room for and queue each message on its project's lane."""
        async for msg in messages(sub, self.stop, FETCH_WAIT_S, room=lambda: self.lanes.room(2 * self.concurrency)):
            self.lanes.submit(_project_of(partitions.origin(msg.subject)), msg)

    async def _process_safely(self, msg: Any) -> None:
        started = time.monotonic()
        outcome = "error"
        try:
            outcome = await self.process(msg)
        except Exception as e:  # e.g. the bus went away while publishing: the stored outbox is resent on redelivery
            log.error("processing failed; the message will come back", role=self.role_name, subject=msg.subject, error=f"{type(e).__name__}: {e}")
            try:
                await msg.nak(delay=retry_delay(1))
            except Exception as nak_error:  # the connection is gone: the ack wait redelivers the message anyway
                log.warning("nak failed", subject=msg.subject, error=f"{type(nak_error).__name__}: {nak_error}")
        finally:
            elapsed = time.monotonic() - started
            self.latencies = [*self.latencies[-999:], elapsed]
            metrics.handled(self.role_name, outcome, elapsed)

    # ------------------------------------------------------------ one message

    async def process(self, msg: Any) -> str:
        """Handle one message and settle it; return the outcome: ``ok``, ``error`` (it comes back) or ``dead_letter``."""
        started = time.time()  # in the "handled" line: tests check that no two replicas held one project at once
        meta = msg.metadata
        delivered = meta.num_delivered if meta else 1
        if len(msg.data) > MAX_ENVELOPE_BYTES:
            return await self._reject(msg, f"message of {len(msg.data)} bytes exceeds the limit of {MAX_ENVELOPE_BYTES}")
        try:
            env = decode(msg.data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return await self._reject(msg, f"invalid message: {where}: {first['msg']} ({e.error_count()} errors)")
        mismatch = self.wiring.admit(partitions.origin(msg.subject), env)
        if mismatch:
            return await self._reject(msg, mismatch)
        bound = log.bind(role=self.role_name, project=env.project, message_id=env.id, kind=env.kind)
        try:
            outputs = await self._handle(env, bound)
        except StateConflict as e:
            bound.warning("state conflict; retrying", error=str(e))
            await msg.nak(delay=1)
            return "error"
        except Rejected as e:
            if isinstance(e, UnhandledKind) and env.recipient == "all":
                await msg.ack()  # broadcasts not meant for this role
                return "ok"
            return await self._reject(msg, str(e))
        except Exception as e:  # the host is where any handler error becomes a retry or a dead letter, each logged
            reason = f"{type(e).__name__}: {e}"
            if is_permanent(e):  # retrying cannot help: dead letters now, not after the whole backoff
                return await self._reject(msg, f"cannot succeed on retry: {reason}")
            if delivered >= MAX_DELIVER:
                return await self._reject(msg, f"handler failed {delivered} times: {reason}")
            bound.error("handler failed; will retry", error=reason, delivered=delivered)
            await msg.nak(delay=retry_delay(delivered))
            return "error"
        await self.bus.publish_many(outputs)
        await msg.ack()
        self.handled += 1
        bound.info("handled", outputs=[f"{o.kind}->{o.recipient}" for o in outputs], delivered=delivered, instance=self.instance,
                   partition=partitions.partition_of(msg.subject), started=started)
        return "ok"

    async def _handle(self, env: Envelope, bound: Any) -> list[Envelope]:
        key = f"{self.role_name}.{env.project}"
        raw, revision = await self.states.read(key)
        doc = RoleDocument.parse(raw, key)
        outbox = dict(doc.outbox)
        if env.id in outbox:
            bound.info("already handled; republishing its outputs")
            return [decode(o.encode()) for o in outbox[env.id]]
        state_cls = self.role.State
        if doc.state is not None:
            # The project lets a state stored by an older version of the role be upgraded (its context names the project).
            state = state_cls.model_validate(doc.state, context={"project": env.project})
        else:
            try:
                state = state_cls()
            except ValidationError:
                state = None  # a state with required fields exists only once its project starts
        # Messages from outside the conversation (job statuses) carry no mind: the project's is in the state.
        choice = env.mind or doc.mind
        if choice is not None and env.mind is None:
            env = env.model_copy(update={"mind": choice})  # so its outputs carry it on
        mind = self.minds.for_project(env.project, choice)
        ctx = self.wiring.context(project=env.project, state=state, mind=mind, artifacts=self.artifacts, cache=self.cache)
        try:
            with metered() as spent:
                if self.bench_mind_latency_s:
                    await asyncio.sleep(self.bench_mind_latency_s)
                await self.role.handle(env, ctx)
        except MindError as e:
            # The mind ran out of retries: this step fails, the role the wiring reports to decides what follows.
            failed = StepFailed.of(env.body, e.reason)
            ctx.outputs = [(failed, self.wiring.reports_to)] if failed else []
            bound.error("step failed", step=failed.step if failed else env.kind, reason=e.reason)
        outputs = [env.reply(body, sender=self.role_name, recipient=to, index=i) for i, (body, to) in enumerate(ctx.outputs)]
        # What the mind spent on this message counts against this project; the role reported to hears of it (of its own too).
        usage = doc.usage + spent
        if spent != Usage():
            outputs.append(env.reply(UsageReport(usage=usage), sender=self.role_name, recipient=self.wiring.reports_to, index=len(outputs)))
        outbox[env.id] = [o.model_dump_json() for o in outputs]
        outbox = dict(list(outbox.items())[-OUTBOX_KEEP:])
        new_doc = RoleDocument(
            state=ctx.state.model_dump(mode="json") if ctx.state is not None else None, outbox=outbox, usage=usage, mind=choice,
        )
        await self.states.write(key, new_doc.dump(), revision)
        gauges.observe(self.role_name, env.project, new_doc.state)
        if self.fault_delay_after_store:
            # Fault injection for chaos tests: widen the window between storing and publishing.
            bound.warning("fault injection: pausing after storing state", seconds=self.fault_delay_after_store)
            await asyncio.sleep(self.fault_delay_after_store)
        return outputs

    async def _reject(self, msg: Any, reason: str) -> str:
        log.warning("dead-lettered", role=self.role_name, subject=msg.subject, reason=reason)
        await self.bus.dead_letter(self.role_name, reason, msg)
        await msg.ack()
        return "dead_letter"


def run_agent(role: str, config: BusConfig, *, home: Path, mind: MindKind, mind_config: dict[str, Any] | None, wiring: Wiring) -> None:
    setup_logging(role=role)
    try:
        concurrency = concurrency_for(role)
        replica = replica_from_env()
    except HostConfigError as e:
        raise SystemExit(f"lab agent: {e}") from None
    host = AgentHost(role, config, home=home, mind=mind, mind_config=mind_config, wiring=wiring, concurrency=concurrency, replica=replica)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, host.stop.set)
        await host.run()

    asyncio.run(main())
    if host.failed:
        raise SystemExit(1)
