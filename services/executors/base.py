"""The seam between the engineer and wherever experiments run.

Every executor starts the same job runner (``python -m services.jobrunner``)
with the job described in the ``LAB_JOB`` environment variable; limits are
enforced by the runner and by the executor, never by the experiment. The
engineer only submits, polls, cancels and cleans up; results come back over
the bus from the runner itself.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from bus.errors import LabError

# Exit codes of the job runner, understood by Kubernetes' podFailurePolicy.
EXIT_OK = 0
EXIT_EXPERIMENT_FAILED = 3  # the experiment crashed, timed out, ran out of memory, wrote bad output: do not retry
EXIT_INFRA = 4  # the runner could not reach the bus or the object store: a retry may help


class NatsAccess(BaseModel):
    """How a job runner reaches the bus: a credential limited to jobs."""

    model_config = ConfigDict(extra="forbid")
    url: str
    user: str | None = None
    password: str | None = None


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str
    project: str
    experiment_id: str
    template: str
    bundle_object: str  # object-store name of the template tar.gz
    overrides: dict[str, Any] = {}
    seeds: list[int]
    wall_time_s: float = Field(gt=0)
    memory_mb: int = Field(ge=64)
    cpu: float = Field(1, gt=0)
    gpu: int = Field(0, ge=0)
    network: bool = False
    resumable: bool = False  # the template checkpoints: the runner syncs LAB_CHECKPOINT_DIR to the artifact store
    nats: NatsAccess

    def env(self) -> dict[str, str]:
        """The environment that hands this job to a runner."""
        return {"LAB_JOB": self.model_dump_json()}


JobState = Literal["pending", "running", "succeeded", "failed", "missing"]


class JobPhase(BaseModel):
    """What the executor sees of a job; ``missing`` means it never heard of it."""

    state: JobState
    reason: str = ""


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
