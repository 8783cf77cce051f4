"""The engineer's stored state: a job record holds its JobSpec, and state an older engineer stored still loads."""

from __future__ import annotations

from agents.engineer.jobs import plan_job
from agents.engineer.workflow import EngineerState, JobRecord
from bus.schema import TemplateSpec
from bus.schema.state import EngineerView
from tests.fakes import TOY_SPEC

# A job record as engineers before the JobSpec composition stored it: the spec's fields flat on the record.
OLD_JOB = {
    "job_id": "jabc", "experiment_id": "x01-baseline", "idea_id": "baseline", "overrides": {}, "seeds": [0, 1],
    "bundle_object": "p1/template.tar.gz", "template": "toy", "wall_time_s": 60.0, "memory_mb": 512, "cpu": 1.0, "gpu": 0,
    "network": False, "resumable": False, "attempt": 2, "edits": [], "lost": ["attempt 1 (j0): runner died"],
    "state": "running", "reason": "", "status": None,
}


def test_an_old_flat_job_record_and_notes_load_into_the_new_shape():
    old = {"requests": {}, "jobs": {"jabc": OLD_JOB}, "experiments": {"x01-baseline": ["jabc"]}, "reported": [], "closed": False,
           "notes": ["only vary weight_decay"]}
    state = EngineerState.model_validate(old, context={"project": "p1"})
    job = state.jobs["jabc"]
    assert (job.spec.job_id, job.spec.project, job.spec.experiment_id, job.spec.seeds) == ("jabc", "p1", "x01-baseline", [0, 1])
    assert (job.spec.wall_time_s, job.spec.memory_mb, job.spec.template, job.spec.nats) == (60.0, 512, "toy", None)
    assert (job.idea_id, job.attempt, job.state, job.lost) == ("baseline", 2, "running", ["attempt 1 (j0): runner died"])
    assert "notes" not in state.model_dump()


def test_a_stored_record_round_trips_and_readers_find_the_ids_at_the_top():
    spec = plan_job(TemplateSpec.model_validate(TOY_SPEC), None, job_id="jx", project="p1", experiment_id="x02", bundle_object="p1/b.tar.gz", seeds=[0])
    state = EngineerState(jobs={"jx": JobRecord(spec=spec, idea_id="wd-1")})
    doc = state.model_dump(mode="json")
    assert doc["jobs"]["jx"]["job_id"] == "jx" and doc["jobs"]["jx"]["experiment_id"] == "x02"
    assert "nats" in doc["jobs"]["jx"]["spec"] and doc["jobs"]["jx"]["spec"]["nats"] is None
    assert EngineerState.model_validate(doc) == state
    view = EngineerView.model_validate(doc)
    assert [(j.job_id, j.experiment_id, j.state) for j in view.active()] == [("jx", "x02", "queued")]


def test_a_job_with_more_seeds_than_a_run_gets_its_time_budget_in_proportion() -> None:
    spec = TemplateSpec.model_validate(TOY_SPEC)
    per_run = spec.profile(None).time_budget_s

    def wall(seeds: list[int]) -> float:
        return plan_job(spec, None, job_id="jx", project="p1", experiment_id="x", bundle_object="b", seeds=seeds).wall_time_s

    assert wall(list(range(spec.seeds))) == per_run and wall([0]) == per_run  # a run's seeds or fewer: the budget as declared
    assert wall(list(range(3, 3 + 2 * spec.seeds))) == 2 * per_run  # a top-up of twice the seeds: twice the time
