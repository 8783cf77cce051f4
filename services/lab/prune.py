"""Retention for the artifact store (`lab prune`): what a finished project no longer needs goes after an age.

Three kinds go:

- a checkpoint (``<project>/checkpoints/<experiment>.tar.gz``, services/runner/checkpoint.py) of a
  finished project, after ``checkpoint_age_s``: it exists so a job that is evicted or killed can
  resume; once its project has its decision nothing resumes it, and it is usually the largest object
  the project wrote;
- the outputs (``<project>/runs/<job>/...``) of a finished project's failed jobs, after
  ``failed_age_s``: a job failed as the engineer reported it to the PI (``ExperimentResult``, read on
  the engineer's own subject, so no other sender can name one). `lab export` lists them as pruned
  in ``export.json`` (the object's delete marker stays in the store);
- the chunks of an object whose meta record was never written (a put killed halfway): a chunk
  subject ``$O.<bucket>.C.<nuid>`` no live object names, whose newest chunk is older than
  ``orphan_grace_s``, so a put still in flight (its meta comes right after its last chunk) is never hit.

Everything else a project wrote (results, figures, papers, the export's inputs) is kept: `lab export`
must give the same bytes tomorrow. Run as the lab's admin (only it may purge), by hand or from the
backup CronJob's component; ``dry_run`` lists what would go. An object's age is its store ``mtime``;
a project still running keeps everything whatever its age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bus import subjects
from bus.client import Bus
from bus.permissions import convo_refusal
from bus.replay import read
from bus.schema import ExperimentResult
from bus.schema.constants import ARTIFACTS_BUCKET
from bus.snapshot import artifact_infos, chunk_prefix, chunk_subjects, delete_artifact, last_written, purge_subject
from services.read.projects import project_states

CHECKPOINTS = "/checkpoints/"
DAY_S = 86400.0
ORPHAN_GRACE_S = 3600.0  # a put's meta record follows its last chunk within seconds (a job's commit times out at 30 s)

Kind = Literal["checkpoint", "failed output", "orphan chunks"]


@dataclass(frozen=True)
class Pruned:
    name: str  # the object's name; for orphan chunks, their subject
    size: int  # bytes (0 for orphan chunks: the server counts them, ``chunks``)
    age_s: float
    kind: Kind = "checkpoint"
    chunks: int = 0


def _age_s(written_at: Any, now: datetime) -> float | None:
    """Seconds since ``written_at`` (an ISO time), or None when it is no readable time (then it is kept)."""
    try:
        written = datetime.fromisoformat(str(written_at))
    except (TypeError, ValueError):
        return None
    if written.tzinfo is None:
        written = written.replace(tzinfo=UTC)
    return (now - written).total_seconds()


async def failed_jobs(bus: Bus, project: str) -> set[str]:
    """The jobs of ``project`` the engineer reported failed (and never succeeded), from the conversation."""
    failed: set[str] = set()
    succeeded: set[str] = set()
    async for entry in read(bus, subjects.convo(project, "engineer", "pi")):
        env = entry.envelope
        if env is None or not isinstance(env.body, ExperimentResult) or convo_refusal(entry.subject, env) is not None:
            continue
        for run in env.body.runs:
            if not run.reused_from:  # a reused run's files are the project's that ran it
                (failed if run.status == "failed" else succeeded).add(run.job_id)
    return failed - succeeded


def _kind(name: str, finished: set[str], failed: dict[str, set[str]]) -> Kind | None:
    """What ``name`` is to retention: a finished project's checkpoint, a failed job's output, or nothing (kept)."""
    project, _, rest = name.partition("/")
    if project not in finished:
        return None
    if f"/{rest}".startswith(CHECKPOINTS):
        return "checkpoint"
    parts = rest.split("/", 2)
    return "failed output" if len(parts) == 3 and parts[0] == "runs" and parts[1] in failed.get(project, set()) else None


async def prune(
    bus: Bus, *, checkpoint_age_s: float, failed_age_s: float = 7 * DAY_S, orphan_grace_s: float = ORPHAN_GRACE_S,
    dry_run: bool = False, now: datetime | None = None,
) -> list[Pruned]:
    """Delete what finished projects no longer need, and orphaned chunks; return what went (or would)."""
    finished = {p.project for p in await project_states(bus) if p.finished}
    failed = {p: jobs for p in sorted(finished) if (jobs := await failed_jobs(bus, p))}
    moment = now or datetime.now(UTC)
    limits: dict[Kind, float] = {"checkpoint": checkpoint_age_s, "failed output": failed_age_s}
    chunks = await chunk_subjects(bus, ARTIFACTS_BUCKET)  # read before the objects: a put that commits meanwhile is named by them
    infos = await artifact_infos(bus)
    out = []
    for info in infos:
        kind = None if info.deleted else _kind(str(info.name), finished, failed)
        age = _age_s(info.mtime, moment) if kind else None
        if kind is None or age is None or age < limits[kind]:
            continue
        if not dry_run:
            await delete_artifact(bus, str(info.name))  # its chunks go with it
        out.append(Pruned(name=str(info.name), size=int(info.size or 0), age_s=age, kind=kind))
    return out + await _orphans(bus, chunks, infos, orphan_grace_s, dry_run, moment)


async def prune_orphans(bus: Bus, *, grace_s: float, dry_run: bool = False, now: datetime | None = None) -> list[Pruned]:
    """Purge the chunk subjects no live object names whose newest chunk is ``grace_s`` old or more."""
    chunks = await chunk_subjects(bus, ARTIFACTS_BUCKET)  # read before the objects: a put that commits meanwhile is named by them
    return await _orphans(bus, chunks, await artifact_infos(bus), grace_s, dry_run, now or datetime.now(UTC))


async def _orphans(bus: Bus, chunks: dict[str, int], infos: list[Any], grace_s: float, dry_run: bool, now: datetime) -> list[Pruned]:
    """Of ``chunks`` (subject -> count, read before ``infos``), those no live object of ``infos`` names, purged after ``grace_s``."""
    stream, prefix = f"OBJ_{ARTIFACTS_BUCKET}", chunk_prefix(ARTIFACTS_BUCKET)
    named = {str(i.nuid) for i in infos if not i.deleted}
    out = []
    for subject, count in sorted(chunks.items()):
        if subject.removeprefix(prefix) in named:
            continue
        age = _age_s(await last_written(bus, stream, subject), now)
        if age is None or age < grace_s:
            continue
        if not dry_run:
            await purge_subject(bus, stream, subject)
        out.append(Pruned(name=subject, size=0, age_s=age, kind="orphan chunks", chunks=int(count)))
    return out
