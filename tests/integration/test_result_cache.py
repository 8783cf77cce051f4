"""The lab-wide result cache on a real nats-server, through a real engineer host: reused, single-flight, never a failure.

The engineer host runs with its real wiring (result cache, job watch, jobs port)
over an executor that records what it is asked to start (``tests.fakes.RecordingExecutor``):
what the cache saves is exactly the submits that do not happen. The test speaks as each
job's runner, with the job's own signing key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.engineer.jobs import plan_job
from agents.engineer.workflow import cache_key
from agents.templates import bundle, load
from bus import subjects
from bus.client import Bus
from bus.jobkeys import JobKeys
from bus.provenance import tar_sha256
from bus.replay import read
from bus.resultcache import ResultCache
from bus.schema import Envelope, ExperimentRequest, ExperimentResult, FinalInfo, JobSpec, JobStatus, MetricStat, NatsAccess
from bus.store import Artifacts, StateStore
from services.host.agent import AgentHost
from services.host.wiring import EngineerWiring
from tests.conftest import config_for
from tests.fakes import RecordingExecutor

pytestmark = pytest.mark.integration

SECRET = "fedcba9876543210" * 4
SLEEP = Path(__file__).resolve().parents[1] / "sleep_template"
SPEC = load(str(SLEEP))[1]


@dataclass
class Lab:
    admin: Bus
    runner: Bus
    executor: RecordingExecutor
    keys: JobKeys
    runtime: str  # what the engineer keys runs with

    async def request(self, project: str, seeds: list[int], **kw: Any) -> None:
        """The PI of ``project`` asks for its baseline on the sleep template (uploaded under the project, same bytes)."""
        name = await (await Artifacts.open(self.admin)).put(f"{project}/template.tar.gz", bundle(SLEEP))
        req = ExperimentRequest(experiment_id="x01-baseline", seeds=seeds, template=SPEC.name, template_object=name,
                                spec=kw.pop("spec", SPEC), fast=True, **kw)
        await self.admin.publish(Envelope(project=project, sender="pi", recipient="engineer", body=req))

    async def submitted(self, n: int, timeout: float = 20.0) -> list[JobSpec]:
        for _ in range(int(timeout / 0.1)):
            if len(self.executor.submitted) >= n:
                break
            await asyncio.sleep(0.1)
        return list(self.executor.submitted)

    async def finish(self, job: JobSpec, state: str = "succeeded", value: float = 0.25) -> None:
        """What the job's runner reports, signed with its own key."""
        info = FinalInfo(metrics={"loss": MetricStat(mean=value, stderr=0.01, values=[value] * len(job.seeds))}, seeds=job.seeds)
        status = JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state=state, wall_s=7.5,  # type: ignore[arg-type]
                           final_info=info if state == "succeeded" else None, reason="" if state == "succeeded" else "crashed: exit 1")
        env = Envelope(project=job.project, sender="runner", recipient="engineer", body=self.keys.sign(job.project, status))
        await self.runner.publish_job(subjects.job_status(job.project, job.job_id), env)

    async def result(self, project: str, timeout: float = 30.0) -> ExperimentResult:
        for _ in range(int(timeout / 0.2)):
            said = [e.envelope.body async for e in read(self.admin, f"lab.convo.{project}.engineer.pi")]
            done = [b for b in said if isinstance(b, ExperimentResult)]
            if done:
                return done[0]
            await asyncio.sleep(0.2)
        raise AssertionError(f"{project}: no experiment result in {timeout} s")


@pytest.fixture
async def lab(admin_bus: Bus, nats_server: Any, tmp_path: Path) -> AsyncIterator[Lab]:
    executor = RecordingExecutor()
    runner_nats = NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"])
    wiring = EngineerWiring(tmp_path, executor, runner_nats, SECRET)  # type: ignore[arg-type]
    host = AgentHost("engineer", config_for(nats_server, "engineer"), home=tmp_path, wiring=wiring)
    task = asyncio.create_task(host.run())
    runner = await Bus.connect(config_for(nats_server, "runner"))
    try:
        yield Lab(admin_bus, runner, executor, JobKeys(SECRET), wiring.jobs.runtime())
    finally:
        await runner.close()
        host.stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_second_project_reuses_the_first_ones_baseline_without_a_job(lab: Lab) -> None:
    await lab.request("alpha", [0, 1, 2])
    [job] = await lab.submitted(1)
    await lab.finish(job, value=0.125)
    first = await lab.result("alpha")
    assert first.runs[0].reused_from == "" and first.runs[0].final_info.metrics["loss"].mean == 0.125  # type: ignore[union-attr]

    await lab.request("beta", [0, 1, 2])
    second = await lab.result("beta")
    [run] = second.runs
    assert run.status == "succeeded" and run.reused_from == f"alpha/x01-baseline/{job.job_id}"
    assert run.final_info == first.runs[0].final_info and run.wall_s == 7.5 and run.seeds == [0, 1, 2]
    assert run.job_id != job.job_id  # beta's own job id, never submitted
    assert len(lab.executor.submitted) == 1  # no second job
    # Another seed list is another run: it runs.
    await lab.request("gamma", [0, 1])
    assert len(await lab.submitted(2)) == 2


async def test_identical_requests_at_once_run_once_and_the_waiter_is_woken_with_the_result(lab: Lab) -> None:
    await asyncio.gather(lab.request("p1", [3, 4, 5]), lab.request("p2", [3, 4, 5]))
    [job] = await lab.submitted(1)
    await asyncio.sleep(1.0)
    assert len(lab.executor.submitted) == 1  # the other waits for it
    waiter = "p2" if job.project == "p1" else "p1"
    doc, _ = await (await StateStore.open(lab.admin)).read(f"engineer.{waiter}")
    [queued] = doc["state"]["jobs"].values()  # type: ignore[index]
    assert queued["state"] == "queued" and queued["waits_for"] == f"{job.project}/x01-baseline/{job.job_id}"
    cache = await ResultCache.open(lab.admin)
    entry, _ = await cache.read(queued["cache_key"])
    assert entry is not None and entry.state == "running" and entry.owner == queued["waits_for"]
    await lab.finish(job)
    owner, other = await lab.result(job.project), await lab.result(waiter)  # woken by the job watch
    assert owner.runs[0].reused_from == ""
    assert other.runs[0].reused_from == f"{job.project}/x01-baseline/{job.job_id}"
    assert len(lab.executor.submitted) == 1
    entry, _ = await cache.read(queued["cache_key"])
    assert entry is not None and entry.state == "done" and entry.status is not None and entry.status.final_info == owner.runs[0].final_info


async def test_an_owner_that_fails_lets_the_waiter_run_and_a_failure_is_never_stored(lab: Lab) -> None:
    await asyncio.gather(lab.request("p1", [6, 7, 8]), lab.request("p2", [6, 7, 8]))
    [owner] = await lab.submitted(1)
    await lab.finish(owner, state="failed")
    failed = await lab.result(owner.project)
    assert failed.runs[0].status == "failed"
    jobs = await lab.submitted(2)  # the waiter, woken when the claim went, runs itself
    assert len(jobs) == 2 and jobs[1].project != owner.project
    await lab.finish(jobs[1], value=0.5)
    ran = await lab.result(jobs[1].project)
    assert ran.runs[0].reused_from == "" and ran.runs[0].status == "succeeded"
    # Its success is what a third project gets; the failure was never served.
    await lab.request("p3", [6, 7, 8])
    served = await lab.result("p3")
    assert served.runs[0].reused_from == f"{jobs[1].project}/x01-baseline/{jobs[1].job_id}"
    assert len(lab.executor.submitted) == 2


async def test_no_cache_and_a_template_that_opts_out_run_fresh(lab: Lab) -> None:
    await lab.request("p1", [9])
    [job] = await lab.submitted(1)
    await lab.finish(job)
    await lab.result("p1")
    await lab.request("p2", [9], cache=False)  # `lab run --no-cache`
    assert len(await lab.submitted(2)) == 2
    await lab.request("p3", [9], spec=SPEC.model_copy(update={"cache": False}))  # template.yaml `cache: false`
    jobs = await lab.submitted(3)
    assert len(jobs) == 3
    await lab.finish(jobs[1])
    await lab.finish(jobs[2])
    assert (await lab.result("p2")).runs[0].reused_from == "" and (await lab.result("p3")).runs[0].reused_from == ""


async def test_a_claim_left_by_a_crashed_lab_goes_stale_and_is_taken_over(lab: Lab) -> None:
    """A claim nobody will finish (its lab died with the job) holds waiters only until it is stale."""
    job = plan_job(SPEC, "fast", job_id="j0", project="dead", experiment_id="x01-baseline", bundle_object="o", seeds=[11])
    key = cache_key(job, SPEC, tar_sha256(bundle(SLEEP)), lab.runtime)
    cache = await ResultCache.open(lab.admin)
    assert (await cache.claim(key, "dead/x01-baseline/j0", "dead/x01-baseline/", stale_after_s=3.0)).kind == "run"
    await lab.request("p1", [11])
    await asyncio.sleep(1.0)
    assert lab.executor.submitted == []  # a live claim: it waits
    [taken] = await lab.submitted(1, timeout=20)  # stale after 3 s: the job watch wakes it, and it claims the key
    entry, _ = await cache.read(key)
    assert entry is not None and entry.owner == f"p1/x01-baseline/{taken.job_id}" and entry.state == "running"


async def test_two_engineer_replicas_run_an_identical_request_once(admin_bus: Bus, nats_server: Any, tmp_path: Path) -> None:
    """Single-flight through the bus: two projects on two engineer replicas (processes apart in a real lab) ask at once."""
    from bus.partitions import owned, partition

    owners = {p: 0 if partition(p) in owned(0, 2) else 1 for p in (f"q{i}" for i in range(16))}
    pa = next(p for p, r in owners.items() if r == 0)
    pb = next(p for p, r in owners.items() if r == 1)
    runner_nats = NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"])
    executors = [RecordingExecutor(), RecordingExecutor()]
    hosts = []
    for i, ex in enumerate(executors):
        wiring = EngineerWiring(tmp_path / f"e{i}", ex, runner_nats, SECRET)  # type: ignore[arg-type]
        hosts.append(AgentHost("engineer", config_for(nats_server, "engineer"), home=tmp_path / f"e{i}", wiring=wiring, replica=(i, 2)))
    tasks = [asyncio.create_task(h.run()) for h in hosts]
    while not all(h.ready_file().is_file() for h in hosts):
        await asyncio.sleep(0.05)
    runner = await Bus.connect(config_for(nats_server, "runner"))
    try:
        labs = [Lab(admin_bus, runner, ex, JobKeys(SECRET), "") for ex in executors]
        await asyncio.gather(labs[0].request(pa, [20, 21]), labs[1].request(pb, [20, 21]))
        for _ in range(100):
            if sum(len(ex.submitted) for ex in executors) >= 1:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        submitted = [j for ex in executors for j in ex.submitted]
        assert len(submitted) == 1, submitted  # one of the two replicas runs it
        [job] = submitted
        await labs[0].finish(job)
        other = pb if job.project == pa else pa
        served = await labs[0].result(other)
        assert served.runs[0].reused_from == f"{job.project}/x01-baseline/{job.job_id}"
        assert sum(len(ex.submitted) for ex in executors) == 1
    finally:
        await runner.close()
        for h in hosts:
            h.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def test_an_owner_whose_project_ends_gives_its_claim_to_the_waiter(lab: Lab) -> None:
    from bus.schema import Decision

    await asyncio.gather(lab.request("p1", [30]), lab.request("p2", [30]))
    [owner] = await lab.submitted(1)
    await asyncio.sleep(0.5)
    stop = Decision(accepted=False, reason="stopped by the co-PI", rounds=0)
    await lab.admin.publish(Envelope(project=owner.project, sender="pi", recipient="engineer", body=stop))
    jobs = await lab.submitted(2)  # the owner's job is cancelled, its claim deleted: the waiter runs itself
    assert len(jobs) == 2 and jobs[1].project != owner.project
