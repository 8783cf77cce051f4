"""The engineer's jobs port over an executor: the runner's bus access is added here, at submit.

``agents/jobs.Jobs`` is the role's side. The plan in the engineer's state has
no credential (``JobSpec.nats`` None); the copy an executor starts a runner
with carries the runner's NATS access, which only this process holds.
"""

from __future__ import annotations

from bus.ledger import SlotLedger
from bus.schema import JobSpec, NatsAccess
from services.executors.base import Executor


class ExecutorJobs:
    """``agents.jobs.Jobs`` on an executor, with the lab's slot ledger once the host has opened the bus."""

    def __init__(self, executor: Executor, runner_nats: NatsAccess | None) -> None:
        self.executor = executor
        self.runner_nats = runner_nats
        self._ledger: SlotLedger | None = None

    @property
    def ledger(self) -> SlotLedger | None:
        return self._ledger

    def open_ledger(self, states: object) -> SlotLedger:
        """The lab-wide capacity ledger in the state bucket, counting GPUs where the executor has them."""
        gpus = getattr(getattr(self.executor, "settings", None), "gpus", None)
        self._ledger = SlotLedger(states, self.executor.capacity(), counts="gpus" if gpus else "slots")
        return self._ledger

    def capacity(self) -> int | None:
        return self.executor.capacity()

    async def submit(self, spec: JobSpec) -> None:
        await self.executor.submit(spec.model_copy(update={"nats": self.runner_nats}))

    async def cancel(self, job_id: str) -> None:
        await self.executor.cancel(job_id)

    async def cleanup(self, project: str) -> None:
        await self.executor.cleanup(project)
