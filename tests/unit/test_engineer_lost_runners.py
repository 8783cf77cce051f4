"""The engineer after a whole-lab kill: a runner that died without a result runs again; an experiment's own failure does not."""

from __future__ import annotations

from typing import Any

from agents.engineer.workflow import MAX_LOST_ATTEMPTS, Engineer, EngineerContext, EngineerState, job_id_for
from bus.schema import Envelope, ExperimentRequest, JobStatus
from tests.fakes import TOY_SPEC, MemoryStore, RecordingExecutor


class Harness:
    def __init__(self) -> None:
        self.role = Engineer()
        self.state = EngineerState()
        self.executor = RecordingExecutor()
        self.store = MemoryStore()

    async def send(self, body: Any, sender: str = "pi") -> list[tuple[Any, str]]:
        env = Envelope(project="p1", sender=sender, recipient="engineer", body=body)  # type: ignore[arg-type]
        ctx = EngineerContext(project="p1", role="engineer", state=self.state, artifacts=self.store, mind=None, jobs=self.executor)
        await self.role.handle(env, ctx)
        return ctx.outputs


def request() -> ExperimentRequest:
    return ExperimentRequest(experiment_id="x01-baseline", seeds=[0, 1, 2], template="toy", template_object="p1/template.tar.gz", spec=TOY_SPEC)


def lost(job_id: str) -> JobStatus:
    return JobStatus(job_id=job_id, experiment_id="x01-baseline", state="failed", reason="runner exited (None) without a result: no output")


async def test_a_runner_lost_with_the_lab_runs_again_with_the_same_seeds():
    h = Harness()
    await h.send(request())
    first = h.executor.submitted[-1]
    assert first.job_id == job_id_for("p1", "x01-baseline", 1)

    outputs = await h.send(lost(first.job_id), sender="engineer")  # the executor watch speaks for a dead runner
    again = h.executor.submitted[-1]
    assert again.job_id == job_id_for("p1", "x01-baseline", 2) and h.state.jobs[again.job_id].attempt == 2
    assert (again.seeds, again.overrides, again.bundle_object) == (first.seeds, first.overrides, first.bundle_object)
    assert [type(b).__name__ for b, _ in outputs] == ["ExperimentPlanned"], "no result yet: the experiment is not reported failed"
    assert outputs[0][0].job_ids == [again.job_id]

    outputs = await h.send(JobStatus(job_id=again.job_id, experiment_id="x01-baseline", state="succeeded"), sender="runner")
    (result, to), = outputs
    assert to == "pi" and [r.status for r in result.runs] == ["succeeded"]
    run = result.runs[0]
    assert run.attempt == 2 and run.job_id == again.job_id
    assert len(run.lost) == 1 and first.job_id in run.lost[0] and "without a result" in run.lost[0]


async def test_the_experiments_own_failure_is_not_run_again():
    h = Harness()
    await h.send(request())
    job = h.executor.submitted[-1]
    outputs = await h.send(JobStatus(job_id=job.job_id, experiment_id="x01-baseline", state="failed", reason="crashed: exit code 1"), sender="runner")
    assert len(h.executor.submitted) == 1
    (result, _), = outputs
    assert result.runs[0].status == "failed" and result.runs[0].reason == "crashed: exit code 1"


async def test_lost_runners_are_reported_failed_once_their_attempts_are_spent():
    h = Harness()
    await h.send(request())
    for _ in range(MAX_LOST_ATTEMPTS - 1):
        outputs = await h.send(lost(h.executor.submitted[-1].job_id), sender="engineer")
        assert [type(b).__name__ for b, _ in outputs] == ["ExperimentPlanned"]
    assert len(h.executor.submitted) == MAX_LOST_ATTEMPTS
    outputs = await h.send(lost(h.executor.submitted[-1].job_id), sender="engineer")
    assert len(h.executor.submitted) == MAX_LOST_ATTEMPTS
    (result, _), = outputs
    run = result.runs[0]
    assert run.status == "failed" and run.attempt == MAX_LOST_ATTEMPTS and len(run.lost) == MAX_LOST_ATTEMPTS - 1


async def test_a_late_word_from_a_replaced_attempt_is_ignored():
    h = Harness()
    await h.send(request())
    first = h.executor.submitted[-1].job_id
    await h.send(lost(first), sender="engineer")
    outputs = await h.send(JobStatus(job_id=first, experiment_id="x01-baseline", state="succeeded"), sender="runner")
    assert outputs == [] and len(h.executor.submitted) == 2
