"""The engineer: turns a planned idea into jobs and jobs into results, never running experiment code itself.

Jobs are dispatched to the executor up to the lab's capacity, one pool for
all projects (``bus/ledger``: a slot ledger shared fairly); their outcomes come
back as ``job_status`` messages from the job runner (or from the host's
watcher, for failures the runner could not report), so a restarted engineer
picks up where it was from its state alone. Job ids derive from (project,
experiment, attempt), and executors treat a second submit of a known id as
done — after checking that the job they find was recorded for the same project
and experiment: a redelivered request never runs an experiment twice, and two
projects never share a job.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agents.base import Context, Role, on
from agents.codeedit import EDITABLE, EditError, apply_edits
from agents.codeideas import unified_diff
from agents.templates import bundle_files, replace_files
from bus.schema import (
    CodeEdit,
    CoPINoteMsg,
    Decision,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    JobStatus,
    NoteAck,
    RunRecord,
    StepFailed,
    TemplateError,
)

TERMINAL = ("succeeded", "failed", "cancelled")
# A code edit that crashes or hangs goes back to the mind with the error, this many times in all.
MAX_ATTEMPTS = 3
# A job whose runner died without a result (the lab was killed, a node lost) runs again, this many times in all.
MAX_LOST_ATTEMPTS = 3


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
    resumable: bool = False
    attempt: int = 1
    edits: list[CodeEdit] = []  # code edits this attempt made to the template
    diff: str = ""  # those edits as a unified diff of the template's files, for the paper
    lost: list[str] = []  # why earlier attempts of this run ended without a result (their runner died)
    state: Literal["queued", "dispatched", "pending", "running", "succeeded", "failed", "cancelled"] = "queued"
    reason: str = ""
    status: JobStatus | None = None


class EngineerState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: dict[str, ExperimentRequest] = {}
    jobs: dict[str, JobRecord] = {}
    experiments: dict[str, list[str]] = {}
    reported: list[str] = []
    closed: bool = False
    notes: list[str] = []


def job_id_for(project: str, experiment_id: str, attempt: int = 1) -> str:
    """A job's id, unique per (project, experiment, attempt): every project's baseline is its own job.

    Experiment ids (``x01-baseline``) repeat across projects; an id from them alone made a second
    project adopt the first one's finished job and wait for it forever.
    """
    return "j" + hashlib.sha256(f"{project}/{experiment_id}/{attempt}".encode()).hexdigest()[:16]


class Engineer(Role):
    name = "engineer"
    State = EngineerState  # type: ignore[assignment]

    @on(ExperimentRequest)
    async def request(self, body: ExperimentRequest, env: Any, ctx: Context) -> None:
        st: EngineerState = ctx.state
        if body.experiment_id in st.experiments:
            return
        st.requests[body.experiment_id] = body
        st.experiments[body.experiment_id] = []
        idea_id = body.idea.id if body.idea else "baseline"
        job = await self._plan(ctx, body, attempt=1, error="")
        if isinstance(job, str):
            ctx.send(ExperimentPlanned(experiment_id=body.experiment_id, idea_id=idea_id, overrides={}, job_ids=[], rejected=job), "pi")
            ctx.log.warning("plan rejected", experiment=body.experiment_id, reason=job)
            return
        self._queue(ctx, st, job)
        await self._dispatch(ctx, st)

    async def _plan(self, ctx: Context, body: ExperimentRequest, attempt: int, error: str) -> JobRecord | str:
        """A job for the request, or the reason it cannot run. Code edits are checked here, before dispatch."""
        idea_id = body.idea.id if body.idea else "baseline"
        bundle_object = body.template_object
        edits: list[CodeEdit] = []
        diff = ""
        try:
            spec = body.spec
            profile = spec.profile(body.profile or ("fast" if body.fast else None))
            base = {**profile.overrides, **spec.baseline}
            plan_overrides: dict[str, Any] = {}
            if body.idea is not None:
                bundle = await ctx.artifacts.get(body.template_object)
                files = bundle_files(bundle)
                plan = await ctx.mind.plan(body.idea, body.spec, files, error)
                plan_overrides, edits = plan.overrides, plan.edits
                if edits:
                    patched = apply_edits(files, edits, EDITABLE)
                    diff = unified_diff(files, patched)
                    bundle_object = await ctx.artifacts.put(
                        f"{ctx.project}/bundles/{body.experiment_id}-a{attempt}.tar.gz", replace_files(bundle, patched)
                    )
            overrides = spec.check_overrides({**base, **plan_overrides})
        except (TemplateError, EditError) as e:
            return str(e)
        return JobRecord(
            job_id=job_id_for(ctx.project, body.experiment_id, attempt),
            experiment_id=body.experiment_id,
            idea_id=idea_id,
            overrides=overrides,
            seeds=body.seeds,
            bundle_object=bundle_object,
            template=body.template,
            wall_time_s=profile.time_budget_s,
            memory_mb=profile.resources.memory_mb,
            cpu=profile.resources.cpu,
            gpu=profile.resources.gpu,
            network=spec.network,
            resumable=spec.resumable,
            attempt=attempt,
            edits=edits,
            diff=diff,
        )

    def _queue(self, ctx: Context, st: EngineerState, job: JobRecord) -> None:
        st.jobs[job.job_id] = job
        st.experiments[job.experiment_id].append(job.job_id)
        note = f" (attempt {job.attempt}, {len(job.edits)} code edits)" if job.edits or job.attempt > 1 else ""
        ctx.send(
            ExperimentPlanned(experiment_id=job.experiment_id, idea_id=job.idea_id, overrides=job.overrides, job_ids=[job.job_id]),
            "pi",
        )
        ctx.log.info("job planned" + note, job=job.job_id, experiment=job.experiment_id)

    async def _dispatch(self, ctx: Context, st: EngineerState) -> None:
        """Submit queued jobs while the lab's capacity (shared with every other project) lets this one."""
        executor = ctx.services["executor"]
        ledger = ctx.services.get("capacity")  # the lab-wide slot ledger; absent: this project's own count
        capacity = executor.capacity()
        in_flight = [j for j in st.jobs.values() if j.state in ("dispatched", "pending", "running")]
        for job in [j for j in st.jobs.values() if j.state == "queued"]:
            if ledger is not None:
                units = ledger.units_of(job.gpu)
                if capacity is not None and units > capacity:
                    job.state, job.reason = "failed", f"needs {units} {ledger.counts}, the lab has {capacity}"
                    self._maybe_report(ctx, st, job.experiment_id)
                    continue
                if not await ledger.acquire(ctx.project, job.job_id, units):
                    ctx.log.info("job waits for capacity", job=job.job_id)
                    break
            elif capacity is not None and len(in_flight) >= capacity:
                break
            spec = ctx.services["job_spec"](ctx.project, job)
            try:
                await executor.submit(spec)
            except Exception as e:  # an executor error fails this run, not the agent
                job.state, job.reason = "failed", f"dispatch failed: {e}"
                ctx.log.error("dispatch failed", job=job.job_id, reason=str(e))
                if ledger is not None:
                    await ledger.release([job.job_id])
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
        if body.state == "queued":
            # The lab's capacity freed up for this project (the host's wake-up): dispatch what waits.
            if job.state == "queued" and not st.closed:
                await self._dispatch(ctx, st)
            return
        if body.state in ("pending", "running"):
            job.state = body.state
            job.reason = body.reason
            return
        if body.state not in TERMINAL:
            return
        if body.state == "failed" and env.sender != "runner" and not st.closed and self._run_again(ctx, st, job, body.reason):
            await self._dispatch(ctx, st)
            return
        job.state, job.reason, job.status = body.state, body.reason, body
        if (ledger := ctx.services.get("capacity")) is not None:
            await ledger.release([job.job_id])
        ctx.log.info("job finished", job=job.job_id, state=body.state, reason=body.reason, wall_s=round(body.wall_s, 1))
        if body.state == "failed" and job.edits and job.attempt < MAX_ATTEMPTS and not st.closed:
            # The edited code crashed or hung: show the mind the error and let it fix its edit.
            retry = await self._plan(ctx, st.requests[job.experiment_id], job.attempt + 1, await self._error_of(ctx, job))
            if isinstance(retry, JobRecord):
                self._queue(ctx, st, retry)
        self._maybe_report(ctx, st, job.experiment_id)
        if not st.closed:
            await self._dispatch(ctx, st)

    def _run_again(self, ctx: Context, st: EngineerState, job: JobRecord, reason: str) -> bool:
        """The runner died without a result: an infrastructure loss, not the experiment's failure.

        Only the runner reports an experiment's own outcome (sender ``runner``); a failure
        reported for it by the executor watch means the runner never finished — the lab was
        killed under it, the node went away. Such a job runs again as the next attempt with
        the same configuration and seeds, until its own attempts are spent.
        """
        if job.attempt >= MAX_LOST_ATTEMPTS:
            return False
        lost = [*job.lost, f"attempt {job.attempt} ({job.job_id}): {reason}"]
        job.state, job.reason = "failed", f"runner died without a result: {reason}; run again"
        retry = job.model_copy(
            update={"job_id": job_id_for(ctx.project, job.experiment_id, job.attempt + 1), "attempt": job.attempt + 1,
                    "state": "queued", "reason": "", "status": None, "lost": lost}
        )
        self._queue(ctx, st, retry)
        ctx.log.warning("runner lost; running the job again", job=job.job_id, attempt=retry.attempt, reason=reason)
        return True

    async def _error_of(self, ctx: Context, job: JobRecord) -> str:
        log_name = next((a for a in (job.status.artifacts if job.status else []) if a.endswith("/log.txt")), None)
        tail = ""
        if log_name:
            try:
                tail = "\n".join((await ctx.artifacts.get(log_name)).decode(errors="replace").splitlines()[-30:])
            except Exception as e:  # any store failure: the reason alone still fails the run, the tail only adds to it
                ctx.log.warning("run log unreadable", job=job.job_id, log=log_name, error=f"{type(e).__name__}: {e}")
                tail = ""
        return f"{job.reason}\n{tail}".strip()

    def _maybe_report(self, ctx: Context, st: EngineerState, experiment_id: str) -> None:
        # Only the last attempt of an experiment counts; earlier failed attempts were fixed by a retry.
        ids = st.experiments.get(experiment_id, [])
        jobs = [st.jobs[ids[-1]]] if ids else []
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
                attempt=j.attempt,
                lost=j.lost,
                diff=j.diff,
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
        if (ledger := ctx.services.get("capacity")) is not None:
            await ledger.forget(ctx.project)
        await executor.cleanup(ctx.project)

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: Context) -> None:
        st: EngineerState = ctx.state
        st.notes.append(body.note.text)
        ctx.send(NoteAck(note_id=body.note.id, understood="noted by the engineer; plans follow the PI's requests"), "copi")


ROLE = Engineer
__all__ = ["Engineer", "EngineerState", "JobRecord", "StepFailed", "job_id_for"]
