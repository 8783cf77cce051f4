"""``lab ideas --template T``: the idea archive as a table, what every project tried on a template and what came of it."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from bus.schema import ArchiveRecord
from services.cli.terminal import SafeConsole
from services.read.ideas import tried


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:+.{digits}g}" if digits else f"{x}"


def render(template: str, records: list[ArchiveRecord], console: Console) -> None:
    if not records:
        console.print(f"no ideas archived for template {template!r} yet: a project's ideas are archived once its analysis is done")
        return
    table = Table(title=f"idea archive: {template} ({len(records)} ideas)", show_lines=False)
    for col in ("project", "idea", "tried", "outcome", "improvement", "g", "CI", "p adj.", "replic.", "when (UTC)"):
        # Names are meant to be copied whole (`lab export PROJECT`): never folded; the numbers fold instead.
        table.add_column(col, no_wrap=col in ("project", "idea"), overflow="fold")
    for r in records:
        o = r.outcome
        ci = f"[{o.ci_low:.3g}, {o.ci_high:.3g}]" if o.ci_low is not None and o.ci_high is not None else ""
        replicated = "" if o.replicated is None else ("yes" if o.replicated else "no")
        when = datetime.fromtimestamp(r.recorded_at, tz=UTC).strftime("%Y-%m-%d %H:%M")
        p = "" if o.p_adjusted is None else f"{o.p_adjusted:.3g}"
        table.add_row(r.project, o.idea_id, tried(r), o.status, _num(o.improvement), _num(o.effect_size, 2), ci, p, replicated, when)
    # Piped or captured output gets the whole row rather than a table folded to 80 columns.
    out = console if console.is_terminal else SafeConsole(file=console.file, width=max(console.width, 160), highlight=False)
    out.print(table)
