"""`lab status` as tables that fit the terminal they are printed on.

Every table fits the console's width (COLUMNS): names (projects, jobs, agents) stay whole on one
line, since a name cut short cannot be pasted into `lab say -p` or `lab export`; headers are never cut;
free text (an outcome, a decision rule, a reason) is cut to one line with an ellipsis. ``wide`` shows
every column at its natural width, free text in full, however wide that is; ``--json`` has everything.
The compact layout leaves out what can be read elsewhere: the template when the project's name already
starts with it (as `lab run` names projects), tokens, the project column of jobs (a job id starts
with its project), and a finished project's compute (`lab export` has it, in export.json's ``spend``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bus.provenance import spend
from bus.schema import Heartbeat, ProjectView
from services.cli.terminal import clean
from services.read.projects import ActiveJob
from services.read.team import Replica

NATURAL = 10_000  # a width no table reaches: wide tables are measured against it
NAME, TEXT, NUM = "name", "text", "num"  # column kinds: kept whole, cut with an ellipsis, short and kept whole


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


def table(wide: bool, columns: list[tuple[str, str]], title: str | None = None) -> Table:
    """A table whose NAME and NUM columns never shrink below their content and header; TEXT columns give way."""
    t = Table(box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=False, show_edge=wide, title=title)
    for name, kind in columns:
        # Only TEXT columns are wrapable, so only they shrink when the table is too wide; their cells (``cut``) end in "…".
        t.add_column(name, no_wrap=kind != TEXT, overflow="fold" if kind == NAME else "ellipsis", min_width=len(name))
    return t


def cut(text: object, wide: bool) -> Text:
    """Free text as one line cut with an ellipsis to its column (whole, on as many lines as it has, when ``wide``)."""
    one = clean(text) if wide else " ".join(clean(text).split())
    return Text(one) if wide else Text(one, no_wrap=True, overflow="ellipsis")


def _agent_row(name: str, b: Heartbeat | None, stale: bool, wide: bool) -> list[str]:
    if b is None:
        return [name, "down", "-", "-", "-", "-", "-"] + (["-", "-", "-"] if wide else [])
    p50 = "-" if b.p50_s is None else f"{b.p50_s:.2f}"
    row = [name, "down" if stale else "up", str(b.pid), b.mind, f"{b.busy}/{b.concurrency}", str(b.handled), p50]
    return row + ([b.host or "-", "-" if b.p99_s is None else f"{b.p99_s:.2f}", b.metrics_url or "-"] if wide else [])


def agents_table(agents: dict[str, Heartbeat | None], wide: bool, now: float | None = None, instances: list[Replica] | None = None) -> Table:
    """One row per agent process (a role with no process running: one "down" row)."""
    now = time.time() if now is None else now
    cols = [("agent", NAME), ("state", NUM), ("pid", NUM), ("mind", TEXT), ("busy", NUM), ("handled", NUM), ("p50 s", NUM)]
    t = table(wide, cols + ([("host", TEXT), ("p99 s", NUM), ("metrics", TEXT)] if wide else []))
    seen: set[str] = set()
    for r in sorted(instances or [], key=lambda r: (r.beat.role, r.key)):
        seen.add(r.beat.role)
        t.add_row(*_agent_row(r.beat.instance or r.key, r.beat, r.stale, wide))
    for role, a in agents.items():
        if role not in seen:
            t.add_row(*_agent_row(role, a, a is not None and a.stale(now), wide))
    return t


def projects_table(projects: list[ProjectView], wide: bool) -> Table:
    if wide:
        nums = [(c, NUM) for c in ("stage", "ideas", "runs", "round", "tokens", "cost $")]
        t = table(True, [("project", NAME), ("template", NAME), *nums, ("outcome", TEXT)])
    else:
        t = table(False, [("project", NAME), ("stage", NUM), ("ideas", NUM), ("runs", NUM), ("rnd", NUM), ("$", NUM), ("outcome", TEXT)])
    for s in projects:
        b = s.budget
        spent = [f"{len(s.ideas)}/{b.max_ideas}", f"{len(s.experiments)}/{b.max_runs}", f"{s.round}/{b.max_revision_rounds}"]
        if wide:
            t.add_row(s.project, s.template, s.stage, *spent, str(s.tokens), f"{s.cost_usd:.4f}", cut(s.outcome, True))
            continue
        name = Text(clean(s.project))
        if not s.project.startswith(s.template):
            name.append(f"\n{s.template}", style="dim")
        t.add_row(name, s.stage, *spent, f"{s.cost_usd:.2f}", cut(s.outcome, False))
    return t


def compute_table(projects: list[ProjectView], wide: bool) -> Table | None:
    """Each project's compute so far (its jobs, CPU-minutes, GPU-hours) beside its estimate, from the runs the PI holds;
    None when no project ran a job or has an estimate.

    The compact layout lists the projects still running; ``wide`` every project.
    """
    rows = [(s.project, compute(spend(s.runs)) + limits(s)) for s in projects if (wide or not s.finished) and (s.runs or s.estimate)]
    if not rows:
        return None
    t = table(wide, [("project", NAME), ("compute", TEXT)], title="compute so far")
    for name, line in rows:
        t.add_row(name, cut(line, wide))
    return t


def compute(sp: dict[str, Any]) -> str:
    """A project's compute in one short line: "12 jobs, 3.4 CPU-min, 0 GPU-h" (from :func:`bus.provenance.spend`)."""
    jobs, measured = sp["jobs"], sp["cpu_measured"]
    cpu = f"{sp['cpu_s'] / 60:.1f} CPU-min" + (f" ({measured} of {jobs} measured)" if measured < jobs else "")
    hours = round(sp["gpu_hours"], 2)
    gpu = "<0.01" if sp["gpu_s"] > 0 and hours == 0 else f"{hours:g}"
    reused = f", {sp['reused']} reused" if sp.get("reused") else ""  # served by the result cache: no job, no compute
    return f"{jobs} job{'s' if jobs != 1 else ''}, {cpu}, {gpu} GPU-h{reused}"


def limits(s: ProjectView) -> str:
    """The project's compute and money limits and its estimate, after its compute so far ("" when it has none of them)."""
    b, parts = s.budget, []
    if b.max_gpu_hours is not None:
        parts.append(f"limit {b.max_gpu_hours:g} GPU-h")
    if b.max_cpu_hours is not None:
        parts.append(f"limit {b.max_cpu_hours:g} CPU-h")
    if b.max_cost_usd is not None:
        parts.append(f"limit ${b.max_cost_usd:g}")
    if s.estimate is not None:
        parts.append(f"estimate {s.estimate.gpu_hours:g} GPU-h, ${s.estimate.cost_usd:.2f}")
    return f"; {', '.join(parts)}" if parts else ""


def approval_table(projects: list[ProjectView], wide: bool) -> Table:
    """Projects waiting for the co-PI's approval: the estimate, why it waits, and the command that starts it."""
    # No project column: the command names the project, whole (a name cut short could not be pasted).
    t = table(wide, [("approve with", NAME), ("estimate", TEXT)], title="waiting for approval")
    for s in projects:
        est = s.estimate
        what = f"{est.line()}; {est.why}" if est is not None else "no estimate"
        t.add_row(f"lab approve {s.project}", cut(what, wide))
    return t


def age(seconds: float) -> str:
    """A duration as the largest whole unit: 45s, 12m, 3h, 2d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def verdict(s: ProjectView) -> str:
    return "ACCEPTED" if s.accepted else ("FAILED" if s.stage == "failed" else "NOT ACCEPTED")


def finished_table(projects: list[ProjectView], wide: bool, now: float | None = None, named: bool = True) -> Table:
    """Finished projects: the decision, how long ago the project started, and the command that exports it.

    Without ``named`` the project column is left out: the export command names the project, whole.
    """
    now = time.time() if now is None else now
    cols = [("decision", NUM), ("age", NUM), ("export", NAME)]
    t = table(wide, ([("project", NAME)] if named else []) + cols, title="finished projects")
    for s in projects:
        t.add_row(*([s.project] if named else []), verdict(s), age(now - s.started_at), f"lab export {s.project}")
    return t


def fits(console: Console, renderable: Table) -> bool:
    return console.measure(renderable, options=console.options.update_width(NATURAL)).maximum <= console.width


def jobs_table(jobs: list[ActiveJob], wide: bool) -> Table:
    if wide:
        t = table(True, [("project", NAME), ("job", NAME), ("experiment", NAME), ("state", NUM), ("reason", TEXT)])
    else:
        t = table(False, [("job", NAME), ("experiment", NAME), ("state", NUM), ("reason", TEXT)])
    for a in jobs:
        j = a.job
        t.add_row(*([a.project] if wide else []), j.job_id, j.experiment_id, j.state, cut(j.reason, wide))
    return t


def capacity_table(cap: dict[str, Any], wide: bool) -> Table:
    total = "unlimited" if cap["capacity"] is None else str(cap["capacity"])
    t = table(wide, [("project", NAME), (f"holds ({cap['counts']})", NUM), ("share", NUM), ("waiting", NUM)],
              title=f"capacity: {cap['used']} of {total} {cap['counts']} in use")
    for p, v in cap["projects"].items():
        t.add_row(p, str(v["held"]), "-" if v["share"] is None else str(v["share"]), "yes" if v["waiting"] else "")
    return t


def show(console: Console, renderable: Table, wide: bool) -> None:
    """Print a table fitted to the console, or (``wide``) at its natural width, even past the terminal's edge."""
    if not wide:
        console.print(renderable)
        return
    natural = console.measure(renderable, options=console.options.update_width(NATURAL)).maximum
    saved = console.width
    console.width = max(saved, natural)
    try:
        console.print(renderable, crop=False)
    finally:
        console.width = saved


def render(data: LabStatus, console: Console, wide: bool = False, now: float | None = None) -> None:
    """Print what `lab status` gathered: agents, projects, their compute, jobs, the capacity, the finished projects."""
    console.print(f"NATS: {data.nats}", markup=False)
    show(console, agents_table(data.agents, wide, now, data.instances), wide)
    show(console, projects_table(data.projects, wide), wide)
    if waiting := [s for s in data.projects if s.waiting_approval]:
        show(console, approval_table(waiting, wide), wide)
    if (spent := compute_table(data.projects, wide)) is not None:
        show(console, spent, wide)
    if data.jobs:
        show(console, jobs_table(data.jobs, wide), wide)
    if data.capacity.get("projects"):
        show(console, capacity_table(data.capacity, wide), wide)
    finished = [s for s in data.projects if s.finished]
    if finished:
        done = finished_table(finished, wide, now)
        show(console, done if wide or fits(console, done) else finished_table(finished, wide, now, named=False), wide)
