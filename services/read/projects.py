"""What `lab status`, `lab say` and the web view read from the bus, and the one thing they write: a co-PI note.

One place, so the terminal and the browser show the same projects and speak
into them the same way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bus import subjects
from bus.client import Bus
from bus.errors import LabError
from bus.schema import (
    ROLES,
    CoPINote,
    CoPINoteMsg,
    EngineerView,
    Envelope,
    JobView,
    ProjectApproval,
    ProjectView,
    RoleDocument,
    derive_id,
)
from bus.store import StateStore


class NoteRefused(LabError, ValueError):
    """A co-PI note that cannot be sent (no such project or role, empty text); the message is one line."""


async def project_docs(bus: Bus) -> list[dict[str, Any]]:
    """Every project's state exactly as the PI stored it, oldest key first: what `lab status --json` prints."""
    states = await StateStore.open(bus)
    out = []
    for key in await states.keys("pi."):
        raw, _ = await states.read(key)
        doc = RoleDocument.parse(raw, key)
        if doc.state:
            out.append(doc.state)
    return out


async def project_states(bus: Bus) -> list[ProjectView]:
    """Every project's state as the PI keeps it (key ``pi.<project>``), oldest key first."""
    return [ProjectView.model_validate(d) for d in await project_docs(bus)]


async def project_state(bus: Bus, project: str) -> ProjectView | None:
    """One project's state, or None when the PI never stored one."""
    states = await StateStore.open(bus)
    key = f"pi.{subjects.token(project, 'project')}"
    raw, _ = await states.read(key)
    state = RoleDocument.parse(raw, key).state
    return ProjectView.model_validate(state) if state else None


@dataclass(frozen=True)
class ActiveJob:
    """A job an engineer has in flight, with the project whose engineer state holds it."""

    project: str
    job: JobView

    def row(self) -> dict[str, str]:
        """The job as `lab status --json` prints it."""
        j = self.job
        return {"project": self.project, "job": j.job_id, "experiment": j.experiment_id, "state": j.state, "reason": j.reason}


async def active_jobs(bus: Bus) -> list[ActiveJob]:
    """Jobs the engineers have in flight, across projects."""
    states = await StateStore.open(bus)
    jobs: list[ActiveJob] = []
    for key in await states.keys("engineer."):
        raw, _ = await states.read(key)
        engineer = EngineerView.model_validate(RoleDocument.parse(raw, key).state or {})
        jobs.extend(ActiveJob(key.split(".", 1)[1], j) for j in engineer.active())
    return jobs


def running_project(projects: list[ProjectView], named: str | None) -> str:
    """The project a note is for: the one named, or the only one running."""
    names = [p.project for p in projects]
    target = named
    if target is None:
        running = [p.project for p in projects if not p.finished]
        if len(running) != 1:
            raise NoteRefused(f"{'no project is running' if not running else 'several projects run: ' + ', '.join(running)}; name one with --project")
        target = running[0]
    try:
        subjects.token(target, "project")
    except ValueError as e:
        raise NoteRefused(str(e)) from None
    if target not in names:
        raise NoteRefused(f"unknown project {target!r}" + (f"; known: {', '.join(names)}" if names else ""))
    return target


async def send_note(bus: Bus, project: str, text: str, to: str = "pi") -> CoPINote:
    """Publish a co-PI note to ``to`` in ``project`` (which the caller has checked exists); the role answers with a note_ack."""
    if to not in ROLES:
        raise NoteRefused(f"unknown role {to!r}; choose one of {', '.join(ROLES)}")
    if not text.strip():
        raise NoteRefused("the note is empty")
    note = CoPINote(id=uuid.uuid4().hex[:12], text=text.strip(), to=to)
    await bus.publish(Envelope(project=project, sender="copi", recipient=to, body=CoPINoteMsg(note=note)))
    return note


async def send_approval(bus: Bus, projects: list[ProjectView], project: str, approved: bool, reason: str = "") -> Envelope:
    """Approve or refuse the estimate of ``project``, which must be waiting for approval (NoteRefused saying why not).

    The id derives from the project and the answer, so a second `lab approve` (or a second click in the web
    view) is the same message and JetStream's duplicate window drops it; the PI ignores one that comes later.
    """
    view = next((p for p in projects if p.project == running_project(projects, project)), None)
    if view is None or not view.waiting_approval:
        stage = view.stage if view is not None else "unknown"
        raise NoteRefused(f"project {project!r} is not waiting for approval (stage {stage})")
    body = ProjectApproval(approved=approved, reason=reason.strip())
    env = Envelope(id=derive_id(f"approval/{project}", "approve" if approved else "refuse"), project=project, sender="copi", recipient="pi", body=body)
    await bus.publish(env)
    return env
