"""Handler errors that cannot succeed on retry reach the dead letters at once, from a real agent process on a real server."""

from __future__ import annotations

import json
import time

from bus import subjects
from bus.schema import CoPINote, CoPINoteMsg, Envelope, ExperimentRequest, Idea
from bus.store import StateStore
from tests.chaos.test_agent_sigkill import start_agent
from tests.fakes import TOY_SPEC


async def dead_letters(bus, role: str, timeout: float) -> list[dict]:
    """The dead letters of ``role`` that arrive within ``timeout`` seconds."""
    sub = await bus.js.subscribe(subjects.dlq(role), stream=subjects.DLQ_STREAM, ordered_consumer=True)
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not found:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                continue
            found.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return found


async def test_a_missing_bundle_and_a_bad_stored_state_are_dead_lettered_on_first_delivery(admin_bus, nats_server, tmp_path):
    home = tmp_path / "home"
    engineer = start_agent(nats_server, home, "engineer", LAB_EXECUTOR="local")
    pi = start_agent(nats_server, home, "pi")
    try:
        # The engineer needs the template bundle to plan an idea's code: it is not in the store, and never will be.
        idea = Idea(id="i1", title="t", hypothesis="h", falsification="f", changes={"lr": 0.5})
        req = ExperimentRequest(experiment_id="x02-i1", idea=idea, seeds=[0, 1, 2], template="toy", template_object="gone/template.tar.gz", spec=TOY_SPEC)
        await admin_bus.publish(Envelope(project="gone", sender="pi", recipient="engineer", body=req))
        # The PI's stored state for a project no longer validates (written by hand here).
        states = await StateStore.open(admin_bus)
        await states.write("pi.broken", {"state": {"project": "broken", "bogus": 1}, "outbox": {}}, 0)
        note = CoPINote(id="n1", text="hello")
        await admin_bus.publish(Envelope(project="broken", sender="copi", recipient="pi", body=CoPINoteMsg(note=note)))

        # Well inside the first retry delay (2 s) plus the agents' start: no backoff was waited through.
        (eng,) = await dead_letters(admin_bus, "engineer", timeout=15)
        assert eng["num_delivered"] == 1
        assert eng["reason"].startswith("cannot succeed on retry: ArtifactMissing") and "gone/template.tar.gz" in eng["reason"]
        (bad,) = await dead_letters(admin_bus, "pi", timeout=15)
        assert bad["num_delivered"] == 1
        assert bad["reason"].startswith("cannot succeed on retry: ValidationError")
    finally:
        for p in (engineer, pi):
            p.terminate()
            p.wait(20)
