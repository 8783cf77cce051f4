"""The engineer's jobs port over an executor: the runner's bus access is added here, at submit.

``agents/jobs.Jobs`` is the role's side. The plan in the engineer's state has
no credential (``JobSpec.nats`` None); the copy an executor starts a runner
with carries the runner's NATS access, which only this process holds, and the
job's own key for signing its statuses (``JobSpec.status_key``, bus/jobkeys.py),
derived from the lab job secret, which only the engineers hold. When the lab
runs the auth callout (``LAB_RUNNER_USER=job``), that key is also the
runner's NATS password, for the user ``job.<project>.<job>`` the callout
admits with that job's permissions alone.
"""

from __future__ import annotations

import platform
from importlib import metadata

import structlog

from bus.jobkeys import JobKeys, new_secret
from bus.ledger import SlotLedger
from bus.permissions import JOB_USER, job_user
from bus.provenance import packages_sha256
from bus.resultcache import ResultCache
from bus.schema import JobSpec, NatsAccess
from services.executors.base import Executor


def runner_access(nats: NatsAccess | None, spec: JobSpec, key: str) -> NatsAccess | None:
    """The bus access a job's runner gets: its own user when the lab runs the auth callout, else the shared one."""
    if nats is not None and nats.user == JOB_USER:
        # `lab up` (or the Deployment) says runners get per-job users (services/auth/callout.py):
        # the job's key, which signs its statuses, is also its password.
        return nats.model_copy(update={"user": job_user(spec.project, spec.job_id), "password": key})
    return nats


def ledger_for(executor: Executor, states: object) -> SlotLedger:
    """The lab-wide capacity ledger in the state bucket as this executor counts it: GPUs where it has them, else slots.

    The engineer's (``ExecutorJobs.open_ledger``): every project's runs, evolve projects' candidates included, count alike.
    """
    gpus = getattr(getattr(executor, "settings", None), "gpus", None)
    return SlotLedger(states, executor.capacity(), counts="gpus" if gpus else "slots")


class ExecutorJobs:
    """``agents.engineer.jobs.Jobs`` on an executor, with the lab's slot ledger once the host has opened the bus."""

    def __init__(self, executor: Executor, runner_nats: NatsAccess | None, job_secret: str | None = None) -> None:
        self.executor = executor
        self.runner_nats = runner_nats
        if job_secret is None:
            # This process's own: fine for one engineer; replicas must share LAB_JOB_SECRET(_FILE) to accept each other's jobs.
            structlog.get_logger().warning("no lab job secret (LAB_JOB_SECRET_FILE): job statuses are checked with a key only this process knows")
            job_secret = new_secret()
        self.keys = JobKeys(job_secret)
        self._ledger: SlotLedger | None = None
        self._results: ResultCache | None = None
        self._runtime = ""

    @property
    def ledger(self) -> SlotLedger | None:
        return self._ledger

    def open_ledger(self, states: object) -> SlotLedger:
        """The lab-wide capacity ledger in the state bucket, counting GPUs where the executor has them."""
        self._ledger = ledger_for(self.executor, states)
        return self._ledger

    @property
    def results(self) -> ResultCache | None:
        return self._results

    def open_results(self, results: ResultCache) -> ResultCache:
        self._results = results
        return results

    def runtime(self) -> str:
        """The executor's image (Docker, Kubernetes), else the Python the local runner starts and its packages.

        What the engineer knows at plan time: a template's own requirements are in its bundle (its code hash).
        """
        if not self._runtime:
            image = getattr(getattr(self.executor, "settings", None), "image", "") or ""
            if image:
                self._runtime = f"image {image}"
            else:
                packages = {str(d.metadata["Name"]).lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}
                self._runtime = f"python {platform.python_version()} packages {packages_sha256(packages)}"
        return self._runtime

    def capacity(self) -> int | None:
        return self.executor.capacity()

    def access(self, spec: JobSpec, key: str) -> NatsAccess | None:
        return runner_access(self.runner_nats, spec, key)

    async def submit(self, spec: JobSpec) -> None:
        key = self.keys.key(spec.project, spec.job_id)
        await self.executor.submit(spec.model_copy(update={"nats": self.access(spec, key), "status_key": key}))

    async def cancel(self, job_id: str) -> None:
        await self.executor.cancel(job_id)

    async def cleanup(self, project: str) -> None:
        await self.executor.cleanup(project)
