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


def print_team(console: Any, instances: list[Replica], cap: dict[str, Any]) -> None:
    from rich.table import Table

    if instances:
        t = Table("instance", "state", "pid", "host", "busy/concurrency", "handled", "p50 s", "p99 s")
        for r in instances:
            b = r.beat
            state = "[red]stale[/red]" if r.stale else "up"
            p50 = f"{b.p50_s:.2f}" if b.p50_s is not None else "-"
            p99 = f"{b.p99_s:.2f}" if b.p99_s is not None else "-"
            t.add_row(b.instance or r.key, state, str(b.pid), b.host or "-", f"{b.busy}/{b.concurrency}", str(b.handled), p50, p99)
        console.print(t)
    if cap.get("projects"):
        total = "unlimited" if cap["capacity"] is None else str(cap["capacity"])
        c = Table("project", f"holds ({cap['counts']})", "fair share", "waiting", title=f"capacity: {cap['used']} of {total} {cap['counts']} in use")
        for p, v in cap["projects"].items():
            c.add_row(p, str(v["held"]), "-" if v["share"] is None else str(v["share"]), "yes" if v["waiting"] else "")
        console.print(c)
