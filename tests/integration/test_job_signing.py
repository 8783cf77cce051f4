"""Job statuses count only with their own job's signature: a status forged with the runner credential is refused."""

from __future__ import annotations

import asyncio
import json

from bus import subjects
from bus.client import Bus
from bus.jobkeys import JobKeys, sign
from bus.replay import read
from bus.schema import Envelope, ExperimentRequest, JobPhase, JobStatus, NatsAccess
from bus.store import StateStore
from services.host.agent import AgentHost
from services.host.wiring import EngineerWiring
from tests.conftest import config_for
from tests.fakes import TOY_SPEC, RecordingExecutor
from tests.integration.test_bus import _dlq_records

SECRET = "0123456789abcdef" * 4


def test_a_key_signs_its_own_job_only():
    keys = JobKeys(SECRET)
    status = JobStatus(job_id="j1", experiment_id="x", state="succeeded", wall_s=1.25)
    signed = keys.sign("p1", status)
    assert keys.refusal("p1", signed) is None
    assert keys.refusal("p1", JobStatus.model_validate_json(signed.model_dump_json())) is None  # survives the wire
    assert "unsigned" in keys.refusal("p1", status)
    assert "wrong signature" in keys.refusal("p2", signed)  # the same status claimed for another project
    assert "wrong signature" in keys.refusal("p1", signed.model_copy(update={"wall_s": 2.0}))  # altered
    other_job = sign(keys.key("p1", "j2"), "p1", status)  # job j2's own key, used for j1
    assert "wrong signature" in keys.refusal("p1", other_job)
    assert keys.key("p1", "j1") != JobKeys(SECRET[::-1]).key("p1", "j1")


async def test_a_forged_status_is_dead_lettered_and_a_signed_one_completes_the_job(admin_bus, nats_server, tmp_path):
    executor = RecordingExecutor()
    runner_nats = NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"])
    wiring = EngineerWiring(tmp_path, executor, runner_nats, SECRET)  # type: ignore[arg-type]
    host = AgentHost("engineer", config_for(nats_server, "engineer"), home=tmp_path, wiring=wiring)
    task = asyncio.create_task(host.run())
    runner = await Bus.connect(config_for(nats_server, "runner"))
    try:
        request = ExperimentRequest(experiment_id="x01-baseline", seeds=[0, 1, 2], template="toy", template_object="p1/template.tar.gz", spec=TOY_SPEC)
        await admin_bus.publish(Envelope(project="p1", sender="pi", recipient="engineer", body=request))
        for _ in range(100):
            if executor.submitted:
                break
            await asyncio.sleep(0.1)
        job = executor.submitted[0]
        assert job.status_key == JobKeys(SECRET).key("p1", job.job_id) and job.nats == runner_nats
        doc, _ = await (await StateStore.open(admin_bus)).read("engineer.p1")
        assert job.status_key not in json.dumps(doc)  # the key is in the submitted copy only, never in the state

        done = JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="succeeded", wall_s=3.0)
        forged = [
            done,  # unsigned
            sign(JobKeys(SECRET).key("p1", "another-job"), "p1", done),  # a genuine key, for another job
            sign("a-guessed-key", "p1", done),
        ]
        for i, body in enumerate(forged):
            env = Envelope(id=f"forged-{i}", project="p1", sender="runner", recipient="engineer", body=body)
            await runner.publish_job(subjects.job_status("p1", job.job_id), env)
        # The runner may name the engineer as sender on the jobs subject: the signature still decides.
        env = Envelope(id="forged-3", project="p1", sender="engineer", recipient="engineer", body=done)
        await runner.publish_job(subjects.job_status("p1", job.job_id), env)
        records = await _dlq_records(admin_bus, 4)
        reasons = [r["reason"] for r in records]
        assert len(reasons) == 4 and "unsigned" in reasons[0] and "unsigned" in reasons[3], reasons
        assert all("wrong signature" in r for r in reasons[1:3]), reasons
        doc, _ = await (await StateStore.open(admin_bus)).read("engineer.p1")
        assert doc["state"]["jobs"][job.job_id]["state"] != "succeeded"
        said = [e.envelope async for e in read(admin_bus, "lab.convo.p1.engineer.pi")]
        assert "experiment_result" not in [e.kind for e in said]

        # The job's own runner, with the key it was given, is believed.
        genuine = Envelope(id="genuine", project="p1", sender="runner", recipient="engineer", body=sign(job.status_key, "p1", done))
        await runner.publish_job(subjects.job_status("p1", job.job_id), genuine)
        for _ in range(100):
            said = [e.envelope async for e in read(admin_bus, "lab.convo.p1.engineer.pi")]
            if "experiment_result" in [e.kind for e in said]:
                break
            await asyncio.sleep(0.1)
        assert "experiment_result" in [e.kind for e in said]
    finally:
        await runner.close()
        host.stop.set()
        await task


async def test_the_engineers_own_job_events_are_signed(admin_bus):
    """The executor watch speaks for runners that could not (never started, evicted): its statuses pass the same check."""
    from services.host.job_watch import JobWatch

    keys = JobKeys(SECRET)
    watch = JobWatch(admin_bus, None, None, None, keys)  # type: ignore[arg-type]
    await watch.job_event("p1", JobStatus(job_id="j9", experiment_id="x", state="failed", reason="evicted"), "executor-failed")
    [entry] = [e async for e in read(admin_bus, subjects.job_status("p1", "j9"), stream=subjects.JOBS_STREAM)]
    assert entry.envelope.sender == "engineer" and keys.refusal("p1", entry.envelope.body) is None


async def test_the_watch_cancels_what_is_left_of_a_job_it_gives_up_on(admin_bus):
    """A runner dead while its experiment container waits (``leftover``): reported failed, then cancelled to free its GPUs."""
    from services.host.job_watch import JobWatch

    class DeadRunner(RecordingExecutor):
        def __init__(self, phases: dict[str, JobPhase]) -> None:
            super().__init__()
            self.phases, self.cancelled = phases, []

        async def poll(self, job_id: str) -> JobPhase:
            return self.phases[job_id]

        async def cancel(self, job_id: str) -> None:
            self.cancelled.append(job_id)

    states = await StateStore.open(admin_bus)
    jobs = {j: {"job_id": j, "experiment_id": "x", "state": "running"} for j in ("left", "ended")}
    await states.write("engineer.pw", {"state": {"jobs": jobs}}, 0)
    ex = DeadRunner({
        "left": JobPhase(state="failed", reason="runner exited 127; the experiment container still ran", leftover=True),
        "ended": JobPhase(state="failed", reason="BackoffLimitExceeded: runner exited 4"),  # nothing of it runs: its pods stay for `kubectl logs`
    })
    watch = JobWatch(admin_bus, states, ex, None, JobKeys(SECRET))  # type: ignore[arg-type]
    task = asyncio.create_task(watch.watch_jobs(every=0.05, grace_s=0.1))
    try:
        for _ in range(200):
            if ex.cancelled:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ex.cancelled and set(ex.cancelled) == {"left"}
    reasons = {e.envelope.body.job_id: e.envelope.body.reason async for e in read(admin_bus, "lab.jobs.pw.>", stream=subjects.JOBS_STREAM)}
    assert reasons["left"].startswith("runner exited 127") and reasons["ended"].startswith("BackoffLimitExceeded")
