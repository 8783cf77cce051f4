"""Replicas of one role: each project's messages go to one replica, in order; projects spread across replicas.

Two hosts of one role run in this process against a real nats-server, as
replicas 0 and 1 of 2 (bus/partitions). Their role is a probe whose handler
takes a while and records which replica ran which message when.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agents.base import Context, Role, on
from bus import partitions
from bus.schema import CoPINote, CoPINoteMsg, Envelope, NoteAck
from services.host.agent import AgentHost
from tests.conftest import config_for

pytestmark = pytest.mark.integration

HANDLE_S = 0.15
Run = tuple[str, str, str, float, float]  # (instance, project, note, start, end)


class Probe(Role):
    name = "writer"

    def __init__(self, instance: str, runs: list[Run]) -> None:
        super().__init__()
        self.instance = instance
        self.runs = runs

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: Context) -> None:
        start = time.monotonic()
        await asyncio.sleep(HANDLE_S)
        self.runs.append((self.instance, ctx.project, body.note.id, start, time.monotonic()))
        ctx.send(NoteAck(note_id=body.note.id, understood="ok"), "copi")


async def start(nats_server, tmp_path, index: int, runs: list[Run], of: int = 2) -> tuple[AgentHost, asyncio.Task[None]]:
    host = AgentHost("writer", config_for(nats_server, "writer"), home=tmp_path / f"home{index}", concurrency=4, replica=(index, of))
    host.role = Probe(f"writer-{index + 1}", runs)
    task = asyncio.create_task(host.run())
    while not host.ready_file().is_file():
        await asyncio.sleep(0.05)
    return host, task


async def publish(bus, projects: list[str], notes: range) -> None:
    for n in notes:
        for p in projects:
            note = CoPINote(id=f"n{n}", text="go", to="writer")
            await bus.publish(Envelope(project=p, sender="copi", recipient="writer", body=CoPINoteMsg(note=note)))


async def wait_runs(runs: list[Run], total: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while len(runs) < total and time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.05)


def check_order(runs: list[Run], projects: list[str], per_project: int) -> dict[str, set[str]]:
    """Each project's notes ran once each, in order, never two at once; returns the replicas each project met."""
    met = {}
    for p in projects:
        mine = sorted((r for r in runs if r[1] == p), key=lambda r: r[3])
        assert [r[2] for r in mine] == [f"n{n}" for n in range(per_project)], f"{p}: {[r[2] for r in mine]}"
        for a, b in zip(mine, mine[1:], strict=False):
            assert b[3] >= a[4], f"{p}: {a[0]} and {b[0]} held its messages at once"
        met[p] = {r[0] for r in mine}
    return met


async def test_eight_projects_on_two_replicas_each_in_order_on_one_replica(admin_bus, nats_server, tmp_path):
    projects = [f"proj{i}" for i in range(8)]
    per_project = 4
    runs: list[Run] = []
    hosts = [await start(nats_server, tmp_path, i, runs) for i in range(2)]
    try:
        await publish(admin_bus, projects, range(per_project))
        await wait_runs(runs, len(projects) * per_project)
    finally:
        for host, _ in hosts:
            host.stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 30) for _, t in hosts))
    assert len(runs) == len(projects) * per_project
    # The work stream is a work queue: what was handled (acked) has left it.
    assert (await admin_bus.js.stream_info(partitions.work_stream("writer"))).state.messages == 0
    met = check_order(runs, projects, per_project)
    assert all(len(m) == 1 for m in met.values()), met  # one replica per project
    assert set().union(*met.values()) == {"writer-1", "writer-2"}, met  # and the projects spread over both
    # Both replicas worked at the same time (on different projects).
    a = [r for r in runs if r[0] == "writer-1"]
    b = [r for r in runs if r[0] == "writer-2"]
    assert any(x[3] < y[4] and y[3] < x[4] for x in a for y in b)


async def test_a_stopped_replica_s_projects_wait_for_its_successor_and_lose_nothing(admin_bus, nats_server, tmp_path):
    projects = [f"proj{i}" for i in range(8)]
    runs: list[Run] = []
    hosts = [await start(nats_server, tmp_path, i, runs) for i in range(2)]
    try:
        await publish(admin_bus, projects, range(2))
        await wait_runs(runs, 4)
        # Replica 1 goes away mid-run (what it held finishes, what it queued goes back); more messages come.
        hosts[1][0].stop.set()
        await asyncio.wait_for(hosts[1][1], 30)
        await publish(admin_bus, projects, range(2, 4))
        await asyncio.sleep(1.0)
        waiting = {r[1] for r in runs if r[0] == "writer-2"}
        assert waiting, "replica 1 had projects of its own"
        # The supervisor (or Kubernetes) starts the same index again; it takes its partitions where they were.
        hosts[1] = await start(nats_server, tmp_path, 1, runs)
        await wait_runs(runs, len(projects) * 4)
    finally:
        for host, _ in hosts:
            host.stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 30) for _, t in hosts), return_exceptions=True)
    met = check_order(runs, projects, 4)
    assert all(len(m) == 1 for m in met.values()), met


async def test_a_replica_dead_letters_a_bad_message_under_the_subject_it_was_published_on(admin_bus, nats_server, tmp_path):
    runs: list[Run] = []
    hosts = [await start(nats_server, tmp_path, i, runs) for i in range(2)]
    try:
        for p in ("bad0", "bad1", "bad2", "bad3"):
            await admin_bus.js.publish(f"lab.convo.{p}.copi.writer", b"not json")
        sub = await admin_bus.js.subscribe("lab.dlq.writer", stream="LAB_DLQ", ordered_consumer=True)
        records = [json.loads((await sub.next_msg(20)).data) for _ in range(4)]
    finally:
        for host, _ in hosts:
            host.stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 30) for _, t in hosts))
    assert sorted(r["subject"] for r in records) == [f"lab.convo.bad{i}.copi.writer" for i in range(4)]
    assert all(r["read_on"].startswith("lab.work.writer.") and r["reason"].startswith("invalid message") for r in records)


async def test_what_a_stopping_replica_had_queued_is_there_for_its_successor_at_once(admin_bus, nats_server, tmp_path):
    """Queued messages go back after the stopping replica's last pull has ended, not into that pull.

    Six projects, four in hand and two queued, so the fetch loop still has a pull open when the stop comes
    (it holds at most 2 x concurrency). A message given back into that open pull would be delivered to the
    replica that is going away and come back only after the ack wait, behind the project's later messages.
    """
    from bus.consumer import ACK_WAIT_S

    projects = [f"solo{i}" for i in range(6)]
    runs: list[Run] = []
    host, task = await start(nats_server, tmp_path, 0, runs, of=1)
    try:
        await publish(admin_bus, projects, range(1))
        t0 = time.monotonic()
        while host.lanes.in_hand < 4 and time.monotonic() - t0 < 20:
            await asyncio.sleep(0.01)
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 30)
    given_back = [p for p in projects if p not in {r[1] for r in runs}]
    assert given_back, "some projects were queued when the stop came"
    successor, task = await start(nats_server, tmp_path, 0, runs, of=1)
    try:
        await wait_runs(runs, len(projects), timeout=ACK_WAIT_S / 2)
        handled = sorted(r[1] for r in runs)  # before the successor stops: a stuck message could arrive meanwhile
    finally:
        successor.stop.set()
        await asyncio.wait_for(task, 30)
    assert handled == sorted(projects), f"{given_back} were not back within {ACK_WAIT_S / 2:.0f} s (the ack wait is {ACK_WAIT_S:.0f} s)"
