"""services/wiring: each role's context and ports from the lab config, so the host knows no role."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.engineer.workflow import EngineerContext
from agents.literature.workflow import LiteratureContext
from bus.schema import JobSpec
from services.host.wiring import EngineerWiring, LiteratureWiring, Wiring, WiringError, build
from tests.fakes import MemoryStore


def test_literature_settings_come_from_the_lab_config(tmp_path: Path) -> None:
    wiring = build("literature", home=tmp_path, config={"literature": {"rounds": 2, "sources": ["local"]}}, bus_url="nats://x:4222")
    assert isinstance(wiring, LiteratureWiring) and not wiring.subscriptions
    ctx = wiring.context(project="p", state=None, mind=None, artifacts=MemoryStore(), cache=None)
    assert isinstance(ctx, LiteratureContext)
    assert (ctx.settings.rounds, ctx.settings.sources, ctx.lab_home) == (2, ["local"], tmp_path)


def test_a_bad_literature_section_is_one_line_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(WiringError, match="literature.rounds"):
        build("literature", home=tmp_path, config={"literature": {"rounds": 0}}, bus_url="nats://x:4222")


def test_roles_without_ports_get_the_plain_context(tmp_path: Path) -> None:
    wiring = build("writer", home=tmp_path, config={}, bus_url="nats://x:4222")
    assert type(wiring) is Wiring and not wiring.runs_jobs
    assert type(wiring.context(project="p", state=None, mind=None, artifacts=MemoryStore(), cache=None)).__name__ == "Context"


async def test_the_engineer_submits_plans_without_credentials_and_the_port_adds_the_runners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUNNER_USER", "runner")
    wiring = build("engineer", home=tmp_path, config={}, bus_url="nats://lab:4222", executor="local")
    assert isinstance(wiring, EngineerWiring) and wiring.runs_jobs
    assert not wiring.subscriptions  # its job statuses come through its work stream (bus/partitions)
    submitted: list[JobSpec] = []

    async def submit(spec: JobSpec) -> None:
        submitted.append(spec)

    monkeypatch.setattr(wiring.executor, "submit", submit)
    ctx = wiring.context(project="p", state=None, mind=None, artifacts=MemoryStore(), cache=None)
    assert isinstance(ctx, EngineerContext) and ctx.jobs.ledger is None  # the ledger opens with the bus
    plan = JobSpec(job_id="j1", project="p", experiment_id="x", template="toy", bundle_object="p/b", seeds=[0], wall_time_s=1, memory_mb=64)
    await ctx.jobs.submit(plan)
    assert plan.nats is None and submitted[0].nats is not None
    assert (submitted[0].nats.url, submitted[0].nats.user) == ("nats://lab:4222", "runner")
    await wiring.close()


def test_an_unknown_executor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WiringError, match="unknown executor"):
        build("engineer", home=tmp_path, config={}, bus_url="nats://x:4222", executor="slurm")


def test_the_pi_gets_the_labs_approval_thresholds_and_budget_caps(tmp_path: Path) -> None:
    from agents.pi.workflow import PIContext

    config = {"approval": {"gpu_hours_over": 2, "usd_per_million_tokens": 1.5}, "budgets": {"max_gpu_hours_per_project": 8}}
    wiring = build("pi", home=tmp_path, config=config, bus_url="nats://x:4222")
    ctx = wiring.context(project="p", state=None, mind=None, artifacts=MemoryStore(), cache=None)
    assert isinstance(ctx, PIContext)
    assert (ctx.policy.gpu_hours_over, ctx.policy.cost_over, ctx.policy.usd_per_million_tokens) == (2, None, 1.5)
    assert ctx.limits.max_gpu_hours_per_project == 8 and ctx.limits.max_cost_per_project is None
    # Unset: nothing waits, nothing is capped; tokens are priced at the configured model's price.
    plain = build("pi", home=tmp_path, config={"mind": {"model": "gpt-4o"}}, bus_url="nats://x:4222")
    ctx = plain.context(project="p", state=None, mind=None, artifacts=MemoryStore(), cache=None)
    assert ctx.policy.gpu_hours_over is None and ctx.policy.usd_per_million_tokens == 0.75 * 2.5 + 0.25 * 10.0


def test_a_typo_in_the_approval_section_is_one_line_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(WiringError, match="approval.gpu_hour_over"):
        build("pi", home=tmp_path, config={"approval": {"gpu_hour_over": 2}}, bus_url="nats://x:4222")
