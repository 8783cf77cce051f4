"""The engineer's ports: where its jobs run and how much of the lab they may take.

The role sees these Protocols only; ``services/host/jobs.py`` implements them over
an executor (local, docker, kubernetes) and the lab's slot ledger
(``bus/ledger``), and ``services/host/wiring.py`` hands them to the engineer.
``plan_job`` is the one place a template and a request become a ``JobSpec``:
the engineer plans with it and `lab job render` shows what it plans.
"""

from __future__ import annotations

from typing import Any, Protocol

from bus.resultcache import Found
from bus.schema import JobSpec, JobStatus, TemplateSpec


class Capacity(Protocol):
    """The lab-wide pool of slots (CPU slots, or GPUs on a cluster), shared fairly between projects."""

    counts: str  # what a unit is: "slots" or "gpus"

    def units_of(self, gpu: int) -> int: ...
    async def acquire(self, project: str, job_id: str, units: int) -> bool: ...
    async def release(self, job_ids: list[str]) -> None: ...
    async def forget(self, project: str) -> None: ...


class Results(Protocol):
    """The lab-wide result cache (``bus/resultcache.ResultCache``): look up, claim, store and release a run's key."""

    async def lookup(self, key: str, mine: str) -> Found: ...
    async def claim(self, key: str, owner: str, mine: str, stale_after_s: float) -> Found: ...
    async def store_result(self, key: str, owner: str, status: JobStatus) -> None: ...
    async def release(self, key: str, mine: str) -> None: ...


class Jobs(Protocol):
    """Where the engineer's jobs run.

    ``submit`` takes the plan as the engineer keeps it (``JobSpec.nats`` None) and
    gives the runner its bus access itself: a credential never sits in state.
    A second submit of a known job id is done already, not a second run.
    """

    @property
    def ledger(self) -> Capacity | None:
        """The lab-wide slot ledger; None: the engineer counts this project's own jobs."""
        ...

    @property
    def results(self) -> Results | None:
        """The lab's result cache; None: every run runs (no bus opened, as in a unit test)."""
        ...

    def runtime(self) -> str:
        """What the executor runs experiments with, for the result cache's key: its image, or this interpreter and packages."""
        ...

    def capacity(self) -> int | None: ...
    async def submit(self, spec: JobSpec) -> None: ...
    async def cancel(self, job_id: str) -> None: ...
    async def cleanup(self, project: str) -> None: ...


def plan_job(
    spec: TemplateSpec,
    profile: str | None,
    *,
    job_id: str,
    project: str,
    experiment_id: str,
    bundle_object: str,
    seeds: list[int],
    template: str | None = None,
    changes: dict[str, Any] | None = None,
) -> JobSpec:
    """A run of the template under a profile: the profile's and the baseline's knobs, then ``changes``, checked.

    The time budget is a run's of the template's own ``seeds``; a job with more (a review's seeds ask, topping an
    arm up in one run) gets it in proportion, so the limit keeps meaning "this run hangs", not "it ran more seeds".
    Raises ``TemplateError`` for an unknown profile or a knob out of the template's space.
    """
    chosen = spec.profile(profile)
    overrides = spec.check_overrides({**chosen.overrides, **spec.baseline, **(changes or {})})
    return JobSpec(
        job_id=job_id,
        project=project,
        experiment_id=experiment_id,
        template=template or spec.name,
        bundle_object=bundle_object,
        overrides=overrides,
        seeds=seeds,
        wall_time_s=round(chosen.time_budget_s * max(1.0, len(seeds) / spec.seeds), 3),
        memory_mb=chosen.resources.memory_mb,
        cpu=chosen.resources.cpu,
        gpu=chosen.resources.gpu,
        nodes=chosen.resources.nodes,
        shm_mb=chosen.resources.shm_mb,
        disk_mb=chosen.resources.disk_mb,
        term_grace_s=spec.term_grace_s,
        network=spec.network,
        resumable=spec.resumable,
    )
