"""One agent, many projects: concurrent across projects, strictly in order within one, usage charged apart.

The host runs in this process against a real nats-server; its role is swapped for
a probe role whose handler takes a while, records when it ran, and spends mind
tokens through the same meter the llm client charges.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.base import Context, Role, on
from agents.minds.meter import charge
from bus.schema import CoPINote, CoPINoteMsg, Envelope, MindChoice, NoteAck
from bus.store import StateStore
from services.host.agent import AgentHost
from tests.conftest import config_for

pytestmark = pytest.mark.integration

HANDLE_S = 0.4


class Probe(Role):
    """Records each handling as (project, note, start, end); charges tokens by project."""

    name = "writer"

    def __init__(self, spend: dict[str, int]) -> None:
        super().__init__()
        self.runs: list[tuple[str, str, float, float]] = []
        self.spend = spend
        self.minds: dict[str, Any] = {}

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: Context) -> None:
        start = time.monotonic()
        self.minds[ctx.project] = ctx.mind
        # Two calls with a pause between them: concurrent handlers interleave their charges.
        charge(self.spend[ctx.project], 1, 0.5)
        await asyncio.sleep(HANDLE_S)
        charge(self.spend[ctx.project], 1, 0.5)
        self.runs.append((ctx.project, body.note.id, start, time.monotonic()))
        ctx.send(NoteAck(note_id=body.note.id, understood="ok"), "copi")


async def run_host(nats_server, tmp_path, concurrency: int, spend: dict[str, int]) -> tuple[AgentHost, Probe, asyncio.Task]:
    host = AgentHost("writer", config_for(nats_server, "writer"), home=tmp_path / "home", concurrency=concurrency)
    probe = Probe(spend)
    host.role = probe
    task = asyncio.create_task(host.run())
    while not host.ready_file().is_file():
        await asyncio.sleep(0.05)
    return host, probe, task


async def test_projects_run_concurrently_each_in_order_with_usage_apart(admin_bus, nats_server, tmp_path):
    projects = [f"p{i}" for i in range(4)]
    spend = {p: 100 * (i + 1) for i, p in enumerate(projects)}
    per_project = 3
    host, probe, task = await run_host(nats_server, tmp_path, concurrency=3, spend=spend)
    try:
        t0 = time.monotonic()
        # Each project's messages in a burst: a host that ignored projects would run them at once.
        for p in projects:
            for n in range(per_project):
                note = CoPINote(id=f"n{n}", text="go", to="writer")
                await admin_bus.publish(Envelope(project=p, sender="copi", recipient="writer", body=CoPINoteMsg(note=note)))
        total = len(projects) * per_project
        while len(probe.runs) < total and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.05)
        makespan = time.monotonic() - t0
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 30)
    assert len(probe.runs) == total
    for p in projects:
        runs = sorted((r for r in probe.runs if r[0] == p), key=lambda r: r[2])
        assert [r[1] for r in runs] == [f"n{n}" for n in range(per_project)], f"{p} out of order"
        for a, b in zip(runs, runs[1:], strict=False):
            assert b[2] >= a[3], f"{p}: two of its messages were handled at once"
    # Across projects: never more than the concurrency at once, and more than one at a time.
    events = sorted([(r[2], 1) for r in probe.runs] + [(r[3], -1) for r in probe.runs])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 2 <= peak <= 3, peak
    assert makespan < total * HANDLE_S * 0.75, f"{makespan:.1f}s is no faster than one at a time"
    # Each project paid for its own calls only, although they overlapped.
    states = await StateStore.open(admin_bus)
    for p in projects:
        doc, _ = await states.read(f"writer.{p}")
        assert doc["usage"]["prompt_tokens"] == 2 * per_project * spend[p], (p, doc["usage"])
        assert doc["usage"]["completion_tokens"] == 2 * per_project


async def test_a_project_mind_choice_is_kept_for_messages_without_one(admin_bus, nats_server, tmp_path):
    """The project's mind rides on its envelopes; a message without one (a job status) uses the stored choice."""
    host, probe, task = await run_host(nats_server, tmp_path, concurrency=2, spend={"m1": 1, "m2": 1})
    host.minds.config = {"base_url": "http://127.0.0.1:9/v1"}  # a local server takes any key; nothing is called here
    try:
        note = CoPINote(id="a", text="go", to="writer")
        choice = MindChoice(kind="llm", model="tiny-model")
        await admin_bus.publish(Envelope(project="m1", sender="copi", recipient="writer", body=CoPINoteMsg(note=note), mind=choice))
        await admin_bus.publish(Envelope(project="m2", sender="copi", recipient="writer", body=CoPINoteMsg(note=note)))
        note2 = CoPINote(id="b", text="again", to="writer")
        await admin_bus.publish(Envelope(project="m1", sender="copi", recipient="writer", body=CoPINoteMsg(note=note2)))
        t0 = time.monotonic()
        while len(probe.runs) < 3 and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.05)
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 30)
    from agents.minds.llm.common import LLMMind

    assert isinstance(probe.minds["m1"], LLMMind) and probe.minds["m1"].client.settings.model == "tiny-model"
    assert probe.minds["m2"] is host.mind  # no choice: the agent's own (offline) mind
    states = await StateStore.open(admin_bus)
    doc, _ = await states.read("writer.m1")
    assert doc["mind"] == {"kind": "llm", "model": "tiny-model"}
    # The ack of the second message carries the project's choice on, for whoever reads it next.
    from bus.replay import read

    acks = [e.envelope async for e in read(admin_bus, "lab.convo.m1.writer.copi", idle=0.5) if e.envelope]
    assert len(acks) == 2 and all(a.mind == choice for a in acks)


async def test_stop_finishes_the_message_in_hand_and_hands_back_the_queued_ones(admin_bus, nats_server, tmp_path):
    """SIGTERM's path: the message being handled completes and is acked; those waiting in the lane go back at once."""
    host, probe, task = await run_host(nats_server, tmp_path, concurrency=1, spend={"s": 1})
    for n in range(3):
        note = CoPINote(id=f"n{n}", text="go", to="writer")
        await admin_bus.publish(Envelope(project="s", sender="copi", recipient="writer", body=CoPINoteMsg(note=note)))
    t0 = time.monotonic()
    while host.lanes.in_hand == 0 and time.monotonic() - t0 < 20:
        await asyncio.sleep(0.02)
    while host.lanes.held < 2 and time.monotonic() - t0 < 20:  # one in hand, one waiting (it holds at most 2x concurrency)
        await asyncio.sleep(0.02)
    host.stop.set()
    await asyncio.wait_for(task, 30)
    assert [r[1] for r in probe.runs] == ["n0"]
    # A successor gets the other two well before the ack wait (10 s) would have brought them back.
    second, probe2, task2 = await run_host(nats_server, tmp_path / "b", concurrency=1, spend={"s": 1})
    t1 = time.monotonic()
    try:
        while len(probe2.runs) < 2 and time.monotonic() - t1 < 20:
            await asyncio.sleep(0.05)
    finally:
        second.stop.set()
        await asyncio.wait_for(task2, 30)
    assert [r[1] for r in probe2.runs] == ["n1", "n2"]
    assert time.monotonic() - t1 < 1 + 2 * HANDLE_S + 5
