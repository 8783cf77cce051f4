"""The lab's result cache: a run whose code, configuration, seeds and runtime were already run is not run again.

Content-addressed and lab-wide: one KV bucket (``lab_results``) maps a run's key
(``run_key``) to an entry, either ``running`` (a claim: some project's job is
running it now) or ``done`` (the succeeded run's ``JobStatus``: final info,
environment, artifacts, wall time). Only succeeded runs are stored; a failed or
cancelled run deletes its claim.

Granularity: one key per *job*, i.e. per (code, configuration, seed list,
runtime, hardware class). A job runs its whole seed list, so a request for
seeds [0, 1, 2] does not hit a run of seeds [0, 1]; confirmation runs on fresh
seeds are never hits, by construction.

Single-flight: the first engineer to want a key claims it with a KV ``create``
(atomic: it fails where the key exists), so of two identical requests at once,
across projects and engineer replicas, one runs and the other waits. A waiter
keeps its job queued with the owner's name; the engineer's job watch
(services/host/job_watch.py) re-checks waiting jobs' entries and wakes their
project (a ``JobStatus(state="queued")`` on the jobs stream, the path capacity
wake-ups take) when the entry is done, gone, or stale. A claim older than its
``stale_after_s`` (twice the job's wall time plus a margin, from when it was
made) belongs to a crashed lab: the next engineer to look takes it over.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict

from bus.client import Bus
from bus.errors import StateConflict, translated
from bus.schema.constants import RESULTS_BUCKET
from bus.schema.messages import JobStatus
from bus.store import StateStore

KEY_VERSION = 1  # bump when what the key covers changes: older entries then simply miss
STALE_MARGIN_S = 300.0  # a claim is stale after twice its job's wall time plus this (queueing, a slow start)
CLAIM_TRIES = 8  # lost compare-and-sets in a row before a claim gives up (and the job waits for the watch)


def run_key(*, code_sha256: str, overrides: Mapping[str, Any], seeds: Sequence[int], runtime: str, hardware: str = "") -> str:
    """sha256 of what determines a job's result: its code, effective knobs, seed list, runtime and hardware class.

    ``code_sha256``: the bundle's files after any code edit (``bus.provenance.tar_sha256``); ``overrides``: the
    JobSpec's (profile, then baseline, then the idea's changes); ``seeds``: the job's seed list, in order;
    ``runtime``: the container image, or the local interpreter's version and packages; ``hardware``: the
    hardware class, "" unless the template's results depend on it.
    """
    doc = {"v": KEY_VERSION, "code": code_sha256, "config": dict(overrides), "seeds": list(seeds), "runtime": runtime, "hardware": hardware}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def owner_of(project: str, experiment_id: str, job_id: str) -> str:
    """Who ran (or runs) a cached result: ``<project>/<experiment>/<job>``; RunRecord.reused_from names it."""
    return f"{project}/{experiment_id}/{job_id}"


class CacheEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["running", "done"]
    owner: str  # <project>/<experiment>/<job>
    since: float  # when claimed (running) or stored (done), wall clock
    stale_after_s: float = 0.0  # running: after this long the claim may be taken over
    status: JobStatus | None = None  # done: the succeeded run's status

    def stale(self, now: float | None = None) -> bool:
        return self.state == "running" and (now or time.time()) - self.since > self.stale_after_s


@dataclass(frozen=True)
class Found:
    """What a look-up found: ``hit`` (reuse ``entry``), ``wait`` (``entry`` is another's live claim) or ``run``."""

    kind: Literal["hit", "wait", "run"]
    entry: CacheEntry | None = None


def _verdict(entry: CacheEntry | None, mine: str) -> Found | None:
    """Hit or wait where the entry decides it; None: this caller may run (nothing there, its own claim, or a stale one)."""
    if entry is None:
        return None
    if entry.state == "done" and entry.status is not None:
        return Found("hit", entry)
    if entry.state == "running" and not entry.owner.startswith(mine) and not entry.stale():
        return Found("wait", entry)
    return None


class ResultCache:
    """The ``lab_results`` bucket. ``mine`` arguments are an owner prefix, ``<project>/<experiment>/``: any attempt of it."""

    def __init__(self, kv: Any):
        self.kv = kv
        self.store = StateStore(kv)

    @classmethod
    @translated
    async def open(cls, bus: Bus) -> ResultCache:
        return cls(await bus.js.key_value(RESULTS_BUCKET))

    async def read(self, key: str) -> tuple[CacheEntry | None, int]:
        """The entry (None if absent, deleted, or not an entry) and its revision."""
        doc, revision = await self.store.read(key)
        try:
            return (CacheEntry.model_validate(doc) if doc else None), revision
        except ValueError:
            return None, revision  # not ours to read: treated as absent, replaced by the next claim

    async def lookup(self, key: str, mine: str) -> Found:
        """Hit, wait, or run; a read only (``claim`` takes the key)."""
        entry, _ = await self.read(key)
        return _verdict(entry, mine) or Found("run")

    async def claim(self, key: str, owner: str, mine: str, stale_after_s: float) -> Found:
        """Take the key for ``owner`` (``run``), unless it is done (``hit``) or another's live claim (``wait``).

        Atomic across engineers: an absent key is taken with KV create, a stale or own earlier claim with
        compare-and-set on its revision; losing either re-reads. Own claim already there (a redelivered
        handler): ``run`` without writing.
        """
        for _ in range(CLAIM_TRIES):
            entry, revision = await self.read(key)
            if (found := _verdict(entry, mine)) is not None:
                return found
            if entry is not None and entry.owner == owner and entry.state == "running":
                return Found("run", entry)
            claim = CacheEntry(state="running", owner=owner, since=time.time(), stale_after_s=stale_after_s)
            try:
                await self.store.write(key, claim.model_dump(mode="json"), revision)
                return Found("run", claim)
            except StateConflict:
                continue
        entry, _ = await self.read(key)
        return _verdict(entry, mine) or Found("wait", entry)

    async def store_result(self, key: str, owner: str, status: JobStatus) -> None:
        """A succeeded run's status under its key (whoever claimed it: a done entry is as good as any)."""
        entry = CacheEntry(state="done", owner=owner, since=time.time(), status=status)
        await self._put(key, entry)

    @translated
    async def _put(self, key: str, entry: CacheEntry) -> None:
        await self.kv.put(key, entry.model_dump_json().encode())

    @translated
    async def release(self, key: str, mine: str) -> None:
        """Delete this experiment's claim (its run failed, was cancelled, or its project ended); anyone else's stays."""
        entry, revision = await self.read(key)
        if entry is None or entry.state != "running" or not entry.owner.startswith(mine):
            return
        try:
            await self.kv.delete(key, last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError, APIError):
            pass  # changed meanwhile: no longer this claim to delete
