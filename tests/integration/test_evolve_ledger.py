"""`lab evolve --nats` takes the running lab's capacity from its slot ledger, like any project.

Real: a nats-server with the lab's users, the loop itself (``services.cli.evolve._evolve``
on a lab, connected as the co-PI as `lab evolve --nats` is), the local executor and
the job runner. The template is a tiny sleeping quadratic with a hook for the loop
(written here), so each job takes a second or two. No engineer runs: the ledger is
filled by hand with another project's hold, and read back as `lab status` reads it.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from agents.templates import load
from bus.jobkeys import JobKeys, new_secret
from bus.ledger import SlotLedger
from bus.permissions import RUNNER
from bus.schema import JobSpec, NatsAccess
from bus.schema.evolve import EvolveSpec, Proposal
from bus.store import StateStore
from services.cli import evolve
from services.executors import make_executor
from services.read.team import capacity_view
from tests.conftest import TESTS, config_for

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


def tiny_template(root: Path) -> Path:
    folder = root / "evolve_sleep"
    shutil.copytree(TESTS / "sleep_template", folder)
    (folder / "experiment.py").write_text(EXPERIMENT)
    spec = (folder / "template.yaml").read_text().replace("name: sleep_template", "name: evolve_sleep")
    spec = spec.replace("  x:\n    type: float\n    default: 0.0\n    min: -1.0\n    max: 1.0\n    candidates: [0.3, 0.9]\n"
                        "    description: where the quadratic is evaluated\n", "")
    (folder / "template.yaml").write_text(spec)
    return folder


def start_evolve(nats_server, tmp_path: Path, out: io.StringIO) -> tuple[asyncio.Task[int], list[tuple[float, str]]]:
    """`lab evolve --nats` on the lab at ``nats_server`` (one candidate, one final run), and the jobs its executor got, when."""
    folder, spec = load(str(tiny_template(tmp_path)))
    executor = make_executor("local", {"capacity": 1, "jobs_dir": str(tmp_path / "jobs")})
    submitted: list[tuple[float, str]] = []
    submit = executor.submit

    async def recording_submit(job: JobSpec) -> None:
        submitted.append((time.time(), job.job_id))
        await submit(job)

    executor.submit = recording_submit  # type: ignore[method-assign]
    opts = evolve.EvolveOptions(template=str(folder), iterations=1, population=1, final_top=1, out=tmp_path / "out", quiet=True)
    seeds = [Proposal(name="at_the_minimum", code="def pick_x(x, split, seed):\n    return 0.3\n", rationale="test")]
    job_nats = NatsAccess(url=nats_server.url, user=RUNNER, password=nats_server.credentials[RUNNER])
    run = asyncio.create_task(evolve._evolve(opts, folder, spec, EV, seeds, executor, config_for(nats_server, "copi"), job_nats,
                                             JobKeys(new_secret()), Console(file=out, width=200), lab=True))
    return run, submitted


@pytest.fixture
def short_leases(monkeypatch):
    monkeypatch.setattr(evolve, "LEASE_S", 3.0)
    monkeypatch.setattr(evolve, "RENEW_S", 0.3)
    monkeypatch.setattr(evolve, "WAIT_POLL_S", 0.2)


@pytest.mark.timeout(120)
async def test_evolve_on_a_full_lab_waits_for_its_turn_in_the_ledger(nats_server, admin_bus, lab_env, tmp_path, short_leases):
    lab_ledger = SlotLedger(await StateStore.open(admin_bus), capacity=1)
    assert await lab_ledger.acquire("busy", "busy-j0", 1)  # another project's engineer holds the lab's one slot
    out = io.StringIO()
    run, submitted = start_evolve(nats_server, tmp_path, out)
    try:
        # It waits, leased, and submits nothing while the lab is full.
        leases: list[float] = []
        for _ in range(200):
            state, _ = await lab_ledger.read()
            waiting = {p: w for p, w in state.waiting.items() if p.startswith("evolve-")}
            if waiting:
                leases.append(next(iter(waiting.values())).lease_until or 0.0)
            if len(leases) >= 8:
                break
            await asyncio.sleep(0.1)
        assert len(leases) >= 8 and all(leases), "lab evolve never recorded itself as waiting, leased"
        assert leases[-1] > leases[0]  # renewed while it waits
        assert not submitted and not run.done()
        assert "waiting for lab capacity" in out.getvalue()
        freed = time.time()
        await lab_ledger.release(["busy-j0"])
        # Its jobs run one at a time under its own project's hold, leased and renewed.
        holds: dict[str, list[float]] = {}
        shown: dict = {}
        while not run.done():
            state, _ = await lab_ledger.read()
            assert state.used() <= 1
            for j, h in state.held.items():
                assert h.project.startswith("evolve-") and h.lease_until is not None
                holds.setdefault(j, []).append(h.lease_until)
            if state.held and not shown:
                shown = (await capacity_view(lab_ledger.states))["projects"]  # what `lab status` shows
            await asyncio.sleep(0.1)
        assert await run == 0, out.getvalue()
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert sorted(j for _, j in submitted) == sorted(holds) and len(submitted) == 2, (submitted, holds, out.getvalue())
    assert all(t >= freed for t, _ in submitted)
    assert any(len(set(v)) > 1 for v in holds.values())  # renewed while its job ran
    assert out.getvalue().count("waiting for lab capacity") == 1
    assert [(p[:7], v["held"]) for p, v in shown.items()] == [("evolve-", 1)], shown
    # Done: nothing of it is left in the ledger.
    state, _ = await lab_ledger.read()
    assert state.held == {} and state.waiting == {}


@pytest.mark.timeout(120)
async def test_evolve_stopped_mid_run_leaves_nothing_in_the_ledger(nats_server, admin_bus, lab_env, tmp_path, short_leases):
    """Interrupted (Ctrl-C cancels the loop) while its job runs: the hold is given back, not left for the lease to free."""
    lab_ledger = SlotLedger(await StateStore.open(admin_bus), capacity=1)
    run, _ = start_evolve(nats_server, tmp_path, io.StringIO())
    try:
        for _ in range(300):
            if (await lab_ledger.read())[0].held:
                break
            await asyncio.sleep(0.05)
        assert (await lab_ledger.read())[0].held and not run.done()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    state, _ = await lab_ledger.read()
    assert state.held == {} and state.waiting == {}
