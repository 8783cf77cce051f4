"""What `lab status` shows of a team's lab: each project's share of the capacity, the queue, and every agent replica.

Kept apart from ``services/cli.py`` so the command stays a thin wrapper.
"""

from __future__ import annotations

import json
import time
from typing import Any

from nats.js.errors import KeyNotFoundError, NoKeysError

from bus.ledger import LEDGER_KEY, Ledger

STALE_S = 20.0  # heartbeats come every 5 s; an agent silent this long has lost NATS or hung


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


async def replicas_view(kv: Any) -> list[dict[str, Any]]:
    """Every agent process's last heartbeat, marked stale when it stopped beating."""
    try:
        keys = await kv.keys()
    except NoKeysError:  # an empty bucket; a refused or lost server raises, never reads as "no agents"
        return []
    out = []
    for key in sorted(keys):
        try:
            beat = json.loads((await kv.get(key)).value or b"{}")
        except (KeyNotFoundError, ValueError):
            continue  # gone since keys() (a stopped replica), or not a heartbeat: not an agent to list
        beat["key"] = key
        beat["stale"] = time.time() - beat.get("seen", 0) > STALE_S
        out.append(beat)
    return out


def print_team(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    instances = data.get("instances") or []
    if instances:
        t = Table("instance", "state", "pid", "host", "busy/concurrency", "handled", "p50 s", "p99 s")
        for b in instances:
            state = "[red]stale[/red]" if b["stale"] else "up"
            p50 = f"{b['p50_s']:.2f}" if b.get("p50_s") is not None else "-"
            p99 = f"{b['p99_s']:.2f}" if b.get("p99_s") is not None else "-"
            t.add_row(b.get("instance", b["key"]), state, str(b.get("pid", "-")), str(b.get("host", "-")), f"{b.get('busy', 0)}/{b.get('concurrency', '-')}", str(b.get("handled", 0)), p50, p99)
        console.print(t)
    cap = data.get("capacity") or {}
    if cap.get("projects"):
        total = "unlimited" if cap["capacity"] is None else str(cap["capacity"])
        c = Table("project", f"holds ({cap['counts']})", "fair share", "waiting", title=f"capacity: {cap['used']} of {total} {cap['counts']} in use")
        for p, v in cap["projects"].items():
            c.add_row(p, str(v["held"]), "-" if v["share"] is None else str(v["share"]), "yes" if v["waiting"] else "")
        console.print(c)
