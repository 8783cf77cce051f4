"""The agent host as a real process: SIGKILL while holding a message, SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from bus.client import Bus
from bus.schema import Budget, Envelope, StartProject
from bus.store import StateStore
from tests.conftest import lab_cmd
from tests.fakes import TOY_SPEC

SPEC = TOY_SPEC


def agent_env(server, home, role: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(LAB_HOME=str(home), LAB_NATS_URL=server.url, LAB_NATS_USER=role, LAB_NATS_PASSWORD=server.credentials[role], **extra)
    return env


def start_agent(server, home, role: str, **extra: str) -> subprocess.Popen:
    ready = home / "run" / f"{role}.ready"
    ready.unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / f"{role}-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(lab_cmd("agent", role), env=agent_env(server, home, role, **extra), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name  # type: ignore[attr-defined]
    deadline = time.monotonic() + 90  # a loaded CI machine starts Python slowly
    while not ready.is_file():
        assert proc.poll() is None, open(log.name).read()
        assert time.monotonic() < deadline, "agent not ready"
        time.sleep(0.1)
    return proc


async def count_from(bus: Bus, project: str, sender: str) -> list[Envelope]:
    from bus.replay import read

    return [e.envelope async for e in read(bus, f"lab.convo.{project}.{sender}.*", idle=0.5) if e.envelope]


async def test_sigkill_while_holding_a_message_redelivers_and_outputs_once(admin_bus, nats_server, tmp_path):
    home = tmp_path / "home"
    # The first PI stores its new state, then sits on the message without publishing or acking: we kill it there.
    first = start_agent(nats_server, home, "pi", LAB_FAULT_DELAY_AFTER_STORE="60")
    start = StartProject(template="toy", template_object="crash/template.tar.gz", spec=SPEC, budget=Budget(max_ideas=2))
    await admin_bus.publish(Envelope(project="crash", sender="copi", recipient="pi", body=start))
    states = await StateStore.open(admin_bus)
    for _ in range(100):
        doc, _ = await states.read("pi.crash")
        if doc:
            break
        await asyncio.sleep(0.1)
    assert doc and doc["state"]["stage"] == "experiments"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert await count_from(admin_bus, "crash", "pi") == []  # it died before publishing anything

    second = start_agent(nats_server, home, "pi")
    try:
        outputs: list[Envelope] = []
        for _ in range(60):  # redelivery after the ack wait (10 s)
            outputs = await count_from(admin_bus, "crash", "pi")
            if len(outputs) >= 4:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        outputs = await count_from(admin_bus, "crash", "pi")
    finally:
        second.terminate()
        second.wait(20)
    kinds = sorted(o.kind for o in outputs)
    assert kinds == ["experiment_request", "novelty_check", "novelty_check", "project_estimate"], kinds
    assert len({o.id for o in outputs}) == 4
    # The redelivered message was answered from the stored outbox, not handled twice.
    doc, _ = await states.read("pi.crash")
    assert len(doc["state"]["experiments"]) == 1 and len(doc["state"]["ideas"]) == 2


async def test_sigterm_stops_cleanly(admin_bus, nats_server, tmp_path):
    home = tmp_path / "home"
    proc = start_agent(nats_server, home, "engineer")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    out = open(proc.log_path).read()
    assert '"agent stopped"' in out or "agent stopped" in out
    assert not (home / "run" / "engineer.ready").exists()
