"""`lab status` as tables that fit the terminal they are printed on.

On an 80-column terminal the full tables squeezed project names to "grokki…".
The compact layout (the default) keeps every name whole on one line and
leaves out what can be read elsewhere: the template when the project's name
already starts with it (as `lab run` names projects), tokens, and the
project column of jobs (a job id starts with its project). Long free text
(outcome, reason) wraps. ``wide`` shows every column at its natural width,
however wide that is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bus.schema import Heartbeat, ProjectView
from services.cli.terminal import clean
from services.read.projects import ActiveJob
from services.read.team import Replica

NATURAL = 10_000  # a width no table reaches: wide tables are measured against it


@dataclass
class LabStatus:
    """What `lab status` gathered: the read models, and the PI's states as stored for ``--json``."""

    nats: str
    agents: dict[str, Heartbeat | None]
    projects: list[ProjectView]
    jobs: list[ActiveJob]
    docs: list[dict[str, Any]] = field(default_factory=list)  # the projects as the PI stored them, every field
    capacity: dict[str, Any] = field(default_factory=dict)
    instances: list[Replica] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The one JSON object `lab status --json` prints (its shape is what scripts read)."""
        return {
            "nats": self.nats,
            "agents": {role: None if b is None else b.model_dump(mode="json") for role, b in self.agents.items()},
            "projects": self.docs,
            "jobs": [j.row() for j in self.jobs],
            "capacity": self.capacity,
            "instances": [r.row() for r in self.instances],
        }


def _table(wide: bool, names: list[str], wraps: tuple[str, ...] = ()) -> Table:
    t = Table(box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=False, show_edge=wide)
    for c in names:
        # Names stay on one line (a name cut short cannot be pasted into `lab say -p`); only free text wraps.
        t.add_column(c, no_wrap=c not in wraps, overflow="fold")
    return t


def agents_table(agents: dict[str, Heartbeat | None], wide: bool, now: float | None = None) -> Table:
    now = time.time() if now is None else now
    t = _table(wide, ["agent", "state", "pid", "mind", "handled"])
    for role, a in agents.items():
        if a is None:
            t.add_row(role, "down", "-", "-", "-")
        else:
            t.add_row(role, "down" if a.stale(now) else "up", str(a.pid), a.mind, str(a.handled))
    return t


def projects_table(projects: list[ProjectView], wide: bool) -> Table:
    if wide:
        t = _table(True, ["project", "template", "stage", "ideas", "runs", "round", "tokens", "cost $", "outcome"])
    else:
        t = _table(False, ["project", "stage", "ideas", "runs", "rnd", "$", "outcome"], wraps=("outcome",))
    for s in projects:
        b = s.budget
        spent = [f"{len(s.ideas)}/{b.max_ideas}", f"{len(s.experiments)}/{b.max_runs}", f"{s.round}/{b.max_revision_rounds}"]
        if wide:
            t.add_row(s.project, s.template, s.stage, *spent, str(s.tokens), f"{s.cost_usd:.4f}", s.outcome)
            continue
        name = Text(clean(s.project))
        if not s.project.startswith(s.template):
            name.append(f"\n{s.template}", style="dim")
        t.add_row(name, s.stage, *spent, f"{s.cost_usd:.2f}", s.outcome)
    return t


def jobs_table(jobs: list[ActiveJob], wide: bool) -> Table:
    if wide:
        t = _table(True, ["project", "job", "experiment", "state", "reason"])
    else:
        t = _table(False, ["job", "experiment", "state", "reason"], wraps=("reason",))
    for a in jobs:
        j = a.job
        t.add_row(*([a.project] if wide else []), j.job_id, j.experiment_id, j.state, j.reason)
    return t


def _print(console: Console, table: Table, wide: bool) -> None:
    if not wide:
        console.print(table)
        return
    # Rich fits a table to the console's width; wide asks for its natural width, even past the terminal's edge.
    natural = console.measure(table, options=console.options.update_width(NATURAL)).maximum
    saved = console.width
    console.width = max(saved, natural)
    try:
        console.print(table, crop=False)
    finally:
        console.width = saved


def render(data: LabStatus, console: Console, wide: bool = False) -> None:
    """Print what `lab status` gathered."""
    console.print(f"NATS: {data.nats}", markup=False)
    _print(console, agents_table(data.agents, wide), wide)
    _print(console, projects_table(data.projects, wide), wide)
    if data.jobs:
        _print(console, jobs_table(data.jobs, wide), wide)
