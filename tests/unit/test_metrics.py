"""The lab's Prometheus series (bus/metrics): the gauges kept from role state, the capacity ledger, model calls.

The series live in the process's default registry, which other tests share, so each
test reads what it changed as a difference, or on labels (projects) of its own.
"""

from __future__ import annotations

from typing import Any

import pytest
import tiktoken
from prometheus_client import REGISTRY

from agents.minds import make_mind
from agents.minds.llm.errors import MindFailed
from bus import metrics
from bus.ledger import SlotLedger
from services.host import gauges
from tests.fake_openai import FakeOpenAI, Reply
from tests.llm_helpers import clean_env, report

__all__ = ["clean_env"]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_pi_s_stages_are_counted_once_per_project_and_follow_a_stage_change() -> None:
    before = {s: value("lab_projects", stage=s) for s in ("ideas", "experiments", "done")}
    gauges.observe("pi", "metrics-a", {"stage": "ideas"})
    gauges.observe("pi", "metrics-b", {"stage": "ideas"})
    assert value("lab_projects", stage="ideas") == before["ideas"] + 2
    gauges.observe("pi", "metrics-a", {"stage": "experiments"})
    gauges.observe("pi", "metrics-a", {"stage": "experiments"})  # the same stage told again counts once
    assert value("lab_projects", stage="ideas") == before["ideas"] + 1
    assert value("lab_projects", stage="experiments") == before["experiments"] + 1
    gauges.observe("pi", "metrics-b", {"stage": "done"})
    assert value("lab_projects", stage="ideas") == before["ideas"]
    assert value("lab_projects", stage="done") == before["done"] + 1


def test_the_engineer_s_jobs_are_counted_by_state_over_its_projects() -> None:
    before = {s: value("lab_jobs", state=s) for s in ("queued", "running", "done")}
    gauges.observe("engineer", "metrics-c", {"jobs": {"j1": {"state": "queued"}, "j2": {"state": "queued"}, "j3": {"state": "running"}}})
    gauges.observe("engineer", "metrics-d", {"jobs": {"j1": {"state": "running"}}})
    assert value("lab_jobs", state="queued") == before["queued"] + 2
    assert value("lab_jobs", state="running") == before["running"] + 2
    gauges.observe("engineer", "metrics-c", {"jobs": {"j1": {"state": "done"}, "j2": {"state": "running"}, "j3": {"state": "done"}}})
    assert value("lab_jobs", state="queued") == before["queued"]
    assert value("lab_jobs", state="running") == before["running"] + 2
    assert value("lab_jobs", state="done") == before["done"] + 2


def test_other_roles_and_odd_states_leave_the_gauges_alone() -> None:
    before = REGISTRY.get_sample_value("lab_projects", {"stage": "weird"})
    gauges.observe("writer", "metrics-e", {"stage": "weird"})
    gauges.observe("pi", "metrics-e", None)
    gauges.observe("pi", "metrics-e", {"stage": 3})
    gauges.observe("engineer", "metrics-e", {"jobs": ["not", "a", "dict"]})
    assert REGISTRY.get_sample_value("lab_projects", {"stage": "weird"}) == before is None


def test_handled_counts_outcomes_latency_and_dead_letters() -> None:
    metrics.prepare("metrics-role")
    assert value("lab_messages_handled_total", role="metrics-role", outcome="ok") == 0
    metrics.handled("metrics-role", "ok", 0.2)
    metrics.handled("metrics-role", "dead_letter", 0.01)
    assert value("lab_messages_handled_total", role="metrics-role", outcome="ok") == 1
    assert value("lab_messages_handled_total", role="metrics-role", outcome="dead_letter") == 1
    assert value("lab_dead_letters_total", role="metrics-role") == 1
    assert value("lab_handler_seconds_count", role="metrics-role") == 2
    assert value("lab_handler_seconds_sum", role="metrics-role") == pytest.approx(0.21)


class MemoryStates:
    """The two calls SlotLedger makes of a StateStore, in memory."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.revision = 0

    async def read(self, key: str) -> tuple[dict[str, Any] | None, int]:
        return self.doc, self.revision

    async def write(self, key: str, doc: dict[str, Any], revision: int) -> int:
        self.doc, self.revision = doc, self.revision + 1
        return self.revision


async def test_the_capacity_ledger_reports_what_it_holds_and_its_capacity() -> None:
    ledger = SlotLedger(MemoryStates(), capacity=8, counts="gpus")
    assert await ledger.acquire("p1", "j1", 2) and await ledger.acquire("p2", "j2", 4)
    assert value("lab_capacity_used", counts="gpus") == 6
    assert value("lab_capacity_total", counts="gpus") == 8
    await ledger.release(["j2"])
    assert value("lab_capacity_used", counts="gpus") == 2


@pytest.fixture
def no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tiktoken would download its encoding files at run time")

    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)


@pytest.mark.usefixtures("clean_env", "no_tiktoken")
async def test_model_calls_are_timed_per_role_and_a_call_that_fails_for_good_is_an_error() -> None:
    calls, errors = value("lab_llm_call_seconds_count", role="analyst"), value("lab_llm_errors_total", role="analyst")
    good = {"summary": "Weight decay lowered val_loss by 0.08 (p=0.01)."}
    config = {"timeout_s": 5, "retries": {"transport": 1, "backoff_s": 0.01, "backoff_max_s": 0.05}}
    with FakeOpenAI([Reply.error(503), Reply.json(good), Reply.error(429, "slow down"), Reply.error(429, "slow down")]) as fake:
        mind = make_mind("llm", "analyst", seed=0, config={"model": "local-model", "base_url": fake.base_url, **config})
        assert await mind.summarize(report()) == good["summary"]  # one call, its retry inside it
        assert value("lab_llm_call_seconds_count", role="analyst") == calls + 1
        assert value("lab_llm_errors_total", role="analyst") == errors
        with pytest.raises(MindFailed):
            await mind.summarize(report())
    assert value("lab_llm_call_seconds_count", role="analyst") == calls + 2
    assert value("lab_llm_errors_total", role="analyst") == errors + 1


def test_lab_up_gives_each_agent_process_a_port_of_its_own(tmp_path, monkeypatch) -> None:
    from services.lab.supervisor import LabOptions, Supervisor

    sup = Supervisor(LabOptions(home=tmp_path / "home", replicas={"engineer": 2}))
    monkeypatch.setenv("LAB_METRICS_PORT", "9464")
    ports = [sup._agent_env(role, name)["LAB_METRICS_PORT"] for name, role in sup.opts.instances()]
    assert ports == [str(9464 + i) for i in range(7)]  # six roles and a second engineer: no two on one port
    monkeypatch.setenv("LAB_METRICS_PORT", "0")  # any free port: each process finds its own
    assert {sup._agent_env(role, name)["LAB_METRICS_PORT"] for name, role in sup.opts.instances()} == {"0"}
    monkeypatch.delenv("LAB_METRICS_PORT")
    assert "LAB_METRICS_PORT" not in sup._agent_env("pi")


def test_lab_up_gives_the_auth_service_and_the_web_view_the_ports_after_the_agents(tmp_path, monkeypatch) -> None:
    import json
    import subprocess

    from services.lab import supervisor
    from services.web import launch

    started: list[dict[str, str]] = []

    class Spawned:
        pid = 1

        def __init__(self, argv: list[str], env: dict[str, str], **_: Any) -> None:
            started.append(env)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Spawned)
    home = tmp_path / "home"
    sup = supervisor.Supervisor(supervisor.LabOptions(home=home, replicas={"engineer": 2}))
    sup.credentials, sup.issuer_seed = {"auth": "pw"}, "SAseed"
    monkeypatch.setattr(sup, "_secret", lambda user: tmp_path / user)
    monkeypatch.setattr(sup, "_job_secret", lambda: tmp_path / "job")
    monkeypatch.setattr(sup, "_write_pids", lambda: None)
    monkeypatch.setenv("LAB_METRICS_PORT", "9464")
    sup._spawn_auth()
    (home / "lab.json").write_text(json.dumps({"agents": {name: 1 for name, _ in sup.opts.instances()}}))
    with launch.web_child(home, 8765):
        pass
    # Seven agents on 9464..9470: the auth service on the next port, the web view on the one after.
    assert [env["LAB_METRICS_PORT"] for env in started] == ["9471", "9472"]


def test_a_heartbeat_from_before_metrics_still_loads() -> None:
    from bus.schema import Heartbeat

    old = Heartbeat.model_validate_json('{"role": "pi", "pid": 7, "seen": 1.0, "handled": 3}')
    assert old.metrics_url == "" and old.handled == 3
