"""The lab-wide slot ledger on a real KV bucket: no oversubscription, fair shares, idempotent holds, leaks reclaimed."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus.ledger import LEDGER_KEY, Ledger, SlotLedger
from bus.store import StateStore

pytestmark = pytest.mark.integration


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
