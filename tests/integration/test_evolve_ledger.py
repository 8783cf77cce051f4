"""An evolve project's candidates take the running lab's capacity from its slot ledger, like any project's runs:
they are the engineer's experiments.

Real: a nats-server with the lab's users and the lab's slot ledger on it; the engineer role, in process, planning
an evolve candidate's ExperimentRequest (its code a guarded edit at the template's hook, its split a ``fixed``
option) against that ledger. The ledger is filled by hand with another project's hold. Replaces the test of
`lab evolve --nats`'s own ledger holds (services/cli/evolve.py's job path, removed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agents import templates
from agents.engineer.workflow import Engineer, EngineerContext, EngineerState
from agents.evolve.workflow import hook_edit
from bus.ledger import SlotLedger
from bus.schema import CodeChange, Envelope, ExperimentRequest, Idea, JobStatus
from bus.schema.evolve import EvolveSpec
from bus.store import StateStore
from services.read.team import capacity_view
from tests.conftest import TESTS
from tests.fakes import MemoryStore, RecordingExecutor

EXPERIMENT = '''"""Sleep a moment, then report a quadratic in the x the hook picks (and which split it scored)."""

import argparse
import json
import time
from pathlib import Path


def pick(x, split, seed):
    return x


PICK = pick


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sleep_s", type=float, default=1.0)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    time.sleep(args.sleep_s)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    values = [(PICK(0.0, args.split, s) - 0.3) ** 2 for s in seeds]
    final = {"metrics": {"loss": {"mean": sum(values) / len(values), "stderr": 0.0, "values": values}},
             "seeds": seeds, "split": args.split}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "final_info.json").write_text(json.dumps(final))


if __name__ == "__main__":
    main()
'''

EV = EvolveSpec.model_validate({
    "hook": {"anchor": "PICK = pick\n", "function": "pick_x", "signature": "pick_x(x, split, seed) -> float",
             "assign": "PICK = pick_x", "describe": "returns the x to evaluate the quadratic at"},
    "fixed": "the quadratic", "splits": {"fit": "none", "dev": "dev", "test": "test"}, "baseline": "none",
    "seeds": {"first": 2, "step": 1, "most": 2, "test": 2},
})
AT_THE_MINIMUM = "def pick_x(x, split, seed):\n    return 0.3\n"


def tiny_template(root: Path) -> Path:
    folder = root / "evolve_sleep"
    shutil.copytree(TESTS / "sleep_template", folder)
    (folder / "experiment.py").write_text(EXPERIMENT)
    spec = (folder / "template.yaml").read_text().replace("name: sleep_template", "name: evolve_sleep")
    spec = spec.replace("  x:\n    type: float\n    default: 0.0\n    min: -1.0\n    max: 1.0\n    candidates: [0.3, 0.9]\n"
                        "    description: where the quadratic is evaluated\n", "")
    (folder / "template.yaml").write_text(spec)
    return folder


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
    idea = Idea(id="i0-c0", title="at_the_minimum", hypothesis="x = 0.3 is the minimum", falsification="no lower loss", changes={},
                code=CodeChange(summary="pick_x(): at_the_minimum", edits=[hook_edit(EV.hook, code)]))
    return ExperimentRequest(experiment_id=exp_id, idea=idea, seeds=[0, 1], template=spec.name, template_object="evolve-p/template.tar.gz",
                             spec=spec, fast=True, fixed={"split": "dev"})


@pytest.mark.timeout(120)
async def test_an_evolve_candidate_waits_for_its_turn_in_the_lab_ledger(nats_server, admin_bus, tmp_path) -> None:
    folder = tiny_template(tmp_path)
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
    assert "PICK = pick_x" in files["experiment.py"] and "return 0.3" in files["experiment.py"]  # the candidate, switched in
    assert [h.project for h in (await ledger.read())[0].held.values()] == ["evolve-p"]
    assert (await capacity_view(ledger.states))["projects"]["evolve-p"]["held"] == 1
    # A candidate that crashes is its result: failed, not handed back to a mind to fix, the slot given back.
    out = await send(JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason="crashed: exit 1"), sender="runner")
    result = next(b for b, _ in out if b.type == "experiment_result")
    assert [r.status for r in result.runs] == ["failed"] and len(state.experiments["i0-c0-dev-s0"]) == 1
    assert job.job_id not in (await ledger.read())[0].held
