"""``lab template check PATH``: what the lab makes of a template folder before a project runs it.

For an AI Scientist template (``agents.aisci``) it shows what was derived and from
where (task, datasets, metrics with their directions, the primary and the rule that
chose it, seed ideas, requirements, the paper's LaTeX) in a table, then one line per
thing it could not derive; any such line exits 2, as every `lab` error does. A template
in the lab's own format is loaded as `lab run` would load it.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents import aisci, templates
from services.cli.errors import LabTyper

app = LabTyper(
    help="Check a template folder (the lab's format or an AI Scientist template).", no_args_is_help=True, add_completion=False, error_prefix="error: ",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _main() -> None:
    """Check template folders."""


def _table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("what", "derived", "from"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


@app.command()
def check(path: Path = typer.Argument(..., help="the template folder")) -> None:
    """Say what the lab derives from a template folder and what it cannot (exit 2 when it cannot run it)."""
    if not aisci.is_aisci(path):
        folder, spec = templates.load(str(path))  # a TemplateError is one line, exit 2
        rows = [("format", "the lab's (template.yaml)", "template.yaml"), ("knobs", ", ".join(spec.knobs) or "none", "template.yaml")]
        rows += [(f"metric {n}", f"{m.direction} is better" + (" (primary)" if m.primary else ""), "template.yaml") for n, m in spec.metrics.items()]
        out.print(_table(f"{folder}", rows))
        return
    d = aisci.derive(path)
    out.print(_table(f"{d.folder} (AI Scientist template)", d.found))
    for what, value, where in d.found:
        if what == "time budget":  # scheduling and the PI's estimate: say it whole, outside the table's wrapping
            out.print(f"time budget: {escape(value)} (from {escape(where)})", soft_wrap=True)
    for note in d.notes:
        out.print(f"note: {escape(note)}")
    for problem in d.problems:
        err.print(f"error: {escape(problem)}")
    if d.problems:
        raise typer.Exit(2)
    out.print(f"ok: `lab run --template {escape(str(path))}` runs its baseline as run_0 with its own command line")
