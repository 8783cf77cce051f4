"""`lab logs` at COLUMNS=80: one line per message, cut with "…"; --wide prints the message whole."""

from __future__ import annotations

import io

from bus.replay import Entry
from bus.schema import Decision, Envelope, encode
from services.cli import app
from services.cli.terminal import SafeConsole

REASON = "decision rule: accept when steps_to_val_99 improves by at least 10% with a Holm-corrected p below 0.05 over 5 seeds " * 3


def _printed(monkeypatch, wide: bool) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(app, "console", SafeConsole(file=buf, width=80, force_terminal=False, color_system=None, highlight=False))
    env = Envelope(project="grokking-s0-7f3a9c", sender="pi", recipient="copi", body=Decision(accepted=False, reason=REASON, rounds=1))
    app.print_entry(Entry(subject=f"lab.convo.{env.project}.pi.copi", seq=1, data=encode(env), envelope=env), as_json=False, wide=wide)
    return buf.getvalue()


def test_one_line_cut_to_80_columns(monkeypatch):
    lines = _printed(monkeypatch, wide=False).splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80 and lines[0].endswith("…")
    assert "grokking-s0-7f3a9c pi → copi" in lines[0]


def test_wide_prints_the_whole_message(monkeypatch):
    text = _printed(monkeypatch, wide=True)
    assert " ".join(REASON.split())[:200] in " ".join(text.split())
