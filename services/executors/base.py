"""The seam between the engineer and wherever experiments run.

Every executor starts the same job runner (``python -m services.runner``)
with the job description (a 0600 file ``LAB_JOB_FILE``, a mounted per-job
Secret on Kubernetes; ``LAB_JOB`` in the runner container's environment on
Docker). Locally the runner runs the experiment in a bubblewrap sandbox; on
Docker and Kubernetes in a second container with no credential, started by
``python -m services.runner.launcher`` (``services/runner/split.py``). Limits are enforced
by the runner or launcher and by the executor, never by the experiment. The
engineer only submits, polls, cancels and cleans up; results come back over
the bus from the runner itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bus.errors import LabError
from bus.schema import JobPhase, JobSpec


@runtime_checkable
class Executor(Protocol):
    name: str

    def capacity(self) -> int | None:
        """How many jobs may run at once; None when a queue (e.g. Kueue) decides."""

    async def submit(self, job: JobSpec) -> None:
        """Start the job. Idempotent per job_id: a second submit of a known job does nothing."""

    async def poll(self, job_id: str) -> JobPhase:
        """The job's state as the executor sees it (used to catch failures the runner cannot report)."""

    async def cancel(self, job_id: str) -> None:
        """Stop the job and everything it started; no error if it is gone."""

    async def cleanup(self, project: str) -> None:
        """Remove what was created for a project's jobs (no orphans after a project ends)."""

    async def close(self) -> None:
        """Release clients; running jobs are left to finish."""


class ExecutorError(LabError, RuntimeError):
    """An executor could not do what was asked; the message names why (no cluster, forbidden, ...)."""
