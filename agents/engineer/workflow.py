"""The engineer: turns a planned idea into jobs and jobs into results, never running experiment code itself.

Jobs are dispatched to the executor up to the lab's capacity, one pool for
all projects (``bus/ledger``: a slot ledger shared fairly); their outcomes come
back as ``job_status`` messages from the job runner (or from its job
watch, ``services/job_watch``, for failures the runner could not report), so a restarted engineer
picks up where it was from its state alone.

Before a job takes a slot, the engineer looks its key up in the lab's result
cache (``bus/resultcache``): a run of the same code, knobs, seeds and runtime
that succeeded before is reused (the job succeeds at once with that run's
status, ``RunRecord.reused_from`` names it; no job, no slot); one that some
project runs now is waited for (the job stays queued, ``waits_for`` its owner,
until the job watch wakes it); otherwise the job claims the key, runs, and
stores its status when it succeeds (a failed, cancelled or abandoned run gives
its claim back, and a waiter runs in its place). Job ids derive from (project,
experiment, attempt), and executors treat a second submit of a known id as
done — after checking that the job they find was recorded for the same project
and experiment: a redelivered request never runs an experiment twice, and two
projects never share a job.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
    computed_field,
    model_validator,
)

from agents import aisci
from agents.base import Context, Role, on
from agents.codeedit import EditError, apply_edits
from agents.codeideas import unified_diff
from agents.engineer.jobs import Jobs, plan_job
from agents.minds.base import EngineerMind
from agents.templates import bundle_files, replace_files
from bus.errors import ArtifactMissing
from bus.provenance import tar_sha256
from bus.resultcache import STALE_MARGIN_S, Found, owner_of, run_key
from bus.schema import (
    CodeEdit,
    CoPINoteMsg,
    Decision,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    JobSpec,
    JobStatus,
    NoteAck,
    RunRecord,
    StepFailed,
    TemplateError,
    TemplateSpec,
)
from bus.schema.results import LOG_TAIL_NAME, clean_text, failure_kind
from bus.schema.state import JobRecordState
from bus.store import base_name

TERMINAL = ("succeeded", "failed", "cancelled")
# A code edit that crashes or hangs goes back to the mind with the error, this many times in all.
MAX_ATTEMPTS = 3
# A job whose runner died without a result (the lab was killed, a node lost) runs again, this many times in all.
MAX_LOST_ATTEMPTS = 3
# What the engineer reads of a failed run's log (its tail object, bounded by the runner): never the whole log.
LOG_TAIL_BYTES = 64 << 10
LOG_TAIL_LINES = 30
# JobSpec fields an engineer before the JobRecord held a spec kept flat on the record.
_FLAT_SPEC_FIELDS = tuple(f for f in JobSpec.model_fields if f not in ("project", "nats"))


class JobRecord(BaseModel):
    """One job as the engineer keeps it: the plan the runner gets, and the engineer's bookkeeping around it.

    ``spec.nats`` stays None here (the jobs port fills it in at submit). ``job_id`` and
    ``experiment_id`` are also written at the top level of the stored record, where
    readers (``bus.schema.state.EngineerView``, `lab status`) find them.
    """

    model_config = ConfigDict(extra="forbid")
    spec: JobSpec
    idea_id: str
    attempt: int = 1
    edits: list[CodeEdit] = []  # code edits this attempt made to the template
    diff: str = ""  # those edits as a unified diff of the template's files, for the paper
    lost: list[str] = []  # why earlier attempts of this run ended without a result (their runner died)
    state: JobRecordState = "queued"
    reason: str = ""
    status: JobStatus | None = None
    cache_key: str = ""  # its key in the lab's result cache (bus/resultcache.run_key); "" where the lab keeps no cache
    fresh: bool = False  # the project (--no-cache) or template (cache: false) opted out: the key is never looked up nor stored
    waits_for: str = ""  # queued behind another project's run of the same key: that run's "<project>/<experiment>/<job>"
    reused_from: str = ""  # succeeded with the cached results of that run, without running

    @property
    def cached(self) -> bool:
        """Whether the result cache serves this job: it has a key and nobody opted out."""
        return bool(self.cache_key) and not self.fresh

    @computed_field  # type: ignore[prop-decorator]  # mypy cannot see decorators over a property; pydantic's documented form
    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @computed_field  # type: ignore[prop-decorator]  # as above
    @property
    def experiment_id(self) -> str:
        return self.spec.experiment_id

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any, info: ValidationInfo) -> Any:
        """Drop the ids written for readers; lift a record stored flat (before it held a spec) into one.

        A lab upgraded mid-project keeps its KV state; the project such a record
        belongs to comes from the validation context (the host gives it).
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "spec" in data:
            data.pop("job_id", None)
            data.pop("experiment_id", None)
            return data
        project = (info.context or {}).get("project", "") if info is not None else ""
        spec = {k: data.pop(k) for k in _FLAT_SPEC_FIELDS if k in data}
        data["spec"] = {**spec, "project": project}
        return data


# The PI's testbed check (TemplateSpec.positive_control), run as this idea: planned as declared, never by a model.
POSITIVE_CONTROL = "positive-control"


class EngineerState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: dict[str, ExperimentRequest] = {}
    jobs: dict[str, JobRecord] = {}
    experiments: dict[str, list[str]] = {}
    reported: list[str] = []
    closed: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_old_fields(cls, data: Any) -> Any:
        # ``notes`` (co-PI note texts) was written and never read; older states still carry it.
        if isinstance(data, dict) and "notes" in data:
            data = {k: v for k, v in data.items() if k != "notes"}
        return data


@dataclass(kw_only=True)
class EngineerContext(Context[EngineerState, EngineerMind]):
    """The engineer's context: its state and mind, and where its jobs run."""

    jobs: Jobs


def job_id_for(project: str, experiment_id: str, attempt: int = 1) -> str:
    """A job's id, unique per (project, experiment, attempt): every project's baseline is its own job.

    Experiment ids (``x01-baseline``) repeat across projects; an id from them alone made a second
    project adopt the first one's finished job and wait for it forever.
    """
    return "j" + hashlib.sha256(f"{project}/{experiment_id}/{attempt}".encode()).hexdigest()[:16]


def cache_key(job: JobSpec, template: TemplateSpec, code_sha256: str, runtime: str) -> str:
    """The job's key in the lab's result cache (``bus.resultcache.run_key``), one per job: its whole seed list.

    The hardware class counts where results depend on it: CPU or GPU always (numerics differ), and the
    job's GPUs, nodes and CPUs where the template reports a metric of kind ``hardware`` (throughput, time).
    """
    hardware = "gpu" if job.gpu else "cpu"
    if any(m.kind == "hardware" for m in template.metrics.values()):
        hardware += f" gpu={job.gpu}x{job.nodes} cpu={job.cpu}"
    return run_key(code_sha256=code_sha256, overrides=job.overrides, seeds=job.seeds, runtime=runtime, hardware=hardware)


class Engineer(Role):
    name = "engineer"
    State = EngineerState

    @on(ExperimentRequest)
    async def request(self, body: ExperimentRequest, env: Any, ctx: EngineerContext) -> None:
        st = ctx.state
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

    async def _plan(self, ctx: EngineerContext, body: ExperimentRequest, attempt: int, error: str) -> JobRecord | str:
        """A job for the request, or the reason it cannot run. Code edits are checked here, before dispatch."""
        idea_id = body.idea.id if body.idea else "baseline"
        bundle_object = body.template_object
        edits: list[CodeEdit] = []
        diff = ""
        profile = body.profile or ("fast" if body.fast else None)
        fresh = not (body.cache and body.spec.cache)
        bundle = b""
        try:
            body.spec.profile(profile)  # an unknown profile fails before the mind is asked
            changes: dict[str, Any] = {}
            if body.idea is not None and body.idea.id == POSITIVE_CONTROL and body.idea.code is None:
                changes = dict(body.idea.changes)  # the template's own declared setting: nothing for a mind to interpret
            elif body.idea is not None:
                bundle = await ctx.artifacts.get(body.template_object)
                files = bundle_files(bundle)
                if body.idea.code is not None and body.idea.code.edits:  # the proposer wrote the edits: nothing to interpret
                    changes, edits = dict(body.idea.changes), list(body.idea.code.edits)
                else:
                    plan = await ctx.mind.plan(body.idea, body.spec, files, error)
                    changes, edits = plan.overrides, plan.edits
                if edits:
                    patched = apply_edits(files, edits, aisci.editable(files))
                    diff = unified_diff(files, patched)
                    bundle = replace_files(bundle, patched)
                    bundle_object = await ctx.artifacts.put(f"{ctx.project}/bundles/{body.experiment_id}-a{attempt}.tar.gz", bundle)
            spec = plan_job(
                body.spec, profile, job_id=job_id_for(ctx.project, body.experiment_id, attempt), project=ctx.project,
                experiment_id=body.experiment_id, template=body.template, bundle_object=bundle_object, seeds=body.seeds, changes=changes,
            )
            if body.fixed:  # the project's workflow's own options (an evolve run's split), past the knob checks
                spec = spec.model_copy(update={"overrides": {**spec.overrides, **body.fixed}})
        except (TemplateError, EditError) as e:
            return str(e)
        key = ""
        if ctx.jobs.results is not None:  # keyed even when fresh: the log names each run by its key, cached or not
            try:
                bundle = bundle or await ctx.artifacts.get(bundle_object)
                key = cache_key(spec, body.spec, tar_sha256(bundle), ctx.jobs.runtime())
            except (ArtifactMissing, tarfile.TarError, OSError, ValueError) as e:
                # No key, no cache: the job runs as planned, and fails there if its bundle is really gone.
                ctx.log.warning("run not keyed for the result cache", bundle=bundle_object, error=f"{type(e).__name__}: {e}")
        return JobRecord(spec=spec, idea_id=idea_id, attempt=attempt, edits=edits, diff=diff, cache_key=key, fresh=fresh)

    def _queue(self, ctx: EngineerContext, st: EngineerState, job: JobRecord) -> None:
        st.jobs[job.job_id] = job
        st.experiments[job.experiment_id].append(job.job_id)
        note = f" (attempt {job.attempt}, {len(job.edits)} code edits)" if job.edits or job.attempt > 1 else ""
        ctx.send(
            ExperimentPlanned(experiment_id=job.experiment_id, idea_id=job.idea_id, overrides=job.spec.overrides, job_ids=[job.job_id]),
            "pi",
        )
        ctx.log.info("job planned" + note, job=job.job_id, experiment=job.experiment_id)

    async def _dispatch(self, ctx: EngineerContext, st: EngineerState) -> None:
        """Submit queued jobs while the lab's capacity (shared with every other project) lets this one."""
        ledger = ctx.jobs.ledger  # the lab-wide slot ledger; None: this project's own count
        capacity = ctx.jobs.capacity()
        in_flight = [j for j in st.jobs.values() if j.state in ("dispatched", "pending", "running")]
        results = ctx.jobs.results
        for job in [j for j in st.jobs.values() if j.state == "queued"]:
            mine = owner_of(ctx.project, job.experiment_id, "")
            if job.cached and results is not None and self._served(ctx, st, job, await results.lookup(job.cache_key, mine)):
                continue  # reused, or waits for another project's run of it: no slot taken
            if ledger is not None:
                units = ledger.units_of(job.spec.gpu) * job.spec.nodes  # a multi-node job holds every node's share
                if capacity is not None and units > capacity:
                    job.state, job.reason = "failed", f"needs {units} {ledger.counts}, the lab has {capacity}"
                    self._maybe_report(ctx, st, job.experiment_id)
                    continue
                if not await ledger.acquire(ctx.project, job.job_id, units):
                    ctx.log.info("job waits for capacity", job=job.job_id)
                    break
            elif capacity is not None and len(in_flight) >= capacity:
                break
            if job.cached and results is not None:
                stale_after = 2 * (job.spec.wall_time_s + job.spec.term_grace_s) + STALE_MARGIN_S
                found = await results.claim(job.cache_key, owner_of(ctx.project, job.experiment_id, job.job_id), mine, stale_after)
                if self._served(ctx, st, job, found):  # another engineer was quicker: give the slot back
                    if ledger is not None:
                        await ledger.release([job.job_id])
                    continue
            try:
                await ctx.jobs.submit(job.spec)
            except Exception as e:  # an executor error fails this run, not the agent
                job.state, job.reason = "failed", f"dispatch failed: {e}"
                ctx.log.error("dispatch failed", job=job.job_id, reason=str(e))
                if ledger is not None:
                    await ledger.release([job.job_id])
                await self._release_claim(ctx, job)
                self._maybe_report(ctx, st, job.experiment_id)
                continue
            job.state = "dispatched"
            in_flight.append(job)
            ctx.log.info("job dispatched", job=job.job_id, experiment=job.experiment_id, overrides=job.spec.overrides, run_key=job.cache_key[:16])

    def _served(self, ctx: EngineerContext, st: EngineerState, job: JobRecord, found: Found) -> bool:
        """Apply a cache look-up to a queued job: reused (True), waiting for another's run (True), or to run (False)."""
        if found.kind == "run" or found.entry is None:
            job.waits_for = ""
            return False
        if found.kind == "wait":
            if job.waits_for != found.entry.owner:
                ctx.log.info("job waits for the same run elsewhere", job=job.job_id, owner=found.entry.owner)
            job.waits_for = found.entry.owner
            return True
        status = found.entry.status
        assert status is not None  # a hit is a done entry with its status
        job.state, job.reason, job.waits_for, job.reused_from = "succeeded", "", "", found.entry.owner
        job.status = status.model_copy(update={"job_id": job.job_id, "experiment_id": job.experiment_id, "signature": ""})
        ctx.log.info("job served from the result cache", job=job.job_id, reused_from=found.entry.owner, run_key=job.cache_key[:16])
        self._maybe_report(ctx, st, job.experiment_id)
        return True

    async def _release_claim(self, ctx: EngineerContext, job: JobRecord) -> None:
        """Give back the job's claim on its cache key (it failed, was cancelled, or its project ended): a waiter runs it."""
        if job.cached and not job.reused_from and (results := ctx.jobs.results) is not None:
            await results.release(job.cache_key, owner_of(ctx.project, job.experiment_id, ""))

    @on(JobStatus)
    async def status(self, body: JobStatus, env: Any, ctx: EngineerContext) -> None:
        st = ctx.state
        job = st.jobs.get(body.job_id)
        if job is None or job.state in TERMINAL:
            return
        if body.state == "queued":
            # The lab's capacity freed up for this project (the job watch's wake-up): dispatch what waits.
            if job.state == "queued" and not st.closed:
                await self._dispatch(ctx, st)
            return
        if body.state in ("pending", "running"):
            job.state = body.state
            job.reason = body.reason
            return
        if body.state not in TERMINAL:
            return
        lost = body.state == "failed" and failure_kind(body.reason, from_runner=env.sender == "runner") == "lost"
        if lost and not st.closed and self._run_again(ctx, st, job, body.reason):
            await self._dispatch(ctx, st)
            return
        job.state, job.reason, job.status = body.state, body.reason, body
        if (ledger := ctx.jobs.ledger) is not None:
            await ledger.release([job.job_id])
        if body.state == "succeeded" and job.cached and (results := ctx.jobs.results) is not None:
            # Stored before the state that says so: a crash between the two stores the same status again.
            await results.store_result(job.cache_key, owner_of(ctx.project, job.experiment_id, job.job_id), body)
        elif body.state != "succeeded":
            await self._release_claim(ctx, job)
        ctx.log.info("job finished", job=job.job_id, state=body.state, reason=body.reason, wall_s=round(body.wall_s, 1), run_key=job.cache_key[:16])
        request = st.requests[job.experiment_id]
        written = request.idea is not None and request.idea.code is not None and bool(request.idea.code.edits)
        if body.state == "failed" and job.edits and job.attempt < MAX_ATTEMPTS and not st.closed and not written:
            # The edited code crashed or hung: show the mind the error and let it fix its edit (the proposer's own
            # edits, an evolve candidate's, are the candidate: its failure is its result).
            retry = await self._plan(ctx, request, job.attempt + 1, await self._error_of(ctx, job))
            if isinstance(retry, JobRecord):
                self._queue(ctx, st, retry)
        self._maybe_report(ctx, st, job.experiment_id)
        if not st.closed:
            await self._dispatch(ctx, st)

    def _run_again(self, ctx: EngineerContext, st: EngineerState, job: JobRecord, reason: str) -> bool:
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
        spec = job.spec.model_copy(update={"job_id": job_id_for(ctx.project, job.experiment_id, job.attempt + 1)})
        retry = job.model_copy(update={"spec": spec, "attempt": job.attempt + 1, "state": "queued", "reason": "", "status": None, "lost": lost})
        self._queue(ctx, st, retry)
        ctx.log.warning("runner lost; running the job again", job=job.job_id, attempt=retry.attempt, reason=reason)
        return True

    async def _error_of(self, ctx: EngineerContext, job: JobRecord) -> str:
        """The failure's reason and the last lines of the run's log, from the log's tail the runner keeps apart.

        Never the whole log (which the experiment may have filled): its last ``LOG_TAIL_BYTES``, ``LOG_TAIL_LINES``
        lines, without control characters (they reach a terminal and a model).
        """
        log_name = next((a for a in (job.status.artifacts if job.status else []) if base_name(a).endswith(f"/{LOG_TAIL_NAME}")), None)
        tail = ""
        if log_name:
            try:
                text = (await ctx.artifacts.get(log_name))[-LOG_TAIL_BYTES:].decode(errors="replace")
                tail = "\n".join(clean_text(line, 500) for line in text.splitlines()[-LOG_TAIL_LINES:])
            except Exception as e:  # any store failure: the reason alone still fails the run, the tail only adds to it
                ctx.log.warning("run log unreadable", job=job.job_id, log=log_name, error=f"{type(e).__name__}: {e}")
                tail = ""
        return f"{job.reason}\n{tail}".strip()

    def _maybe_report(self, ctx: EngineerContext, st: EngineerState, experiment_id: str) -> None:
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
                overrides=j.spec.overrides,
                seeds=j.spec.seeds,
                status="succeeded" if j.state == "succeeded" else "failed",
                reason=j.reason,
                attempt=j.attempt,
                lost=j.lost,
                diff=j.diff,
                reused_from=j.reused_from,
                final_info=j.status.final_info if j.status else None,
                environment=j.status.environment if j.status else None,
                artifacts=j.status.artifacts if j.status else [],
                wall_s=j.status.wall_s if j.status else 0.0,
                cpu_s=j.status.cpu_s if j.status else None,
                gpu_s=j.status.gpu_s if j.status else 0.0,
            )
            for j in jobs
        ]
        request = st.requests.get(experiment_id)
        primary = request.spec.primary_metric if request is not None else ""
        ctx.send(ExperimentResult(experiment_id=experiment_id, idea_id=jobs[0].idea_id, runs=runs, primary_metric=primary), "pi")

    @on(Decision)
    async def decision(self, body: Decision, env: Any, ctx: EngineerContext) -> None:
        """The project is over: stop what still runs and leave nothing behind."""
        st = ctx.state
        if st.closed:
            return
        st.closed = True
        for job in st.jobs.values():
            if job.state not in TERMINAL:
                await ctx.jobs.cancel(job.job_id)
                await self._release_claim(ctx, job)
                job.state, job.reason = "cancelled", "project ended"
        if (ledger := ctx.jobs.ledger) is not None:
            await ledger.forget(ctx.project)
        await ctx.jobs.cleanup(ctx.project)

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: EngineerContext) -> None:
        ctx.send(NoteAck(note_id=body.note.id, understood="noted by the engineer; plans follow the PI's requests"), "copi")


ROLE = Engineer
__all__ = ["Engineer", "EngineerContext", "EngineerState", "JobRecord", "StepFailed", "job_id_for"]
