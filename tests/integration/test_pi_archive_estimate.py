"""The PI's estimate reads the lab's stored projects: earlier jobs' wall times on the template replace the declared one.

A real NATS state bucket and the PI's own wiring (services/host/wiring.PIWiring.history), then the PI's
start handler with the context that wiring gives it; the estimate's arithmetic is in tests/unit/test_pi_budget.py.
"""

from __future__ import annotations

import pytest

from agents.pi.offline import OfflinePIMind
from agents.pi.workflow import PI
from bus.schema import Budget, Envelope, JobEnvironment, RunRecord, StartProject
from bus.schema.formats import RoleDocument
from bus.store import StateStore
from services.host.wiring import PIWiring
from tests.fakes import TOY_SPEC, MemoryStore

pytestmark = pytest.mark.integration


def earlier(walls: list[float]) -> dict:
    env = JobEnvironment(device="cpu")
    runs = [RunRecord(job_id=f"j{i}", experiment_id=f"x{i}", idea_id="baseline", overrides={}, seeds=[0], status="succeeded", wall_s=w,
                      environment=env).model_dump(mode="json") for i, w in enumerate(walls)]
    return {"project": "old", "template": "toy", "stage": "done", "budget": Budget().model_dump(), "started_at": 1.0,
            "experiments": {"x": {"runs": runs}}}


async def test_the_pi_estimates_a_new_project_from_the_projects_the_lab_stored(admin_bus, tmp_path):
    store = await StateStore.open(admin_bus)
    await store.write("pi.old", RoleDocument(state=earlier([30.0, 10.0, 20.0])).dump(), 0)
    await store.write("pi.unreadable", RoleDocument(state={"project": "half"}).dump(), 0)  # left out, not guessed at
    wiring = PIWiring(tmp_path)
    await wiring.open(admin_bus, store)
    assert [v.project for v in await wiring.history()] == ["old"]
    ctx = wiring.context(project="p1", state=None, mind=OfflinePIMind(), artifacts=MemoryStore(), cache=None)
    start = StartProject(template="toy", template_object="p1/template.tar.gz", spec=TOY_SPEC, budget=Budget(max_runs=6))
    await PI().handle(Envelope(project="p1", sender="copi", recipient="pi", body=start), ctx)
    est = ctx.state.estimate
    assert est.job_s == 20.0 and est.job_s_from == "median of 3 archived runs, profile as declared, on cpu, local runtime"
    assert ctx.outputs[0][0].estimate == est and ctx.outputs[0][1] == "copi"  # sent, though it does not wait
