"""The engineer's background work: watch its jobs at the executor, wake projects waiting for capacity or a cached run.

Both speak as the engineer on the jobs stream (``lab.jobs.<project>.<job>.status``),
which the engineer's own handlers read: a job the runner could not report on
(never started, killed, evicted) fails there, and a project whose turn at the
lab's capacity has come is told so. Ids derive from the job and what was seen,
so replicas watching the same jobs publish each event once.

A job queued behind another project's run of the same cache key (``waits_for``,
bus/resultcache.py) is woken the same way when that key's entry is done (a hit),
gone (its owner failed, was cancelled, or its project ended) or stale (a crashed
lab): the watch reads every engineer's state, so the wake-up reaches the waiter
whichever project, replica or restarted process owned the run.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from bus import subjects
from bus.client import Bus
from bus.jobkeys import JobKeys
from bus.ledger import SlotLedger
from bus.resultcache import ResultCache
from bus.retry import cancel_requested
from bus.schema import Envelope, JobStatus, derive_id
from bus.schema.formats import RoleDocument
from bus.schema.state import EngineerView
from bus.store import StateStore
from services.executors.base import Executor

log = structlog.get_logger()


class JobWatch:
    def __init__(
        self, bus: Bus, states: StateStore, executor: Executor, ledger: SlotLedger | None, keys: JobKeys, results: ResultCache | None = None,
    ) -> None:
        self.results = results
        self.keys = keys  # its events are signed like the runner's: the engineer checks every job status
        self.bus = bus
        self.states = states
        self.executor = executor
        self.ledger = ledger

    async def watch_jobs(self, every: float = 3.0, grace_s: float = 20.0) -> None:
        """Catch jobs that failed where the runner could not say so (never started, killed, evicted)."""
        suspicious: dict[str, float] = {}
        while True:
            await asyncio.sleep(every)
            try:
                active: set[str] = set()
                queued: dict[str, set[str]] = {}
                for key in await self.states.keys("engineer."):
                    raw, _ = await self.states.read(key)
                    state = RoleDocument.parse(raw, key).state
                    if not state:
                        continue
                    project = key.split(".", 1)[1]
                    for job in EngineerView.model_validate(state).jobs.values():
                        if job.state == "queued":
                            queued.setdefault(project, set()).add(job.job_id)
                            if job.waits_for and job.cache_key:
                                await self.wake_cache_waiter(project, job.job_id, job.experiment_id, job.cache_key)
                        if job.state not in ("dispatched", "pending", "running"):
                            suspicious.pop(job.job_id, None)
                            continue
                        active.add(job.job_id)
                        phase = await self.executor.poll(job.job_id)
                        if phase.state == "pending" and phase.reason and job.reason != phase.reason:
                            status = JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="pending", reason=phase.reason)
                            await self.job_event(project, status, f"pending-{phase.reason}")
                        if phase.state in ("failed", "missing", "succeeded"):
                            first = suspicious.setdefault(job.job_id, time.monotonic())
                            # The runner reports its own end; wait a little for that before speaking for it.
                            if time.monotonic() - first > grace_s:
                                reason = phase.reason or ("runner exited without reporting" if phase.state != "missing" else "job vanished from the executor")
                                status = JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason=reason)
                                await self.job_event(project, status, "executor-failed")
                                if phase.leftover:  # what is left of it would hold its slot or GPUs until its deadline
                                    await self.executor.cancel(job.job_id)
                if self.ledger is not None:
                    await self.ledger.reconcile(active, queued)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next pass looks again; one bad pass must not end the watch
                if cancel_requested():
                    raise asyncio.CancelledError from e
                log.warning("job watch failed", error=str(e))

    async def wake_cache_waiter(self, project: str, job_id: str, experiment_id: str, key: str) -> None:
        """Wake a job waiting on another's run of its cache key once that key is done, gone or stale.

        The id derives from the entry's revision and a 10-second tick, so replicas send it once per tick
        and a waiter that lost the next claim (it waits again on the same revision's successor) is woken again.
        """
        if self.results is None:
            return
        entry, revision = await self.results.read(key)
        if entry is not None and entry.state == "running" and not entry.stale():
            return
        why = "cached result ready" if entry is not None and entry.state == "done" else "cached run's claim released"
        status = JobStatus(job_id=job_id, experiment_id=experiment_id, state="queued", reason=why)
        await self.job_event(project, status, f"cache-{revision}-{int(time.time() // 10)}")

    async def wake_waiting(self, every: float = 0.5) -> None:
        """Tell a project waiting for capacity when its turn has come (its own handler takes the slot).

        The wake-up's id derives from the ledger's revision, so replicas watching the same ledger send it once.
        """
        if self.ledger is None:
            return
        while True:
            await asyncio.sleep(every)
            try:
                ledger, revision = await self.ledger.read()
                for project, waiter in ledger.waiting.items():
                    if ledger.may_take(project, waiter.units):
                        status = JobStatus(job_id=waiter.job_id, experiment_id="", state="queued", reason="capacity free")
                        await self.job_event(project, status, f"wake-{revision}")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next tick tries again; one failure must not end the loop
                if cancel_requested():
                    raise asyncio.CancelledError from e
                log.warning("capacity wake-up failed", error=str(e))

    async def job_event(self, project: str, status: JobStatus, tag: str) -> None:
        body = self.keys.sign(project, status)
        env = Envelope(id=derive_id(status.job_id, tag), project=project, sender="engineer", recipient="engineer", body=body)
        await self.bus.publish_job(subjects.job_status(project, status.job_id), env)
