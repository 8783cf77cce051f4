"""`lab run`'s start survives a cluster that does not answer for a moment (a node killed, leaders moving).

The 3-node chaos test once lost a run to "no response from stream" while a node was down: the start
is now retried on unanswered requests, bounded, and a retry neither sends the start twice nor
writes the template bundle again.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from bus.client import Bus
from bus.errors import BusTimeout, from_nats
from bus.replay import read
from bus.retry import RetryPolicy
from bus.schema import CoPINote, CoPINoteMsg, Envelope
from bus.store import Artifacts
from services.cli.run import start_project
from tests.conftest import config_for

QUICK = RetryPolicy(attempts=4, budget_s=10.0, base_wait_s=0.05, max_wait_s=0.1, event="jetstream_retry")


def note(bundle_name: str) -> Envelope:
    # Any envelope the co-PI may send stands in for the start (whose body needs a whole template spec).
    return Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n1", text=bundle_name)))


async def test_an_unanswered_start_is_retried_and_sent_once(admin_bus, nats_server, monkeypatch):
    copi = await Bus.connect(config_for(nats_server, "copi"))
    real, failures = copi.publish, []

    async def flaky(env: Envelope) -> None:
        if len(failures) < 2:
            failures.append(env.id)
            await real(env)  # it reached the stream, but the answer was lost: the retry must not add a second start
            raise from_nats(nats.js.errors.NoStreamResponseError())  # as the bus raises it
        await real(env)

    monkeypatch.setattr(copi, "publish", flaky)
    try:
        sent = await start_project(copi, "p1", b"bundle-bytes", note, retry=QUICK)
    finally:
        await copi.close()
    assert len(set(failures)) == 1 and failures[0] == sent.id  # every try sent the same envelope
    log = [e.envelope async for e in read(admin_bus, "lab.convo.p1.>")]
    assert [e.id for e in log] == [sent.id] and log[0].body.note.text == "p1/template.tar.gz"
    # The bundle was written once: no second version from the retries.
    assert [i.name for i in await (await Artifacts.open(admin_bus)).obs.list() if i.name.startswith("p1/")] == ["p1/template.tar.gz"]


async def test_a_start_that_is_never_answered_fails_after_its_budget(admin_bus, nats_server, monkeypatch):
    copi = await Bus.connect(config_for(nats_server, "copi"))
    calls = []

    async def silent(env: Envelope) -> None:
        calls.append(env.id)
        raise from_nats(nats.errors.TimeoutError())

    monkeypatch.setattr(copi, "publish", silent)
    try:
        with pytest.raises(BusTimeout):
            await start_project(copi, "p2", b"bundle-bytes", note, retry=QUICK)
    finally:
        await copi.close()
    assert len(calls) == QUICK.attempts
