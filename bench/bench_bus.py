"""The lab's bus layer against raw nats-py JetStream, side by side on one embedded nats-server.

Why: every lab message pays for an Envelope (pydantic encode on send,
validation on receive), a ``Nats-Msg-Id`` and a size check, and each role
reads through a durable pull consumer one message at a time. This measures
what that costs against the same JetStream work done with bare nats-py (same
server, same stream and consumer settings, same publish pattern, separate
streams so the sides never meet), as ratios that mean something on any machine.
The lab side reads as a role does, from its work stream (bus/partitions), so
its numbers include the copy from the conversation stream into the role's
partition that the raw side does not make.

    python -m bench.bench_bus [--messages N] [--payload BYTES] [--rounds R] [--requests K]

Lab and raw runs alternate over R rounds (the order flips every round); the
table shows medians, and each ratio is the median of per-round ratios. The
goals (throughput >= 0.7x raw, p50 round trip <= 1.5x raw) are informational:
the exit status is 0 unless the bench itself broke (a message lost or
duplicated, a server that would not start).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from time import perf_counter
from typing import Any

import nats
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.table import Table

if __package__ in (None, ""):  # `python bench/bench_bus.py`: find the lab's packages from the repo root, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import partitions, subjects  # noqa: E402
from bus.client import MAX_ENVELOPE_BYTES, Bus, BusConfig
from bus.consumer import consumer_config, messages, pull
from bus.errors import LabBusError, MessageTooLarge
from bus.permissions import ADMIN
from bus.schema import (
    Envelope,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    FinalInfo,
    Idea,
    JobEnvironment,
    MetricStat,
    RunRecord,
    decode,
    derive_id,
    encode,
)
from bus.server import EmbeddedServer, new_credentials, server_binary

THROUGHPUT_GOAL = 0.7  # lab/raw msg/s, at least
LATENCY_GOAL = 1.5  # lab/raw p50 round trip, at most
HOT_BATCH = 64  # the consumers' max_ack_pending: a bigger fetch would only wait
FETCH_WAIT_S = 1.0  # as bus.consumer.messages
RAW_STREAM = "BENCH_RAW"


class BenchError(Exception):
    """The bench could not measure: a side lost or duplicated messages, or stalled."""


@dataclass(frozen=True)
class Settings:
    messages: int = 500
    payload: int = 2048
    rounds: int = 5
    requests: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.messages <= 1_000_000:
            raise BenchError(f"--messages must be 1..1000000, got {self.messages}")
        if not 256 <= self.payload <= MAX_ENVELOPE_BYTES:
            raise BenchError(f"--payload must be 256..{MAX_ENVELOPE_BYTES} bytes (the bus limit), got {self.payload}")
        if not 1 <= self.rounds <= 100:
            raise BenchError(f"--rounds must be 1..100, got {self.rounds}")
        if not 1 <= self.requests <= 100_000:
            raise BenchError(f"--requests must be 1..100000, got {self.requests}")


# ---------------------------------------------------------------- messages of a realistic kind and size

IDEA = Idea(
    id="wd-0p1", title="Weight decay speeds up grokking", hypothesis="Weight decay 0.1 halves the steps to generalise",
    falsification="No difference in steps to 99% validation accuracy over 3 seeds", changes={"weight_decay": 0.1, "lr": 1e-3},
)
SPEC: dict[str, Any] = {
    "name": "grokking", "title": "Grokking", "task": "Modular addition with a small transformer; measure when validation accuracy jumps.",
    "knobs": {"weight_decay": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0},
              "lr": {"type": "float", "min": 1e-4, "max": 1e-2, "default": 1e-3, "log": True},
              "depth": {"type": "int", "min": 1, "max": 4, "default": 2}},
    "metrics": {"val_acc": {"direction": "higher", "primary": True}, "steps_to_grok": {"direction": "lower"}},
    "baseline": {}, "time_budget_s": 600, "resources": {"cpu": 2, "gpu": 0, "memory_mb": 2048},
}


def _run_record(i: int) -> RunRecord:
    seeds = [0, 1, 2]
    acc = [0.91 + 0.01 * s + 0.001 * i for s in seeds]
    steps = [4100.0 - 150 * s + i for s in seeds]
    return RunRecord(
        job_id=f"x{i:03d}-wd-0p1-j{i}", experiment_id=f"x{i:03d}", idea_id=IDEA.id, overrides=IDEA.changes, seeds=seeds,
        status="succeeded",
        final_info=FinalInfo(
            metrics={"val_acc": MetricStat(mean=float(np.mean(acc)), stderr=float(np.std(acc) / math.sqrt(3)), values=acc),
                     "steps_to_grok": MetricStat(mean=float(np.mean(steps)), stderr=float(np.std(steps) / math.sqrt(3)), values=steps)},
            seeds=seeds, config={"weight_decay": 0.1, "lr": 1e-3, "depth": 2, "epochs": 300},
        ),
        environment=JobEnvironment(
            hostname=f"gpu-node-{i % 4}", platform="Linux-6.8.0-x86_64-with-glibc2.39", python="3.11.9", cpu="AMD EPYC 9454",
            cpu_count=16, gpus=["NVIDIA H100 80GB HBM3"], cuda="12.4", driver="550.54.15", device="cuda",
            packages={"torch": "2.13.0", "numpy": "2.1.3", "scikit-learn": "1.5.2"}, executor="kubernetes",
        ),
        artifacts=[f"p/results/x{i:03d}/final_info.json", f"p/results/x{i:03d}/log.txt", f"p/results/x{i:03d}/curves.png"],
        wall_s=412.5 + i,
    )


@lru_cache(maxsize=8)
def _runs_for(payload: int) -> tuple[RunRecord, ...]:
    """As many runs as it takes for an experiment_result to reach ``payload`` bytes: size comes from real structure."""
    runs = [_run_record(0)]
    while len(encode(_result("p", 0, runs))) < payload:
        runs.append(_run_record(len(runs)))
    return tuple(runs)


def _result(project: str, i: int, runs: list[RunRecord]) -> Envelope:
    return Envelope(project=project, sender="engineer", recipient="pi", body=ExperimentResult(experiment_id=f"x{i:05d}", idea_id=IDEA.id, runs=runs))


def result_envelopes(project: str, n: int, payload: int) -> list[Envelope]:
    runs = list(_runs_for(payload))
    return [_result(project, i, runs) for i in range(n)]


def request_envelopes(project: str, n: int) -> list[Envelope]:
    return [
        Envelope(project=project, sender="pi", recipient="engineer", body=ExperimentRequest(
            experiment_id=f"x{i:05d}", idea=IDEA, seeds=[0, 1, 2], template="grokking", template_object=f"{project}/template.tar.gz", spec=SPEC))
        for i in range(n)
    ]


def planned_reply(env: Envelope) -> Envelope:
    """The engineer's answer to an experiment request, as its handler would build it."""
    req: ExperimentRequest = env.body  # type: ignore[assignment]
    idea = req.idea
    body = ExperimentPlanned(
        experiment_id=req.experiment_id, idea_id=idea.id if idea else "baseline", overrides=idea.changes if idea else {},
        job_ids=[f"{req.experiment_id}-j{s}" for s in req.seeds],
    )
    return env.reply(body, sender="engineer")


# ---------------------------------------------------------------- measurements


@dataclass
class Flow:
    """N messages through one side: how long publishing and consuming took, and what the consumer saw."""

    published: int
    consumed: int = 0
    ids: set[str] = field(default_factory=set)
    redelivered: int = 0
    left_pending: int = -1  # messages still in the consumer once N were acked: duplicates the stream kept
    publish_s: float = 0.0
    consume_s: float = 0.0

    @property
    def unique(self) -> int:
        return len(self.ids)

    @property
    def rate(self) -> float:
        return self.consumed / (self.publish_s + self.consume_s)

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_s

    @property
    def consume_rate(self) -> float:
        return self.consumed / self.consume_s

    def problem(self) -> str | None:
        n = self.published
        if self.consumed == n and self.unique == n and self.left_pending == 0 and self.redelivered == 0:
            return None
        return (f"published {n}, consumed {self.consumed} ({self.unique} distinct ids), "
                f"{self.redelivered} redelivered, {self.left_pending} left in the consumer")


@dataclass
class SideRound:
    flow: Flow
    hot: Flow
    round_trips: list[float]  # seconds

    def p(self, q: float) -> float:
        return float(np.percentile(self.round_trips, q))


async def _batches(sub: Any, size: int) -> AsyncIterator[Msg]:
    while True:
        try:
            batch = await sub.fetch(size, timeout=FETCH_WAIT_S)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in batch:
            yield msg


async def _settle(js: Any, stream: str, durable: str) -> int:
    """Messages the consumer still holds once our (fire-and-forget) acks have landed."""
    for _ in range(100):
        info = await js.consumer_info(stream, durable)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    return int(info.num_pending + info.num_ack_pending)


def _deadline(n: int) -> float:
    return 30.0 + n * 0.02


class Side(ABC):
    """One way of moving messages: the same measurements, with the sending and reading left to subclasses."""

    name = ""
    stream = ""

    def __init__(self, pi: Any, engineer: Any, manager: Any = None):
        self.pi, self.engineer = pi, engineer  # connections (Bus or raw nats Client), one per party
        self.manager = manager  # a JetStream context that may inspect and delete consumers (None: the party's own)

    def durable(self, role: str, project: str) -> str:
        return f"bench-{project}-{role}"

    def stream_for(self, role: str) -> str:
        """The stream a role reads from."""
        return self.stream

    def admin_js(self, party: Any) -> Any:
        return self.manager if self.manager is not None else self.js(party)

    @abstractmethod
    def js(self, party: Any) -> Any:
        """The JetStream context of one party's connection."""

    @abstractmethod
    async def reader(self, party: Any, durable: str, recipient: str, project: str) -> Any:
        """A durable pull subscription."""

    @abstractmethod
    def prepare(self, envs: list[Envelope]) -> list[Any]:
        """What publish takes, built before the clock starts."""

    @abstractmethod
    async def publish(self, party: Any, items: list[Any]) -> None:
        """One at a time, each PubAck awaited."""

    @abstractmethod
    async def publish_async(self, party: Any, items: list[Any]) -> None:
        """All at once, PubAcks awaited together."""

    @abstractmethod
    def each(self, sub: Any) -> AsyncIterator[Msg]:
        """Messages one fetch at a time, as a role reads them."""

    @abstractmethod
    def accept(self, msg: Msg) -> str:
        """Take a message in; returns its id."""

    @abstractmethod
    async def respond(self, msg: Msg) -> None:
        """The engineer's side of a round trip: reply, then ack."""

    async def flow(self, envs: list[Envelope], hot: bool) -> Flow:
        project = envs[0].project
        durable = self.durable("pi", project)
        sub = await self.reader(self.pi, durable, "pi", project)
        items = self.prepare(envs)
        flow = Flow(published=len(items))
        t0 = perf_counter()
        await (self.publish_async if hot else self.publish)(self.engineer, items)
        t1 = perf_counter()
        source = _batches(sub, HOT_BATCH) if hot else self.each(sub)
        try:
            await asyncio.wait_for(self._drain(source, flow), _deadline(len(items)))
        except TimeoutError:
            raise BenchError(f"{self.name}: consumed {flow.consumed} of {flow.published} messages within {_deadline(len(items)):.0f}s") from None
        flow.publish_s, flow.consume_s = t1 - t0, perf_counter() - t1
        js = self.admin_js(self.pi)
        flow.left_pending = await _settle(js, self.stream_for("pi"), durable)
        await sub.unsubscribe()
        await js.delete_consumer(self.stream_for("pi"), durable)
        return flow

    async def _drain(self, source: AsyncIterator[Msg], flow: Flow) -> None:
        async with aclosing(source) as it:  # type: ignore[type-var]
            async for msg in it:
                flow.ids.add(self.accept(msg))
                flow.consumed += 1
                if msg.metadata.num_delivered > 1:
                    flow.redelivered += 1
                await msg.ack()
                if flow.consumed == flow.published:
                    return

    async def round_trips(self, requests: list[Envelope]) -> list[float]:
        """Request -> reply -> seen, one at a time: the PI asks the engineer and waits for the plan."""
        project = requests[0].project
        replies = await self.reader(self.pi, self.durable("pi", project), "pi", project)
        inbox = await self.reader(self.engineer, self.durable("engineer", project), "engineer", project)
        items = self.prepare(requests)
        expected = [derive_id(r.id, 0) for r in requests]
        responder = asyncio.create_task(self._serve(inbox))
        try:
            return await asyncio.wait_for(self._ask(replies, items, expected, responder), _deadline(len(items)))
        except TimeoutError:
            why = f": the responder failed: {responder.exception()!r}" if responder.done() and not responder.cancelled() and responder.exception() else ""
            raise BenchError(f"{self.name}: round trips did not finish within {_deadline(len(items)):.0f}s{why}") from None
        finally:
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)
            for party, sub, role in ((self.pi, replies, "pi"), (self.engineer, inbox, "engineer")):
                await sub.unsubscribe()
                await self.admin_js(party).delete_consumer(self.stream_for(role), self.durable(role, project))

    async def _serve(self, inbox: Any) -> None:
        async with aclosing(self.each(inbox)) as it:  # type: ignore[type-var]
            async for msg in it:
                await self.respond(msg)

    async def _ask(self, replies: Any, items: list[Any], expected: list[str], responder: asyncio.Task[None]) -> list[float]:
        samples = []
        async with aclosing(self.each(replies)) as it:  # type: ignore[type-var]
            for item, want in zip(items, expected, strict=True):
                t0 = perf_counter()
                await self.publish(self.pi, [item])
                msg = await anext(it)
                got = self.accept(msg)
                samples.append(perf_counter() - t0)
                await msg.ack()
                if got != want:
                    raise BenchError(f"{self.name}: expected reply {want}, got {got}")
                if responder.done():
                    responder.result()  # surfaces the responder's failure
        return samples


class LabSide(Side):
    """The lab's own path: Bus.publish (encode, size check, Nats-Msg-Id), durable pull consumers, decode."""

    name = "lab"
    stream = subjects.CONVO_STREAM

    def js(self, party: Bus) -> Any:
        return party.js

    def durable(self, role: str, project: str) -> str:
        return partitions.durable(role, partitions.partition(project))  # the only consumers a role's credential may create

    def stream_for(self, role: str) -> str:
        return partitions.work_stream(role)  # its mail reaches it through its work stream (bus/partitions)

    async def reader(self, party: Bus, durable: str, recipient: str, project: str) -> Any:
        # Its own mail of this project, within the project's partition (the pinned filter ends in '>', which allows this).
        own = f"lab.work.{recipient}.{partitions.partition(project)}.convo.{project}.*.{recipient}"
        return await pull(party, self.stream_for(recipient), durable, own)  # the bench sends no broadcasts

    def prepare(self, envs: list[Envelope]) -> list[Envelope]:
        return envs

    async def publish(self, party: Bus, items: list[Envelope]) -> None:
        for env in items:
            await party.publish(env)

    async def publish_async(self, party: Bus, items: list[Envelope]) -> None:
        """A sketch of the batched publish bus/client.py lacks: the same checks, PubAcks awaited together."""
        futures = []
        for env in items:
            data = encode(env)
            if len(data) > MAX_ENVELOPE_BYTES:
                raise MessageTooLarge(f"{env.kind} message of {len(data)} bytes exceeds the bus limit of {MAX_ENVELOPE_BYTES}")
            subject = subjects.convo(env.project, env.sender, env.recipient)
            futures.append(await party.js.publish_async(subject, data, headers={"Nats-Msg-Id": env.id}))
        await asyncio.gather(*futures)

    def each(self, sub: Any) -> AsyncIterator[Msg]:
        return messages(sub, asyncio.Event(), wait=FETCH_WAIT_S)

    def accept(self, msg: Msg) -> str:
        return decode(msg.data).id

    async def respond(self, msg: Msg) -> None:
        await self.engineer.publish(planned_reply(decode(msg.data)))
        await msg.ack()


def _raw_subject(env: Envelope) -> str:
    return f"bench.raw.{env.project}.{env.sender}.{env.recipient}"


class RawSide(Side):
    """Bare nats-py: the same bytes and headers, the same consumer settings, no envelope, no validation."""

    name = "raw"
    stream = RAW_STREAM

    def __init__(self, pi: Client, engineer: Client):
        super().__init__(pi, engineer)
        self._js = {id(pi): pi.jetstream(timeout=10), id(engineer): engineer.jetstream(timeout=10)}
        self.replies: dict[str, tuple[str, str, bytes]] = {}

    def js(self, party: Client) -> Any:
        return self._js[id(party)]

    async def reader(self, party: Client, durable: str, recipient: str, project: str) -> Any:
        js = self.js(party)
        # The lab's consumer settings verbatim, so ack wait, max deliver, backoff and max ack pending match.
        await js.add_consumer(self.stream, config=consumer_config(durable, f"bench.raw.{project}.*.{recipient}"))
        return await js.pull_subscribe_bind(durable=durable, stream=self.stream)

    def prepare(self, envs: list[Envelope]) -> list[tuple[str, str, bytes]]:
        items = [(_raw_subject(env), env.id, encode(env)) for env in envs]
        if envs[0].kind == "experiment_request":  # the reply each request gets, built before the clock starts
            for env in envs:
                reply = planned_reply(env)
                self.replies[env.id] = (_raw_subject(reply), reply.id, encode(reply))
        return items

    async def publish(self, party: Client, items: list[tuple[str, str, bytes]]) -> None:
        js = self.js(party)
        for subject, msg_id, data in items:
            await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})

    async def publish_async(self, party: Client, items: list[tuple[str, str, bytes]]) -> None:
        js = self.js(party)
        futures = [await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}) for subject, msg_id, data in items]
        await asyncio.gather(*futures)

    def each(self, sub: Any) -> AsyncIterator[Msg]:
        return _batches(sub, 1)

    def accept(self, msg: Msg) -> str:
        return (msg.headers or {}).get("Nats-Msg-Id", "")

    async def respond(self, msg: Msg) -> None:
        await self.publish(self.engineer, [self.replies[self.accept(msg)]])
        await msg.ack()


# ---------------------------------------------------------------- the run


@dataclass
class Report:
    settings: Settings
    sizes: dict[str, int]
    server_version: str
    rounds: list[dict[str, SideRound]] = field(default_factory=list)

    def median(self, side: str, metric: Callable[[SideRound], float]) -> float:
        return statistics.median(metric(r[side]) for r in self.rounds)

    def ratio(self, metric: Callable[[SideRound], float]) -> float:
        """Lab over raw, paired within each round so slow patches of a shared machine cancel out."""
        return statistics.median(metric(r["lab"]) / metric(r["raw"]) for r in self.rounds)


async def _raw_connect(server: EmbeddedServer, party: str) -> Client:
    assert server.credentials is not None
    return await nats.connect(
        servers=[server.url], user=ADMIN, password=server.credentials[ADMIN], name=f"bench-raw-{party}", connect_timeout=3
    )


async def _raw_stream(admin: Bus) -> None:
    """The raw stream is the lab's conversation stream's config under another name: same storage, limits, dedup window."""
    info = await admin.js.stream_info(subjects.CONVO_STREAM)
    await admin.js.add_stream(replace(info.config, name=RAW_STREAM, subjects=["bench.raw.>"], description="bench.bus raw side"))


async def _measure(server: EmbeddedServer, settings: Settings, report: Report) -> None:
    assert server.credentials is not None
    creds = server.credentials

    def config(user: str) -> BusConfig:
        return BusConfig(url=server.url, user=user, password=creds[user], name=f"bench-lab-{user}")

    admin = await Bus.connect(config(ADMIN), reconnect=False)
    buses: list[Bus] = [admin]
    raws: list[Client] = []
    try:
        await admin.ensure_topology()
        await _raw_stream(admin)
        buses += [await Bus.connect(config("pi"), reconnect=False), await Bus.connect(config("engineer"), reconnect=False)]
        raws += [await _raw_connect(server, "pi"), await _raw_connect(server, "engineer")]
        # Between flows the admin removes the roles' consumers (a role may not delete them).
        lab, raw = LabSide(buses[1], buses[2], manager=admin.js), RawSide(raws[0], raws[1])
        for side in (lab, raw):  # warm up: streams' first blocks, pydantic's first validations, connections
            await side.flow(result_envelopes("warm", min(100, settings.messages), settings.payload), hot=False)
            await side.round_trips(request_envelopes("warmrt", min(20, settings.requests)))
        for r in range(settings.rounds):
            order = (lab, raw) if r % 2 == 0 else (raw, lab)
            flows = result_envelopes(f"r{r}", settings.messages, settings.payload)
            hots = result_envelopes(f"h{r}", settings.messages, settings.payload)
            asks = request_envelopes(f"l{r}", settings.requests)
            got: dict[str, dict[str, Any]] = {s.name: {} for s in order}
            for side in order:
                got[side.name]["flow"] = await side.flow(flows, hot=False)
            for side in order:
                got[side.name]["hot"] = await side.flow(hots, hot=True)
            for side in order:
                got[side.name]["round_trips"] = await side.round_trips(asks)
            for name, parts in got.items():
                for kind in ("flow", "hot"):
                    if problem := parts[kind].problem():
                        raise BenchError(f"{name} side, round {r} ({kind}): {problem}")
            report.rounds.append({name: SideRound(**parts) for name, parts in got.items()})
    finally:
        for b in buses:
            await b.close()
        for nc in raws:
            await nc.drain()


def _server_version() -> str:
    try:
        out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError, LabBusError):
        return "unknown"
    return out.strip() or "unknown"


def measure(settings: Settings) -> Report:
    """Start one nats-server for the run, measure both sides over the rounds, stop the server."""
    probe = request_envelopes("p", 1)[0]
    sizes = {
        "experiment_result": len(encode(result_envelopes("p", 1, settings.payload)[0])),
        "experiment_request": len(encode(probe)),
        "experiment_planned": len(encode(planned_reply(probe))),
    }
    report = Report(settings=settings, sizes=sizes, server_version=_server_version())
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        server = EmbeddedServer(Path(tmp) / "nats", credentials=new_credentials()).start()
        try:
            asyncio.run(_measure(server, settings, report))
        finally:
            server.stop()
    return report


# ---------------------------------------------------------------- output


def _verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


Metric = Callable[[SideRound], float]


def throughput(s: SideRound) -> float:
    return s.flow.rate


def p50_ms(s: SideRound) -> float:
    return s.p(50) * 1e3


# (label, metric, format, goal): goal "min" means lab/raw at least THROUGHPUT_GOAL, "max" at most LATENCY_GOAL.
ROWS: list[tuple[str, Metric, str, str]] = [
    ("throughput, msg/s", throughput, "{:,.0f}", "min"),
    ("  publish, PubAck each", lambda s: s.flow.publish_rate, "{:,.0f}", ""),
    ("  consume, fetch 1", lambda s: s.flow.consume_rate, "{:,.0f}", ""),
    ("hot path, msg/s", lambda s: s.hot.rate, "{:,.0f}", ""),
    ("  publish, async PubAcks", lambda s: s.hot.publish_rate, "{:,.0f}", ""),
    ("round trip p50, ms", p50_ms, "{:.3f}", "max"),
    ("round trip p95, ms", lambda s: s.p(95) * 1e3, "{:.3f}", ""),
    ("round trip p99, ms", lambda s: s.p(99) * 1e3, "{:.3f}", ""),
]


def render(report: Report, console: Console) -> None:
    s = report.settings
    table = Table(title=f"bench.bus: lab layer vs raw nats-py, medians of {s.rounds} round(s)")
    for col, justify in (("measurement", "left"), ("lab", "right"), ("raw", "right"), ("lab/raw", "right"), ("goal", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for label, metric, fmt, goal in ROWS:
        ratio = report.ratio(metric)
        if goal == "min":
            goal_text = f">={THROUGHPUT_GOAL:.2f} {_verdict(ratio >= THROUGHPUT_GOAL)}"
        elif goal == "max":
            goal_text = f"<={LATENCY_GOAL:.2f} {_verdict(ratio <= LATENCY_GOAL)}"
        else:
            goal_text = "info"
        table.add_row(label, fmt.format(report.median("lab", metric)), fmt.format(report.median("raw", metric)), f"{ratio:.2f}", goal_text)
    console.print(table)
    sizes = ", ".join(f"{k} {v:,} B" for k, v in report.sizes.items())
    awaited = report.median("lab", lambda x: x.flow.publish_rate)
    batched = report.median("lab", lambda x: x.hot.publish_rate)
    console.print(
        f"{report.server_version}; {s.messages} messages per throughput run, {s.requests} round trips per latency run.\n"
        f"envelopes: {sizes} (--payload {s.payload}); lab connects as users pi/engineer, raw as the admin user.\n"
        "throughput: awaited Bus.publish vs js.publish of the same bytes, then the lab's messages() (fetch 1, decode, ack)\n"
        "  vs fetch 1 + ack; both publish then consume, lab/raw is the median of per-round ratios.\n"
        f"hot path: js.publish_async, PubAcks gathered, fetch {HOT_BATCH}; the lab side is a sketch (bus/client.py has no such path).\n"
        "round trip: pi publishes an experiment_request, the engineer's consumer answers experiment_planned, pi reads it.\n"
        f"an async publish path would take lab publishing from {awaited:,.0f} to {batched:,.0f} msg/s ({batched / awaited:.1f}x).\n"
        "every message arrived exactly once on both sides (ids checked, nothing redelivered or left in the consumers)."
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_bus", description="The lab's bus layer against raw nats-py JetStream.")
    d = Settings()
    p.add_argument("--messages", type=int, default=d.messages, help=f"messages per throughput run (default {d.messages})")
    p.add_argument("--payload", type=int, default=d.payload, help=f"experiment_result size to reach, bytes (default {d.payload})")
    p.add_argument("--rounds", type=int, default=d.rounds, help=f"alternating lab/raw rounds (default {d.rounds})")
    p.add_argument("--requests", type=int, default=d.requests, help=f"round trips per latency run (default {d.requests})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings(messages=args.messages, payload=args.payload, rounds=args.rounds, requests=args.requests)
    except BenchError as e:
        print(f"bench.bench_bus: {e}", file=sys.stderr)
        return 2
    try:
        report = measure(settings)
    except (BenchError, LabBusError, nats.errors.Error) as e:
        print(f"bench.bench_bus: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    render(report, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
