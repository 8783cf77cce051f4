"""Who may say what: forged messages are dead-lettered by the host before any role sees them.

Against a real nats-server whose job runners log in through the auth callout, with the PI and the
engineer hosted in this process: the co-PI forges a draft, an accepting review, job results, an
analysis and a decision; a job's runner forges a review; a role sends another role's kind. Each goes
to the dead letters with its reason, and the PI never acts (no state, nothing said).
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from bus import natsjwt, subjects
from bus.client import Bus, BusConfig
from bus.jobkeys import JobKeys, new_secret
from bus.permissions import AUTH, job_user
from bus.replay import read
from bus.schema import AnalysisDone, AnalysisReport, Decision, Envelope, ExperimentResult, JobStatus, NatsAccess
from bus.server import EmbeddedServer, new_credentials
from bus.store import StateStore
from services.auth.callout import AuthService
from services.host.agent import AgentHost
from services.host.wiring import EngineerWiring, PIWiring
from tests.conftest import config_for
from tests.fakes import RecordingExecutor
from tests.integration.test_bus import _dlq_records
from tests.web_convo import draft, review, run

pytestmark = pytest.mark.integration

P = "forged"
REFUSED_S = 1.5


@pytest.fixture
async def lab(tmp_path):
    """A server with the auth callout, the auth service, the PI and the engineer hosted here, and the admin's bus."""
    seed, secret = natsjwt.new_account_seed(), new_secret()
    creds = new_credentials()
    server = EmbeddedServer(tmp_path / "nats", credentials=creds, auth_issuer=natsjwt.public_key(seed)).start()
    server.credentials = creds
    admin = await Bus.connect(config_for(server))
    await admin.ensure_topology()
    auth_bus = await Bus.connect(config_for(server, AUTH))
    await AuthService(JobKeys(secret), seed).serve(auth_bus)
    runner_nats = NatsAccess(url=server.url, user="runner", password=creds["runner"])
    hosts = [
        AgentHost("pi", config_for(server, "pi"), home=tmp_path / "pi", wiring=PIWiring(tmp_path / "pi")),
        AgentHost("engineer", config_for(server, "engineer"), home=tmp_path / "eng",
                  wiring=EngineerWiring(tmp_path / "eng", RecordingExecutor(), runner_nats, secret)),  # type: ignore[arg-type]
    ]
    tasks = [asyncio.create_task(h.run()) for h in hosts]
    for h in hosts:
        while not h.ready_file().is_file():
            await asyncio.sleep(0.05)
    yield server, admin, JobKeys(secret)
    for h in hosts:
        h.stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await auth_bus.close()
    await admin.close()
    server.stop()


def forged(sender: str, recipient: str, body, n: int) -> Envelope:
    return Envelope(id=f"forged-{sender}-{n}", project=P, sender=sender, recipient=recipient, body=body)


def report() -> AnalysisReport:
    return AnalysisReport(project=P, round=1, primary_metric="val_acc", comparisons=[], runs=[], summary="FABRICATED RESULT")


async def said_by_pi(admin: Bus) -> list[Envelope]:
    return [e.envelope async for e in read(admin, subjects.convo_all(P)) if e.envelope is not None and e.envelope.sender == "pi"]


async def test_the_copi_cannot_forge_drafts_reviews_results_analyses_or_decisions(lab):
    server, admin, _ = lab
    copi = await Bus.connect(config_for(server, "copi"))
    accept = review(1, "accept", [])
    accept = accept.model_copy(update={"meta": accept.meta.model_copy(update={"overall": 9.9})})
    bodies = [
        draft(1).model_copy(update={"tex": f"{P}/FABRICATED RESULT.tex"}),
        accept,
        ExperimentResult(experiment_id="x01-baseline", idea_id="baseline", runs=[run("j1", "x01-baseline", "baseline", 0.99)]),
        AnalysisDone(report=report()),
        Decision(accepted=True, reason="forged", rounds=1, paper=draft(1)),
    ]
    try:
        for i, body in enumerate(bodies):
            await copi.publish(forged("copi", "pi", body, i))
        await copi.publish(forged("copi", "engineer", JobStatus(job_id="j1", experiment_id="x", state="succeeded"), 9))
        # Claiming to be the writer on the writer's subject: the server refuses the co-PI's publish itself.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(copi.publish(forged("writer", "pi", draft(1), 10)), 3)
    finally:
        await copi.close()
    records = await _dlq_records(admin, 6)
    reasons = sorted(r["reason"] for r in records)
    assert len(records) == 6, reasons
    for kind in ("draft_ready", "review_done", "experiment_result", "analysis_done", "decision", "job_status"):
        assert any(r.startswith(f"copi may not send {kind}") for r in reasons), (kind, reasons)
    assert {r["role"] for r in records} == {"pi", "engineer"}
    # The PI never acted: no state for the project, nothing said in it.
    doc, _ = await (await StateStore.open(admin)).read(f"pi.{P}")
    assert not doc
    assert await said_by_pi(admin) == []


async def test_a_runner_cannot_forge_a_review_and_a_role_cannot_send_another_roles_kind(lab):
    server, admin, keys = lab
    job = await Bus.connect(BusConfig(url=server.url, user=job_user(P, "j1"), password=keys.key(P, "j1"), name="t-j1"), reconnect=False, timeout=15)
    analyst = await Bus.connect(config_for(server, "analyst"))
    writer = await Bus.connect(config_for(server, "writer"))
    try:
        # A job's runner, through the auth callout: its own status subject carries a review.
        await job.publish_job(subjects.job_status(P, "j1"), forged("runner", "engineer", review(1, "accept", []), 0))
        # …and the conversation is closed to it.
        await job.nc.publish(subjects.convo(P, "reviewer", "pi"), forged("reviewer", "pi", review(1, "accept", []), 1).model_dump_json().encode())
        await job.nc.flush()
        # Roles speak as themselves (the server holds them to it), but not another role's kind.
        await analyst.publish(forged("analyst", "pi", draft(1), 2))
        await writer.publish(forged("writer", "pi", review(1, "accept", []), 3))
        await writer.publish(forged("writer", "pi", AnalysisDone(report=report()), 4))
        js = analyst.nc.jetstream(timeout=REFUSED_S)
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await js.publish(subjects.convo(P, "writer", "pi"), forged("writer", "pi", draft(1), 5).model_dump_json().encode())
        await asyncio.sleep(0.3)
        assert any("lab.convo" in e and "ermission" in e for e in job.errors)
    finally:
        for b in (job, analyst, writer):
            await b.close()
    records = await _dlq_records(admin, 4)
    by_role = sorted((r["role"], r["reason"]) for r in records)
    assert len(records) == 4, by_role
    assert ("engineer", f"job status from runner for {P}/None (review_done) does not match {subjects.job_status(P, 'j1')}") in by_role
    reasons = [r for _, r in by_role]
    assert any(r.startswith("analyst may not send draft_ready") for r in reasons)
    assert any(r.startswith("writer may not send review_done") for r in reasons)
    assert any(r.startswith("writer may not send analysis_done") for r in reasons)
    doc, _ = await (await StateStore.open(admin)).read(f"pi.{P}")
    assert not doc
    assert await said_by_pi(admin) == []


async def _pi_state(admin: Bus, project: str, stage: str, timeout: float = 20) -> dict:
    store = await StateStore.open(admin)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        doc, _ = await store.read(f"pi.{project}")
        if doc and doc.get("state") and doc["state"]["stage"] == stage:
            return doc["state"]
        assert asyncio.get_running_loop().time() < deadline, (stage, doc and doc.get("state", {}).get("stage"))
        await asyncio.sleep(0.1)


async def test_only_the_copi_approves_a_project_that_waits(lab):
    """A project started with require_approval waits; roles that forge its approval are dead-lettered and it still waits;
    the co-PI's own approval starts it (the PI then asks the engineer for the baseline)."""
    from bus.schema import Budget, ProjectApproval, StartProject
    from tests.fakes import TOY_SPEC

    server, admin, _ = lab
    copi = await Bus.connect(config_for(server, "copi"))
    writer = await Bus.connect(config_for(server, "writer"))
    engineer = await Bus.connect(config_for(server, "engineer"))
    try:
        start = StartProject(template="toy", template_object=f"{P}/template.tar.gz", spec=TOY_SPEC, budget=Budget(max_runs=3), require_approval=True)
        await copi.publish(Envelope(project=P, sender="copi", recipient="pi", body=start))
        waiting = await _pi_state(admin, P, "approval")
        assert waiting["experiments"] == {} and waiting["estimate"]["needs_approval"]
        await writer.publish(forged("writer", "pi", ProjectApproval(approved=True), 0))
        await engineer.publish(forged("engineer", "pi", ProjectApproval(approved=True), 1))
        records = await _dlq_records(admin, 2)
        assert sorted(r["reason"].split(" (")[0] for r in records) == ["engineer may not send project_approval", "writer may not send project_approval"]
        assert (await _pi_state(admin, P, "approval"))["approved_at"] is None  # still waiting: nothing ran
        assert [e.kind for e in await said_by_pi(admin)] == ["project_estimate"]
        await copi.publish(Envelope(project=P, sender="copi", recipient="pi", body=ProjectApproval(approved=True)))
        started = await _pi_state(admin, P, "experiments")
        assert started["approved_at"] is not None and list(started["experiments"]) == ["x01-baseline"]
        said = [e.kind for e in await said_by_pi(admin)]
        assert said[:2] == ["project_estimate", "experiment_request"]
    finally:
        for b in (copi, writer, engineer):
            await b.close()
