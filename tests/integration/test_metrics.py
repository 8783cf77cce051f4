"""An agent serves its Prometheus metrics (LAB_METRICS_PORT) and they count what it did, scraped over HTTP.

One host runs in this process against a real nats-server (as in test_role_replicas),
with a probe role whose handler takes a known time; the test scrapes its /metrics
page before and after sending messages and one malformed message, and reads the
differences (the registry is the process's, shared with other tests).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agents.base import Context, Role, on
from bus import partitions, subjects
from bus.schema import ROLES, CoPINote, CoPINoteMsg, Envelope, NoteAck
from bus.schema.state import Stage
from bus.store import StateStore
from services.host.agent import AgentHost
from tests.conftest import config_for
from tests.integration.test_cli import lab, start_project

pytestmark = pytest.mark.integration

HANDLE_S = 0.05
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Probe(Role):
    name = "writer"

    def __init__(self) -> None:
        super().__init__()
        self.done: list[str] = []

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: Context) -> None:
        await asyncio.sleep(HANDLE_S)
        self.done.append(f"{ctx.project}/{body.note.id}")
        ctx.send(NoteAck(note_id=body.note.id, understood="ok"), "copi")


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def test_an_agent_s_metrics_count_its_messages_latency_and_dead_letters(admin_bus, nats_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_METRICS_PORT", "0")
    host = AgentHost("writer", config_for(nats_server, "writer"), home=tmp_path / "home", concurrency=4)
    probe = host.role = Probe()
    task = asyncio.create_task(host.run())
    try:
        await wait_for(lambda: host.ready_file().is_file())
        assert host.metrics_url.startswith("http://") and host.metrics_url.endswith("/metrics")
        assert host.heartbeat_doc().metrics_url == host.metrics_url
        port = urlsplit(host.metrics_url).port
        assert port
        before = scrape(port)
        for n in range(3):
            for project in ("metrics-p1", "metrics-p2"):
                note = CoPINote(id=f"n{n}", text="go", to="writer")
                await admin_bus.publish(Envelope(project=project, sender="copi", recipient="writer", body=CoPINoteMsg(note=note)))
        await admin_bus.js.publish(subjects.convo("metrics-p1", "copi", "writer"), b"{not json")
        dead = get(before, "lab_dead_letters_total", role="writer")
        await wait_for(lambda: len(probe.done) == 6 and get(scrape(port), "lab_dead_letters_total", role="writer") > dead)
        after = scrape(port)
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 30)

    def moved(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert sorted(probe.done) == sorted(f"{p}/n{n}" for p in ("metrics-p1", "metrics-p2") for n in range(3))
    assert moved("lab_messages_handled_total", role="writer", outcome="ok") == 6
    assert moved("lab_messages_handled_total", role="writer", outcome="dead_letter") == 1
    assert moved("lab_messages_handled_total", role="writer", outcome="error") == 0
    assert moved("lab_dead_letters_total", role="writer") == 1
    # Every message finished is one observation of the handler histogram, the six handled ones taking HANDLE_S or more.
    assert moved("lab_handler_seconds_count", role="writer") == 7
    assert moved("lab_handler_seconds_sum", role="writer") >= 6 * HANDLE_S
    assert moved("lab_handler_seconds_bucket", role="writer", le="+Inf") == 7
    assert moved("lab_handler_seconds_bucket", role="writer", le="0.025") <= 1  # only the malformed message is that quick
    assert get(after, "lab_lanes_held", role="writer") == 0 and get(after, "lab_lanes_in_hand", role="writer") == 0


async def test_a_restarted_pi_counts_the_stored_stages_of_the_projects_its_replica_owns(admin_bus, nats_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_METRICS_PORT", "0")  # an agent without an exporter reads no stored project for its gauges
    states = await StateStore.open(admin_bus)
    projects = [f"metrics-s{i}" for i in range(8)]
    for p in projects:
        await states.write(f"pi.{p}", {"state": {"project": p, "stage": "review"}, "outbox": {}}, 0)
    mine = [p for p in projects if partitions.partition(p) in partitions.owned(1, 2)]
    assert 0 < len(mine) < len(projects)
    before = REGISTRY.get_sample_value("lab_projects", {"stage": "review"}) or 0.0
    host = AgentHost("pi", config_for(nats_server, "pi"), home=tmp_path / "home", replica=(1, 2))
    task = asyncio.create_task(host.run())
    try:
        await wait_for(lambda: host.ready_file().is_file())
        # Counted beside the agent's work, soon after it starts: the replica's own projects, not the others'.
        await wait_for(lambda: REGISTRY.get_sample_value("lab_projects", {"stage": "review"}) == before + len(mine), timeout=15)
        await asyncio.sleep(0.5)  # and no more come
        assert REGISTRY.get_sample_value("lab_projects", {"stage": "review"}) == before + len(mine)
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 30)


def test_every_process_of_a_running_lab_serves_its_series(lab_env):
    """`lab up` with LAB_METRICS_PORT=0: each of the six agents serves on a port of its own, found in its heartbeat."""
    home, env = lab_env
    env["LAB_METRICS_PORT"] = "0"
    r = lab(env, "up", "--detach")
    assert r.returncode == 0, r.stderr + r.stdout
    try:
        start_project(home, "metricsdemo")
        pages: dict[str, Samples] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            agents = json.loads(lab(env, "status", "--json").stdout)["agents"]
            urls = {role: (beat or {}).get("metrics_url", "") for role, beat in agents.items()}
            if all(urls.values()) and len(urls) == len(ROLES):
                pages = {role: scrape(urlsplit(url).port or 0) for role, url in urls.items()}
                if get(pages["pi"], "lab_messages_handled_total", role="pi", outcome="ok") >= 1 and get(
                        pages["literature"], "lab_messages_handled_total", role="literature", outcome="ok") >= 1:
                    break
            time.sleep(0.5)
    finally:
        assert lab(env, "down").returncode == 0
    assert sorted(pages) == sorted(ROLES), pages.keys()
    assert len({urlsplit(beat["metrics_url"]).port for beat in agents.values()}) == len(ROLES)  # no two on one port
    for role, page in pages.items():
        ok = get(page, "lab_messages_handled_total", role=role, outcome="ok")
        finished = sum(get(page, "lab_messages_handled_total", role=role, outcome=o) for o in ("ok", "error", "dead_letter"))
        assert get(page, "lab_handler_seconds_count", role=role) == finished, role
        assert get(page, "lab_lanes_held", role=role) >= 0 and get(page, "process_resident_memory_bytes") > 0, role
        # Each page is its own process's: no other role's messages are counted there.
        assert all(dict(labels).get("role") in (None, role) for name, labels in page if name.startswith("lab_messages")), role
        if role in ("pi", "literature"):
            assert ok >= 1, role
    # The PI counts the project it started, in one stage.
    stages = {dict(labels)["stage"]: v for (name, labels), v in pages["pi"].items() if name == "lab_projects"}
    assert sum(stages.values()) == 1 and set(stages) <= set(get_args(Stage)), stages


async def test_a_metrics_port_already_taken_costs_the_metrics_not_the_agent(admin_bus, nats_server, tmp_path, monkeypatch):
    from bus import metrics

    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    monkeypatch.setattr(metrics, "_served", {})  # as in a fresh process: this one may already serve
    monkeypatch.setenv("LAB_METRICS_PORT", str(taken.getsockname()[1]))
    host = AgentHost("writer", config_for(nats_server, "writer"), home=tmp_path / "home")
    task = asyncio.create_task(host.run())
    try:
        await wait_for(lambda: host.ready_file().is_file() or task.done())
        assert host.ready_file().is_file() and host.metrics_url == "" and host.heartbeat_doc().metrics_url == ""
    finally:
        taken.close()
        host.stop.set()
        await asyncio.wait_for(task, 30)
