"""Per-project lanes: one message at a time per project, and a stop that gives back only once fetching is over.

The integration test (tests/integration/test_role_replicas.py) shows the order across a replica's restart on a
real nats-server; these pin the lanes' own rules with messages that record what was done to them.
"""

from __future__ import annotations

import asyncio

from services.host.lanes import Lanes


class Msg:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    async def nak(self) -> None:
        self.log.append(f"nak {self.name}")

    async def in_progress(self) -> None:
        pass


async def test_one_project_runs_in_order_and_projects_run_side_by_side():
    log: list[str] = []
    gate = asyncio.Event()

    async def handle(msg: Msg) -> None:
        log.append(f"start {msg.name}")
        if msg.name == "a0":
            await gate.wait()
        log.append(f"end {msg.name}")

    lanes = Lanes(2, handle)
    for name in ("a0", "a1", "b0"):
        lanes.submit(name[0], Msg(name, log))
    await asyncio.sleep(0.05)
    # a0 holds project a: a1 waits behind it, b0 runs beside it.
    assert log == ["start a0", "start b0", "end b0"]
    gate.set()
    await asyncio.sleep(0.05)
    assert log == ["start a0", "start b0", "end b0", "end a0", "start a1", "end a1"]
    assert lanes.held == 0 and not lanes.workers
    await lanes.close()


async def test_stopping_finishes_what_is_in_hand_and_gives_back_the_rest_only_at_close():
    log: list[str] = []
    gate = asyncio.Event()

    async def handle(msg: Msg) -> None:
        log.append(f"start {msg.name}")
        await gate.wait()
        log.append(f"end {msg.name}")

    lanes = Lanes(1, handle)
    lanes.submit("p", Msg("n0", log))
    lanes.submit("p", Msg("n1", log))
    await asyncio.sleep(0.05)
    lanes.stop_starting()
    # A pull still in flight when the stop came delivers one more: it is queued, not started and not yet given back.
    lanes.submit("p", Msg("n2", log))
    gate.set()
    await asyncio.sleep(0.05)
    assert log == ["start n0", "end n0"], "nothing given back before close: our own open pull would get it again"
    assert await lanes.room(10) == 8  # two still held; the fetch loop is not kept waiting while we stop
    await lanes.close()
    assert log == ["start n0", "end n0", "nak n1", "nak n2"], "given back in the project's order"
    assert lanes.held == 0 and not lanes.queues and not lanes.workers


async def test_room_waits_while_the_lanes_hold_enough():
    lanes = Lanes(1, lambda msg: asyncio.sleep(0.2))
    log: list[str] = []
    lanes.submit("p", Msg("n0", log))
    lanes.submit("p", Msg("n1", log))
    waiting = asyncio.create_task(lanes.room(2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await asyncio.wait_for(waiting, 2) == 1  # n0 done: one more fits
    await lanes.close()
    assert log == []  # n1 was handled, not given back
