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
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

HEARTBEAT_FRESH_S = 20  # an agent beats every few seconds; older than this it is down
NATURAL = 10_000  # a width no table reaches: wide tables are measured against it


def _table(wide: bool, names: list[str], wraps: tuple[str, ...] = ()) -> Table:
    t = Table(box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=False, show_edge=wide)
    for c in names:
        # Names stay on one line (a name cut short cannot be pasted into `lab say -p`); only free text wraps.
        t.add_column(c, no_wrap=c not in wraps, overflow="fold")
    return t


def agents_table(agents: dict[str, Any], wide: bool, now: float | None = None) -> Table:
    now = time.time() if now is None else now
    t = _table(wide, ["agent", "state", "pid", "mind", "handled"])
    for role, a in agents.items():
        alive = a is not None and now - a["seen"] < HEARTBEAT_FRESH_S
        t.add_row(role, "up" if alive else "down", str(a["pid"]) if a else "-", a["mind"] if a else "-", str(a["handled"]) if a else "-")
    return t


def _usage(s: dict[str, Any]) -> tuple[int, float]:
    usage = s.get("usage", {}).values()
    return sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage), sum(u["cost_usd"] for u in usage)


def projects_table(projects: list[dict[str, Any]], wide: bool) -> Table:
    if wide:
        t = _table(True, ["project", "template", "stage", "ideas", "runs", "round", "tokens", "cost $", "outcome"])
    else:
        t = _table(False, ["project", "stage", "ideas", "runs", "rnd", "$", "outcome"], wraps=("outcome",))
    for s in projects:
        b = s["budget"]
        tokens, cost = _usage(s)
        spent = [f"{len(s['ideas'])}/{b['max_ideas']}", f"{len(s['experiments'])}/{b['max_runs']}", f"{s['round']}/{b['max_revision_rounds']}"]
        if wide:
            t.add_row(s["project"], s["template"], s["stage"], *spent, str(tokens), f"{cost:.4f}", s.get("outcome", ""))
            continue
        name = Text(s["project"])
        if not s["project"].startswith(s["template"]):
            name.append(f"\n{s['template']}", style="dim")
        t.add_row(name, s["stage"], *spent, f"{cost:.2f}", s.get("outcome", ""))
    return t


def jobs_table(jobs: list[dict[str, Any]], wide: bool) -> Table:
    if wide:
        t = _table(True, ["project", "job", "experiment", "state", "reason"])
    else:
        t = _table(False, ["job", "experiment", "state", "reason"], wraps=("reason",))
    for row in jobs:
        t.add_row(*([row["project"]] if wide else []), row["job"], row["experiment"], row["state"], row["reason"])
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


def render(data: dict[str, Any], console: Console, wide: bool = False) -> None:
    """Print what `lab status` gathered."""
    console.print(f"NATS: {data['nats']}", markup=False)
    _print(console, agents_table(data["agents"], wide), wide)
    _print(console, projects_table(data["projects"], wide), wide)
    if data["jobs"]:
        _print(console, jobs_table(data["jobs"], wide), wide)
