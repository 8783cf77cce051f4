"""A job: one experiment configuration over its seeds, as the engineer plans it and a runner runs it.

The engineer keeps the plan in its state, an executor starts a runner with it,
the runner reads it from ``LAB_JOB_FILE``: one model for all three, so the
field mapping is written nowhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bus.schema.base import Model


class NatsAccess(Model):
    """How a job runner reaches the bus: a credential limited to jobs."""

    url: str
    user: str | None = None
    password: str | None = None


class JobSpec(Model):
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
    gpu: int = Field(0, ge=0)  # per node
    nodes: int = Field(1, ge=1)  # >1: one distributed run over this many pods (Kubernetes JobSet), gpu on each
    network: bool = False
    resumable: bool = False  # the template checkpoints: the runner syncs LAB_CHECKPOINT_DIR to the artifact store
    term_grace_s: float = Field(20, ge=0)  # after SIGTERM, the experiment's time to checkpoint (TemplateSpec.term_grace_s)
    shm_mb: int = Field(256, ge=16)  # memory-backed /dev/shm, inside memory_mb
    disk_mb: int | None = Field(None, ge=16)  # scratch disk (ephemeral-storage); None: the executor's default
    # Filled in by the executor port when the job is submitted: a plan kept in the
    # engineer's state never holds a credential.
    nats: NatsAccess | None = None
    status_key: str | None = None  # this job's key for signing its statuses (bus/jobkeys.py)

    def env(self) -> dict[str, str]:
        """The environment that hands this job to a runner."""
        return {"LAB_JOB": self.model_dump_json()}


JobState = Literal["pending", "running", "succeeded", "failed", "missing"]


class JobPhase(Model):
    """What the executor sees of a job; ``missing`` means it never heard of it."""

    state: JobState
    reason: str = ""
    # Failed, yet part of it still runs and holds its resources (its runner died while the
    # experiment container waits for it): whoever gives up on the job should cancel it.
    leftover: bool = False
