"""Retention for the artifact store: the checkpoints of finished projects go after an age (`lab prune`).

A checkpoint (``<project>/checkpoints/<experiment>.tar.gz``, services/runner/checkpoint.py) exists so a
job that is evicted or killed can resume; once its project has its decision nothing resumes it, and it
is usually the largest object the project wrote. Everything else a project wrote (results, figures,
papers, the export's inputs) is kept: `lab export` must give the same bytes tomorrow.

Run as the lab's admin (only it may purge an object's chunks), by hand or from the backup CronJob's
component; ``dry_run`` lists what would go. An object's age is its store ``mtime``; a project still
running keeps every checkpoint whatever its age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bus.client import Bus
from bus.snapshot import artifact_infos, delete_artifact
from services.read.projects import project_states

CHECKPOINTS = "/checkpoints/"


@dataclass(frozen=True)
class Pruned:
    name: str
    size: int
    age_s: float


def _age_s(info: Any, now: datetime) -> float | None:
    """Seconds since the object was written, or None when the store gave no readable time (then it is kept)."""
    try:
        written = datetime.fromisoformat(str(info.mtime))
    except (TypeError, ValueError):
        return None
    if written.tzinfo is None:
        written = written.replace(tzinfo=UTC)
    return (now - written).total_seconds()


async def prune(bus: Bus, *, checkpoint_age_s: float, dry_run: bool = False, now: datetime | None = None) -> list[Pruned]:
    """Delete the checkpoints of finished projects older than ``checkpoint_age_s``; return what went (or would)."""
    finished = {p.project for p in await project_states(bus) if p.finished}
    infos = await artifact_infos(bus)
    moment = now or datetime.now(UTC)
    out = []
    for info in infos:
        project, _, rest = str(info.name).partition("/")
        if info.deleted or project not in finished or not f"/{rest}".startswith(CHECKPOINTS):
            continue
        age = _age_s(info, moment)
        if age is None or age < checkpoint_age_s:
            continue
        if not dry_run:
            await delete_artifact(bus, str(info.name))
        out.append(Pruned(name=str(info.name), size=int(info.size or 0), age_s=age))
    return out
