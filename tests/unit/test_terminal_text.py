"""No control character from outside reaches the terminal: crash reasons, decisions, log lines, status tables, errors."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
import typer
from rich.progress import Progress

from bus.errors import LabError
from bus.replay import Entry
from bus.schema import Decision, Envelope, ExperimentResult, JobStatus, encode
from bus.schema.state import JobView
from services.cli import app, errors, run, status
from services.cli.terminal import SafeConsole, clean, has_control
from services.read.projects import ActiveJob
from tests.web_convo import run as run_record

HOSTILE = [
    "\x1b]0;pwned title\x07",  # window title
    "\x1b[2J\x1b[H",  # clear screen, cursor home
    "\x1b]52;c;cm0gLXJmIH4=\x07",  # OSC 52: write the clipboard
    "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",  # hidden hyperlink
    "\x9b31m\x9d0;c1 title\x9c",  # 8-bit CSI and OSC
    "\x1bP+q544e\x1b\\",  # DCS
    "half\rwritten\x08\x7f\x00\x07\x0b\x0c",  # CR over the line, backspace, DEL, NUL, BEL, VT, FF
    "\u202eevil\u202c and an unterminated \x1b]0;title",
]
REASON = "crashed: " + "".join(HOSTILE)
# What rich itself writes on a terminal: colours (SGR), the cursor for its progress bar, erase-line.
RICH_OWN = re.compile(r"\r\x1b\[2K|\x1b\[[0-9;?]*[mAKlhG]")


def terminal() -> tuple[SafeConsole, io.StringIO]:
    buf = io.StringIO()
    return SafeConsole(file=buf, force_terminal=True, width=160, highlight=False, color_system="truecolor"), buf


def assert_clean(printed: str) -> None:
    rest = RICH_OWN.sub("", printed)
    assert not has_control(rest), repr(rest)
    assert "]52;" not in rest and "]8;" not in rest and "\x1b" not in rest


@pytest.mark.parametrize("text", HOSTILE)
def test_clean_removes_sequences_and_control_characters(text):
    out = clean(text)
    assert not has_control(out) and "\x1b" not in out
    assert all(c in "\n\t" or c.isprintable() for c in out)


def test_clean_keeps_text_newlines_and_tabs():
    assert clean("val_acc\t0.93\nnext line ünïcode ✓") == "val_acc\t0.93\nnext line ünïcode ✓"
    assert clean("\x1b]0;title\x07after") == "after"
    assert clean("a\x1b[31mred\x1b[0m") == "ared"


def entry(env: Envelope, seq: int = 1) -> Entry:
    return Entry(subject=f"lab.convo.{env.project}.{env.sender}.{env.recipient}", seq=seq, data=encode(env), envelope=env)


def hostile_convo() -> list[Entry]:
    failed = run_record("j1", "x01", "baseline", 0.0, ok=False).model_copy(update={"reason": REASON})
    result = Envelope(project="p1", sender="engineer", recipient="pi", body=ExperimentResult(experiment_id="x01", idea_id="baseline", runs=[failed]))
    status_env = Envelope(project="p1", sender="runner", recipient="engineer", body=JobStatus(job_id="j1", experiment_id="x01", state="failed", reason=REASON))
    decision = Envelope(project="p1", sender="pi", recipient="copi", body=Decision(accepted=False, reason=REASON, rounds=1))
    return [entry(result, 1), Entry(subject="lab.jobs.p1.j1.status", seq=2, data=encode(status_env), envelope=status_env), entry(decision, 3)]


def test_lab_logs_prints_no_control_character(monkeypatch):
    console, buf = terminal()
    monkeypatch.setattr(app, "console", console)
    for e in hostile_convo():
        app.print_entry(e, as_json=False)
        app.print_entry(e, as_json=True)  # JSON lines: json.dumps escapes control characters itself
    app.print_entry(Entry(subject="lab.convo.p1.pi.copi", seq=9, data=b"x", envelope=None, error=REASON), as_json=False)
    printed = buf.getvalue()
    assert "crashed" in printed
    assert_clean(printed)


def test_lab_run_prints_no_control_character():
    console, buf = terminal()
    queue: asyncio.Queue[Entry] = asyncio.Queue()
    for e in hostile_convo():
        queue.put_nowait(e)

    async def watch() -> Decision | None:
        reader = asyncio.create_task(asyncio.sleep(30))
        try:
            with Progress(console=console) as progress:
                task = progress.add_task("p1: ideas", total=5)
                return await run._watch(queue, reader, "p1", run.RunOptions(template="toy"), progress, task, None, float("inf"))
        finally:
            reader.cancel()

    decision = asyncio.run(watch())
    assert decision is not None and decision.reason == REASON
    printed = buf.getvalue()
    assert "crashed" in printed
    assert_clean(printed)


def test_status_tables_and_error_lines_print_no_control_character(monkeypatch):
    console, buf = terminal()
    job = ActiveJob(project="p1", job=JobView(job_id="j1", experiment_id="x01", state="failed", reason=REASON))
    status.render(status.LabStatus(nats="nats://127.0.0.1:4222", agents={}, projects=[], jobs=[job]), console, wide=True)
    err, err_buf = terminal()
    monkeypatch.setattr(errors, "_err", err)

    @errors.one_line_errors()
    def boom() -> None:
        raise LabError(REASON)

    with pytest.raises(typer.Exit):
        boom()
    printed = buf.getvalue() + err_buf.getvalue()
    assert "crashed" in buf.getvalue()
    assert_clean(printed)
