"""The lab-wide slot ledger on a real KV bucket: no oversubscription, fair shares, idempotent holds, leaks reclaimed."""

from __future__ import annotations

import asyncio
import time

from bus.ledger import LEDGER_KEY, Ledger, SlotLedger
from bus.store import StateStore


async def test_concurrent_takers_never_oversubscribe_and_share_fairly(admin_bus):
    ledger = SlotLedger(await StateStore.open(admin_bus), capacity=4)
    # Project a alone takes everything that is free: nobody else waits.
    assert [await ledger.acquire("a", f"a{i}", 1) for i in range(5)] == [True, True, True, True, False]
    # b arrives: no room, so it waits; a gives one back and may not take it again while b waits.
    assert await ledger.acquire("b", "b0", 1) is False
    await ledger.release(["a0"])
    assert await ledger.acquire("a", "a4", 1) is False
    assert await ledger.acquire("b", "b0", 1) is True
    # A redelivered handler takes the same hold again, not a second one.
    assert await ledger.acquire("b", "b0", 1) is True
    state, _ = await ledger.read()
    assert state.used() == 4 and state.held_by("b") == 1
    # Many lanes racing on the same document: exactly the free units are granted.
    await ledger.forget("a")
    await ledger.forget("b")
    results = await asyncio.gather(*(ledger.acquire(f"p{i % 3}", f"j{i}", 1) for i in range(12)))
    assert sum(results) == 4
    state, _ = await ledger.read()
    assert state.used() == 4 and len(state.held) == 4


async def test_gpus_are_counted_per_job_request_and_a_too_big_job_is_not_starved(admin_bus):
    ledger = SlotLedger(await StateStore.open(admin_bus), capacity=8, counts="gpus")
    assert ledger.units_of(4) == 4 and ledger.units_of(0) == 1
    assert await ledger.acquire("a", "a0", 4) and await ledger.acquire("a", "a1", 2)
    assert await ledger.acquire("b", "b0", 4) is False  # 6 of 8 in use
    assert await ledger.acquire("a", "a2", 1) is False  # a holds 6, above its share of 4 while b waits
    await ledger.release(["a1"])
    assert await ledger.acquire("b", "b0", 4) is True
    state, _ = await ledger.read()
    assert state.used() == 8 and state.held_by("a") == 4 and state.held_by("b") == 4


async def test_reconcile_reclaims_holds_and_waits_nobody_owns(admin_bus):
    states = await StateStore.open(admin_bus)
    ledger = SlotLedger(states, capacity=2)
    assert await ledger.acquire("a", "a0", 1) and await ledger.acquire("a", "gone", 1)
    assert await ledger.acquire("b", "b0", 1) is False
    await ledger.reconcile(active={"a0"}, queued={}, grace_s=60)  # within the grace: nothing dropped
    state, _ = await ledger.read()
    assert set(state.held) == {"a0", "gone"} and "b" in state.waiting
    await ledger.reconcile(active={"a0"}, queued={}, grace_s=0)
    state, _ = await ledger.read()
    assert set(state.held) == {"a0"} and state.waiting == {}
    doc, _ = await states.read(LEDGER_KEY)
    assert Ledger.model_validate(doc).held["a0"].since <= time.time()


# ------------------------------------------------------------------ wake-ups


async def test_a_waiting_project_is_woken_once_when_its_turn_comes(admin_bus):
    from bus import subjects
    from bus.jobkeys import JobKeys, new_secret
    from bus.schema import decode
    from services.host.job_watch import JobWatch

    states = await StateStore.open(admin_bus)
    ledger = SlotLedger(states, capacity=2)
    assert await ledger.acquire("a", "a0", 1) and await ledger.acquire("a", "a1", 1)
    assert await ledger.acquire("b", "b0", 1) is False
    assert await ledger.acquire("c", "c0", 2) is False
    await ledger.release(["a0"])  # room for b's one slot, not for c's two
    woken: dict[str, list[str]] = {}

    async def collect(project: str) -> None:
        sub = await admin_bus.js.subscribe(subjects.job_statuses(project), stream=subjects.JOBS_STREAM, ordered_consumer=True)
        async for msg in sub.messages:
            woken.setdefault(project, []).append(decode(msg.data).body.job_id)

    watch = JobWatch(admin_bus, states, None, ledger, JobKeys(new_secret()))  # type: ignore[arg-type]
    tasks = [asyncio.create_task(collect("b")), asyncio.create_task(collect("c")), asyncio.create_task(watch.wake_waiting(every=0.05))]
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if woken.get("b"):
                break
        await asyncio.sleep(0.3)  # many ticks on the same ledger revision: one wake-up, not one a tick
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert woken.get("b") == ["b0"]
    assert "c" not in woken


async def test_a_ledger_written_while_leases_existed_still_loads(admin_bus):
    states = await StateStore.open(admin_bus)
    now = time.time()
    await states.write(LEDGER_KEY, {"capacity": 2, "counts": "slots",
                                    "held": {"a0": {"project": "a", "units": 1, "since": now, "lease_until": None}},
                                    "waiting": {"b": {"job_id": "b0", "units": 1, "since": now, "lease_until": None}}}, 0)
    ledger = SlotLedger(states, capacity=2)
    state, _ = await ledger.read()
    assert state.held["a0"].project == "a" and state.waiting["b"].job_id == "b0"
    assert "lease_until" not in state.model_dump()["held"]["a0"]
    await ledger.reconcile(active={"a0"}, queued={"b": {"b0"}}, grace_s=0)  # kept while their jobs are listed
    assert await ledger.acquire("b", "b0", 1)
    state, _ = await ledger.read()
    assert set(state.held) == {"a0", "b0"} and state.waiting == {}


async def test_a_document_that_is_not_a_ledger_is_replaced_not_fatal(admin_bus):
    """The co-PI may write the ledger's key: a bad document must not stop every engineer's dispatch."""
    states = await StateStore.open(admin_bus)
    await states.write(LEDGER_KEY, {"held": "nonsense", "capacity": "x"}, 0)
    ledger = SlotLedger(states, capacity=1)
    state, revision = await ledger.read()
    assert state.held == {} and state.capacity == 1
    assert await ledger.acquire("a", "a0", 1)  # the next change writes a real ledger over it
    assert not await ledger.acquire("b", "b0", 1)
    doc, after = await states.read(LEDGER_KEY)
    assert after > revision and set(Ledger.model_validate(doc).held) == {"a0"} and set(Ledger.model_validate(doc).waiting) == {"b"}
