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
from bus.errors import BusTimeout
from bus.retry import RetryPolicy
from bus.schema import RoleDocument
from bus.store import StateStore

log = structlog.get_logger()
# Reading the keys at start: tried again on timeouts (the bus is busiest while every agent starts), then given up.
STARTUP_READ = RetryPolicy(attempts=4, budget_s=30.0, base_wait_s=1.0, max_wait_s=5.0, jitter=0.3, event="metrics_seed_retry")


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
    """Observe every stored state of this role whose project falls in this replica's partitions.

    Run beside the agent's work, never before it: a failure (the bus slow while every agent starts) leaves the
    gauges to fill as projects speak, and is logged, rather than keeping the agent from starting.
    """
    if role not in ("pi", "engineer"):
        return
    try:
        keys = await STARTUP_READ.run(lambda: states.keys(f"{role}."), (BusTimeout, TimeoutError))
    except Exception as e:
        log.warning("metrics: stored states not counted", role=role, error=f"{type(e).__name__}: {e}")
        return
    mine = set(partitions.owned(*replica))
    tally = metrics.PROJECT_STAGES if role == "pi" else metrics.JOB_STATES
    for key in keys:
        project = key.removeprefix(f"{role}.")
        if project.startswith("_") or partitions.partition(project) not in mine:
            continue  # ``engineer._capacity`` is the capacity ledger, not a project
        try:
            raw, _ = await states.read(key)
            if project not in tally.projects:  # a message handled meanwhile told a newer state
                observe(role, project, RoleDocument.parse(raw, key).state)
        except Exception as e:  # a document this version cannot read, or the bus slow: its project waits for its next message
            log.warning("metrics: state not counted", key=key, error=f"{type(e).__name__}: {e}")
