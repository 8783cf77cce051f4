"""An evolve project's candidates take the running lab's capacity from its slot ledger, like any project's runs:
they are the engineer's experiments.

Real: a nats-server with the lab's users and the lab's slot ledger on it; the engineer role, in process, planning
an evolve candidate's ExperimentRequest (its code a guarded edit at the template's hook, its split a ``fixed``
option) against that ledger. The ledger is filled by hand with another project's hold. Replaces the test of
`lab evolve --nats`'s own ledger holds (services/cli/evolve.py's job path, removed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents import templates
from agents.engineer.workflow import Engineer, EngineerContext, EngineerState
from agents.evolve.workflow import hook_edit, load_spec
from bus.ledger import SlotLedger
from bus.schema import CodeChange, Envelope, ExperimentRequest, Idea, JobStatus
from bus.store import StateStore
from services.read.team import capacity_view
from tests.fakes import MemoryStore, RecordingExecutor

AT_THE_MINIMUM = "def pick_x(x, split, seed):\n    return 0.3\n"


class NoMind:
    """An evolve candidate's edits are the proposer's: the engineer must not ask its mind."""

    async def plan(self, *args: Any) -> Any:
        raise AssertionError("the engineer asked its mind to plan an evolve candidate")


class LabJobs(RecordingExecutor):
    """The engineer's jobs port on the lab's ledger (capacity one slot)."""

    def __init__(self, ledger: SlotLedger) -> None:
        super().__init__()
        self.ledger = ledger  # type: ignore[assignment]

    def capacity(self) -> int | None:
        return 1


def candidate_request(folder: Path, exp_id: str, code: str) -> ExperimentRequest:
    _, spec = templates.load(str(folder))
    hook = load_spec(folder, spec.name).hook
    idea = Idea(id="i0-c0", title="at_the_minimum", hypothesis="x = 0.3 is the minimum", falsification="no lower loss", changes={},
                code=CodeChange(summary="pick_x(): at_the_minimum", edits=[hook_edit(hook, code)]))
    return ExperimentRequest(experiment_id=exp_id, idea=idea, seeds=[0, 1], template=spec.name, template_object="evolve-p/template.tar.gz",
                             spec=spec, fast=True, fixed={"split": "dev"})


@pytest.mark.timeout(120)
async def test_an_evolve_candidate_waits_for_its_turn_in_the_lab_ledger(nats_server, admin_bus, evolve_sleep: Path) -> None:
    folder = evolve_sleep
    ledger = SlotLedger(await StateStore.open(admin_bus), capacity=1)
    assert await ledger.acquire("busy", "busy-j0", 1)  # another project's engineer holds the lab's one slot
    store, state, jobs = MemoryStore(), EngineerState(), LabJobs(ledger)
    store.data["evolve-p/template.tar.gz"] = templates.bundle(folder)

    async def send(body: Any, sender: str = "pi") -> list[tuple[Any, str]]:
        env = Envelope(project="evolve-p", sender=sender, recipient="engineer", body=body)  # type: ignore[arg-type]
        ctx = EngineerContext(project="evolve-p", role="engineer", state=state, artifacts=store, mind=NoMind(), jobs=jobs)  # type: ignore[arg-type]
        await Engineer().handle(env, ctx)
        return ctx.outputs

    (planned, to), = await send(candidate_request(folder, "i0-c0-dev-s0", AT_THE_MINIMUM))
    assert to == "pi" and not planned.rejected and planned.overrides["split"] == "dev"
    assert jobs.submitted == []  # the lab is full: it waits, as `lab status` shows
    assert (await ledger.read())[0].waiting.keys() == {"evolve-p"}
    await ledger.release(["busy-j0"])
    await send(candidate_request(folder, "i0-c1-dev-s0", AT_THE_MINIMUM))  # the next message dispatches what waits
    (job,) = jobs.submitted
    assert job.overrides["split"] == "dev" and job.experiment_id == "i0-c0-dev-s0"
    files = templates.bundle_files(await store.get(job.bundle_object))
    code = files["experiment.py"]
    assert AT_THE_MINIMUM in code and "\nPICK = pick_x\n" in code and "PICK = pick_x_zero" not in code  # the candidate, switched in
    assert [h.project for h in (await ledger.read())[0].held.values()] == ["evolve-p"]
    assert (await capacity_view(ledger.states))["projects"]["evolve-p"]["held"] == 1
    # A candidate that crashes is its result: failed, not handed back to a mind to fix, the slot given back.
    out = await send(JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason="crashed: exit 1"), sender="runner")
    result = next(b for b, _ in out if b.type == "experiment_result")
    assert [r.status for r in result.runs] == ["failed"] and len(state.experiments["i0-c0-dev-s0"]) == 1
    assert job.job_id not in (await ledger.read())[0].held
