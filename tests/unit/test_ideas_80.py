"""`lab ideas` at COLUMNS=80: every line fits, names stay whole, what an idea tried is cut with "…"; --wide shows it all."""

from __future__ import annotations

from rich.console import Console

from bus.schema import ArchiveRecord
from services.cli.ideas import render

LONG = {f"knob_number_{i}": 0.000123 * i for i in range(12)}


def records(n: int) -> list[ArchiveRecord]:
    return [ArchiveRecord.model_validate({
        "template": "grokking", "signature": f"s{i}", "project": f"grokking-s{i}-7f3a9c", "recorded_at": 1_700_000_000.0 + i,
        "outcome": {"idea_id": f"x{i:02d}-weight-decay", "changes": LONG, "status": "better", "improvement": 0.125, "effect_size": 1.5,
                    "ci_low": 0.01, "ci_high": 0.2, "p_adjusted": 0.004, "replicated": True},
    }) for i in range(n)]


def _print(n: int, wide: bool) -> str:
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    render("grokking", records(n), console, wide=wide)
    return console.export_text()


def test_fits_80_columns_with_names_whole():
    text = _print(30, wide=False)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, "\n".join(ln for ln in lines if len(ln) > 80)
    for r in records(30):
        row = next(ln for ln in lines if f"{r.project} " in ln)
        assert r.outcome.idea_id in row and "knob_num" in row and row.rstrip().endswith("0.004") and "…" in row
    assert "idea archive: grokking (30 ideas)" in text and "p adj." in text


def test_wide_shows_every_change_and_column():
    text = _print(3, wide=True)
    assert "knob_number_11=0.001353" in text and "[0.01, 0.2]" in text and "+1.5" in text and "2023-11-14" in text and "yes" in text
