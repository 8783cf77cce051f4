"""The project gauges an agent host keeps from its role's stored state: the PI's stages, the engineer's jobs.

The host calls :func:`observe` with each state document it stores (the JSON form,
so the roles need no hook of their own), and :func:`seed` once at start with the
stored states of the projects this replica owns, so a restarted agent does not
report a lab of zero projects until each project speaks again.
"""

from __future__ import annotations

from typing import Any

import structlog

from bus import metrics, partitions
from bus.schema import RoleDocument
from bus.store import StateStore

log = structlog.get_logger()


def observe(role: str, project: str, state: dict[str, Any] | None) -> None:
    """Count this project's stage (PI) or its jobs by state (engineer); other roles keep no such gauge."""
    if not isinstance(state, dict):
        return
    if role == "pi" and isinstance(stage := state.get("stage"), str):
        metrics.PROJECT_STAGES.set(project, [stage])
    elif role == "engineer" and isinstance(jobs := state.get("jobs"), dict):
        states = [j["state"] for j in jobs.values() if isinstance(j, dict) and isinstance(j.get("state"), str)]
        metrics.JOB_STATES.set(project, states)


async def seed(role: str, states: StateStore, replica: tuple[int, int]) -> None:
    """Observe every stored state of this role whose project falls in this replica's partitions."""
    if role not in ("pi", "engineer"):
        return
    mine = set(partitions.owned(*replica))
    for key in await states.keys(f"{role}."):
        project = key.removeprefix(f"{role}.")
        if project.startswith("_") or partitions.partition(project) not in mine:
            continue  # ``engineer._capacity`` is the capacity ledger, not a project
        try:
            raw, _ = await states.read(key)
            observe(role, project, RoleDocument.parse(raw, key).state)
        except Exception as e:  # a document this version cannot read: its project is left out of the gauge
            log.warning("metrics: state not counted", key=key, error=f"{type(e).__name__}: {e}")
