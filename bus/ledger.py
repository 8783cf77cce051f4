"""One capacity for the whole lab: a slot ledger in the state bucket, shared fairly between projects.

Each engineer handler holds only its own project's state, and several engineer
processes (replicas) and lanes dispatch at once, so counting jobs in a
project's state oversubscribes the machine as soon as two projects run. The
ledger is one KV document (``engineer._capacity``) changed only with
compare-and-set: every hold names its job, so taking and giving back are
idempotent (a redelivered handler takes the same slot again, not a second
one). Units are slots (one per job) on the local executor and GPUs (each
job's request) where the executor counts GPUs.

Fair share: a project may always take free units while nobody else waits;
while others wait it may hold at most its share (capacity over the projects
that hold or wait), so a busy project cannot starve a newcomer. A waiting
project is recorded with its next job, and the engineer host wakes it when
its turn comes (``services/host/agent.py``).

Every taker is an engineer: an evolve project's candidates are its experiments
like any other's. (Ledgers stored by labs that also leased holds to `lab evolve
--nats` carry a ``lease_until`` in each entry; it is read and dropped.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from bus import metrics
from bus.errors import StateConflict
from bus.retry import RetryPolicy

log = structlog.get_logger("ledger")

T = TypeVar("T")

# Every engineer replica and lane writes the one ledger document: a lost compare-and-set
# is the normal course, retried at once with a wait growing 10 ms a try up to 0.2 s, 200 tries in all.
CONTENTION = RetryPolicy(attempts=200, budget_s=None, base_wait_s=0.01, max_wait_s=0.2, linear=True, event="ledger_conflict", level=None)

LEDGER_KEY = "engineer._capacity"  # under the engineer's own keys; "_capacity" is not a project id `lab run` makes


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _without_lease(cls, data: Any) -> Any:
        """An entry stored before leases went: its ``lease_until`` (null for every engineer's) is dropped."""
        if isinstance(data, dict) and "lease_until" in data:
            return {k: v for k, v in data.items() if k != "lease_until"}
        return data


class Hold(_Entry):
    project: str
    units: int
    since: float


class Waiter(_Entry):
    job_id: str  # the project's next queued job (the wake-up goes to it)
    units: int
    since: float


class Ledger(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity: int | None = None  # None: unlimited (a queue such as Kueue decides)
    counts: str = "slots"  # or "gpus"
    held: dict[str, Hold] = {}  # job id -> hold
    waiting: dict[str, Waiter] = {}  # project -> its next job

    def used(self) -> int:
        return sum(h.units for h in self.held.values())

    def held_by(self, project: str) -> int:
        return sum(h.units for h in self.held.values() if h.project == project)

    def share(self, project: str) -> float:
        """The project's fair share of the capacity, among the projects that hold or wait."""
        if self.capacity is None:
            return math.inf
        active = {h.project for h in self.held.values()} | set(self.waiting) | {project}
        return self.capacity / len(active)

    def may_take(self, project: str, units: int) -> bool:
        if self.capacity is None:
            return True
        if self.used() + units > self.capacity:
            return False
        if not any(p != project for p in self.waiting):
            return True  # nobody else waits: free units are anyone's
        mine = self.held_by(project)
        # While others wait: up to the fair share; a project holding nothing always gets its turn
        # (so a job bigger than the share is not starved).
        return mine == 0 or mine + units <= self.share(project)


class SlotLedger:
    """The ledger document with compare-and-set updates; ``states`` is a ``bus.store.StateStore``."""

    def __init__(self, states: Any, capacity: int | None, counts: str = "slots"):
        self.states = states
        self.capacity = capacity
        self.counts = counts

    def units_of(self, gpu: int) -> int:
        """What one job takes: one slot, or its GPUs where GPUs are counted (at least one)."""
        return max(1, gpu) if self.counts == "gpus" else 1

    async def read(self) -> tuple[Ledger, int]:
        ledger, _, revision = await self._read()
        return ledger, revision

    async def _read(self) -> tuple[Ledger, dict[str, Any] | None, int]:
        """The ledger with this process's capacity, the document as stored (None if unreadable), and its revision.

        The co-PI may write this key (`lab evolve --nats`), so a document that is not a ledger is
        possible: it is read as an empty one and replaced at the next change, rather than failing
        every engineer's dispatch. Holds it listed are gone; their jobs still end and report.
        """
        doc, revision = await self.states.read(LEDGER_KEY)
        try:
            ledger = Ledger.model_validate(doc) if doc else Ledger()
        except ValidationError as e:
            log.warning("the capacity ledger is not a ledger; starting it afresh", key=LEDGER_KEY, error=str(e).splitlines()[0])
            ledger, doc = Ledger(), None
        return ledger.model_copy(update={"capacity": self.capacity, "counts": self.counts}), doc, revision

    async def _update(self, change: Callable[[Ledger], T]) -> T:
        """Apply ``change`` with compare-and-set, retrying on conflict; a change that leaves the document as stored writes nothing."""

        async def once() -> T:
            ledger, stored, revision = await self._read()
            result = change(ledger)
            if stored is not None and ledger.model_dump(mode="json") == Ledger.model_validate(stored).model_dump(mode="json"):
                return result  # a poller's repeated refusal must not bump the revision (each would be a new wake-up)
            await self.states.write(LEDGER_KEY, ledger.model_dump(mode="json"), revision)
            metrics.capacity(self.counts, ledger.used(), ledger.capacity)  # as this process last wrote it
            return result

        try:
            return await CONTENTION.run(once, (StateConflict,))
        except StateConflict:
            raise StateConflict(f"{LEDGER_KEY}: too much contention") from None

    async def acquire(self, project: str, job_id: str, units: int) -> bool:
        """Take ``units`` for the job (True), or record the project as waiting with it (False)."""

        def change(ledger: Ledger) -> bool:
            if job_id in ledger.held:
                return True  # a redelivered handler: the same hold, not a second one
            now = time.time()
            if ledger.may_take(project, units):
                ledger.held[job_id] = Hold(project=project, units=units, since=now)
                ledger.waiting.pop(project, None)
                return True
            ledger.waiting[project] = Waiter(job_id=job_id, units=units, since=now)
            return False

        return await self._update(change)

    async def release(self, job_ids: list[str]) -> None:
        def change(ledger: Ledger) -> None:
            for j in job_ids:
                ledger.held.pop(j, None)

        await self._update(change)

    async def done_waiting(self, project: str) -> None:
        def change(ledger: Ledger) -> None:
            ledger.waiting.pop(project, None)

        await self._update(change)

    async def forget(self, project: str) -> None:
        """The project is over: give back everything it held and stop waiting."""

        def change(ledger: Ledger) -> None:
            ledger.waiting.pop(project, None)
            for j in [j for j, h in ledger.held.items() if h.project == project]:
                ledger.held.pop(j)

        await self._update(change)

    async def reconcile(self, active: set[str], queued: dict[str, set[str]], grace_s: float = 30.0) -> None:
        """Drop holds of jobs no project runs and waiters with nothing queued (left by a handler that died for good).

        ``active``: job ids dispatched/pending/running in any project's state; ``queued``: project -> queued job ids.
        The grace covers a handler that took a slot and has not stored its state yet.
        """
        now = time.time()

        def stale_hold(j: str, h: Hold) -> bool:
            return j not in active and now - h.since > grace_s

        def stale_wait(p: str, w: Waiter) -> bool:
            return w.job_id not in queued.get(p, set()) and now - w.since > grace_s

        def change(ledger: Ledger) -> None:
            for j, h in list(ledger.held.items()):
                if stale_hold(j, h):
                    ledger.held.pop(j)
            for p, w in list(ledger.waiting.items()):
                if stale_wait(p, w):
                    ledger.waiting.pop(p)

        ledger, _ = await self.read()
        if any(stale_hold(j, h) for j, h in ledger.held.items()) or any(stale_wait(p, w) for p, w in ledger.waiting.items()):
            await self._update(change)
