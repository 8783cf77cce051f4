"""The engineer: turns a planned idea into jobs and jobs into results, never running experiment code itself.

Jobs are dispatched to the executor up to its capacity; their outcomes come
back as ``job_status`` messages from the job runner (or from the host's
watcher, for failures the runner could not report), so a restarted engineer
picks up where it was from its state alone. Job ids derive from experiment
ids, and executors treat a second submit of a known id as done: a redelivered
request never runs an experiment twice.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agents.base import Context, Role, on
from agents.templates import TemplateError, parse_spec
from bus.messages import (
    CoPINoteMsg,
    Decision,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    JobStatus,
    NoteAck,
    RunRecord,
    StepFailed,
)

TERMINAL = ("succeeded", "failed", "cancelled")


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str
    experiment_id: str
    idea_id: str
    overrides: dict[str, Any]
    seeds: list[int]
    bundle_object: str
    template: str
    wall_time_s: float
    memory_mb: int
    cpu: float
    gpu: int
    network: bool
    state: Literal["queued", "dispatched", "pending", "running", "succeeded", "failed", "cancelled"] = "queued"
    reason: str = ""
    status: JobStatus | None = None


class EngineerState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: dict[str, JobRecord] = {}
    experiments: dict[str, list[str]] = {}
    reported: list[str] = []
    closed: bool = False
    notes: list[str] = []


def job_id_for(experiment_id: str, attempt: int = 1) -> str:
    return "j" + hashlib.sha256(f"{experiment_id}/{attempt}".encode()).hexdigest()[:12]


class Engineer(Role):
    name = "engineer"
    State = EngineerState  # type: ignore[assignment]

    @on(ExperimentRequest)
    async def request(self, body: ExperimentRequest, env: Any, ctx: Context) -> None:
        st: EngineerState = ctx.state
        if body.experiment_id in st.experiments:
            return
        idea_id = body.idea.id if body.idea else "baseline"
        try:
            spec = parse_spec(body.spec)
            base = {**(spec.fast if body.fast else {}), **spec.baseline}
            plan_overrides: dict[str, Any] = {}
            if body.idea is not None:
                plan = await ctx.mind.plan(body.idea, body.spec, {}, "")
                plan_overrides = plan.overrides
            overrides = spec.check_overrides({**base, **plan_overrides})
        except TemplateError as e:
            st.experiments[body.experiment_id] = []
            ctx.send(ExperimentPlanned(experiment_id=body.experiment_id, idea_id=idea_id, overrides={}, job_ids=[], rejected=str(e)), "pi")
            ctx.log.warning("plan rejected", experiment=body.experiment_id, reason=str(e))
            return
        job = JobRecord(
            job_id=job_id_for(body.experiment_id),
            experiment_id=body.experiment_id,
            idea_id=idea_id,
            overrides=overrides,
            seeds=body.seeds,
            bundle_object=body.template_object,
            template=body.template,
            wall_time_s=spec.time_budget_s,
            memory_mb=spec.resources.memory_mb,
            cpu=spec.resources.cpu,
            gpu=spec.resources.gpu,
            network=spec.network,
        )
        st.jobs[job.job_id] = job
        st.experiments[body.experiment_id] = [job.job_id]
        ctx.send(ExperimentPlanned(experiment_id=body.experiment_id, idea_id=idea_id, overrides=overrides, job_ids=[job.job_id]), "pi")
        await self._dispatch(ctx, st)

    async def _dispatch(self, ctx: Context, st: EngineerState) -> None:
        executor = ctx.services["executor"]
        capacity = executor.capacity()
        in_flight = [j for j in st.jobs.values() if j.state in ("dispatched", "pending", "running")]
        for job in [j for j in st.jobs.values() if j.state == "queued"]:
            if capacity is not None and len(in_flight) >= capacity:
                break
            spec = ctx.services["job_spec"](ctx.project, job)
            try:
                await executor.submit(spec)
            except Exception as e:  # an executor error fails this run, not the agent
                job.state, job.reason = "failed", f"dispatch failed: {e}"
                ctx.log.error("dispatch failed", job=job.job_id, reason=str(e))
                self._maybe_report(ctx, st, job.experiment_id)
                continue
            job.state = "dispatched"
            in_flight.append(job)
            ctx.log.info("job dispatched", job=job.job_id, experiment=job.experiment_id, overrides=job.overrides)

    @on(JobStatus)
    async def status(self, body: JobStatus, env: Any, ctx: Context) -> None:
        st: EngineerState = ctx.state
        job = st.jobs.get(body.job_id)
        if job is None or job.state in TERMINAL:
            return
        if body.state in ("pending", "running"):
            job.state = body.state
            job.reason = body.reason
            return
        if body.state not in TERMINAL:
            return
        job.state, job.reason, job.status = body.state, body.reason, body
        ctx.log.info("job finished", job=job.job_id, state=body.state, reason=body.reason, wall_s=round(body.wall_s, 1))
        self._maybe_report(ctx, st, job.experiment_id)
        if not st.closed:
            await self._dispatch(ctx, st)

    def _maybe_report(self, ctx: Context, st: EngineerState, experiment_id: str) -> None:
        jobs = [st.jobs[j] for j in st.experiments.get(experiment_id, [])]
        if experiment_id in st.reported or not jobs or any(j.state not in TERMINAL for j in jobs):
            return
        st.reported.append(experiment_id)
        runs = [
            RunRecord(
                job_id=j.job_id,
                experiment_id=j.experiment_id,
                idea_id=j.idea_id,
                overrides=j.overrides,
                seeds=j.seeds,
                status="succeeded" if j.state == "succeeded" else "failed",
                reason=j.reason,
                final_info=j.status.final_info if j.status else None,
                environment=j.status.environment if j.status else None,
                artifacts=j.status.artifacts if j.status else [],
                wall_s=j.status.wall_s if j.status else 0.0,
            )
            for j in jobs
        ]
        ctx.send(ExperimentResult(experiment_id=experiment_id, idea_id=jobs[0].idea_id, runs=runs), "pi")

    @on(Decision)
    async def decision(self, body: Decision, env: Any, ctx: Context) -> None:
        """The project is over: stop what still runs and leave nothing behind."""
        st: EngineerState = ctx.state
        if st.closed:
            return
        st.closed = True
        executor = ctx.services["executor"]
        for job in st.jobs.values():
            if job.state not in TERMINAL:
                await executor.cancel(job.job_id)
                job.state, job.reason = "cancelled", "project ended"
        await executor.cleanup(ctx.project)

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: Context) -> None:
        st: EngineerState = ctx.state
        st.notes.append(body.note.text)
        ctx.send(NoteAck(note_id=body.note.id, understood="noted by the engineer; plans follow the PI's requests"), "copi")


ROLE = Engineer
__all__ = ["Engineer", "EngineerState", "JobRecord", "StepFailed", "job_id_for"]
