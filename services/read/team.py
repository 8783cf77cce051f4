"""What `lab status` shows of a team's lab: each project's share of the capacity, the queue, and every agent replica.

Kept apart from ``services/cli/app.py`` so the command stays a thin wrapper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bus.ledger import LEDGER_KEY, Ledger
from bus.schema import Heartbeat
from bus.store import Heartbeats


@dataclass(frozen=True)
class Replica:
    """One agent process, by its key in the agents bucket, and its last heartbeat."""

    key: str
    beat: Heartbeat
    stale: bool

    def row(self) -> dict[str, Any]:
        """The replica as `lab status --json` prints it: the heartbeat, its key, and whether it went stale."""
        return {**self.beat.model_dump(mode="json"), "key": self.key, "stale": self.stale}


async def capacity_view(states: Any) -> dict[str, Any]:
    """The lab-wide slot ledger: capacity, units used, each project's holds and share, who waits."""
    doc, _ = await states.read(LEDGER_KEY)
    ledger = Ledger.model_validate(doc) if doc else Ledger()
    projects = {h.project for h in ledger.held.values()} | set(ledger.waiting)
    return {
        "capacity": ledger.capacity,
        "counts": ledger.counts,
        "used": ledger.used(),
        "held": {j: h.model_dump() for j, h in ledger.held.items()},
        "waiting": {p: w.model_dump() for p, w in ledger.waiting.items()},
        "projects": {
            p: {"held": ledger.held_by(p), "share": None if ledger.capacity is None else round(ledger.share(p), 2), "waiting": p in ledger.waiting}
            for p in sorted(projects)
        },
    }


async def replicas_view(beats: Heartbeats) -> list[Replica]:
    """Every agent process's last heartbeat, marked stale when it stopped beating."""
    now = time.time()
    return [Replica(key, beat, beat.stale(now)) for key in await beats.keys() if (beat := await beats.get(key)) is not None]
