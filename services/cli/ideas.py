"""``lab ideas --template T``: the idea archive as a table, what every project tried on a template and what came of it.

The table fits the console's width (COLUMNS): project and idea names stay whole (they are copied into
`lab export`), what an idea tried is cut to one line with an ellipsis, and the effect size, CI, replication
and date columns are left to ``--wide`` (every column, in full) and ``--json``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text

from bus.schema import ArchiveRecord
from services.cli.status import NAME, NUM, TEXT, cut, show, table
from services.read.ideas import tried

COMPACT = [("project", NAME), ("idea", NAME), ("tried", TEXT), ("outcome", NUM), ("impr.", NUM), ("p adj.", NUM)]
WIDE = [*COMPACT[:4], ("improvement", NUM), ("g", NUM), ("CI", NUM), ("p adj.", NUM), ("replic.", NUM), ("when (UTC)", NUM)]


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:+.{digits}g}" if digits else f"{x}"


def row(r: ArchiveRecord, wide: bool) -> list[str | Text]:
    """One archived idea as the table's cells (compact: no effect size, CI, replication or date)."""
    o = r.outcome
    p = "" if o.p_adjusted is None else f"{o.p_adjusted:.3g}"
    head: list[str | Text] = [r.project, o.idea_id, cut(tried(r), wide), o.status, _num(o.improvement)]
    if not wide:
        return [*head, p]
    head.append(_num(o.effect_size, 2))
    ci = f"[{o.ci_low:.3g}, {o.ci_high:.3g}]" if o.ci_low is not None and o.ci_high is not None else ""
    replicated = "" if o.replicated is None else ("yes" if o.replicated else "no")
    when = datetime.fromtimestamp(r.recorded_at, tz=UTC).strftime("%Y-%m-%d %H:%M")
    return [*head, ci, p, replicated, when]


def render(template: str, records: list[ArchiveRecord], console: Console, wide: bool = False) -> None:
    if not records:
        console.print(f"no ideas archived for template {template!r} yet: a project's ideas are archived once its analysis is done")
        return
    t = table(wide, WIDE if wide else COMPACT, title=f"idea archive: {template} ({len(records)} ideas)")
    for r in records:
        t.add_row(*row(r, wide))
    show(console, t, wide)
