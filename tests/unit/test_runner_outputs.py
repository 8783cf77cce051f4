"""Taking an experiment's output without trusting it: lines, logs, files, reasons; and how the engineer treats the result."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agents.engineer.workflow import EngineerContext, JobRecord
from bus.schema import JobStatus
from bus.schema.results import failure_kind
from services.runner import outputs, split
from services.runner.outputs import BoundedLog, Caps, LineClipper, collect
from services.runner.runner import parse_final_info
from tests.unit.test_engineer_lost_runners import Harness, request


def test_lines_are_cut_with_a_marker_and_never_held_whole() -> None:
    clip = LineClipper(10)
    assert clip.feed(b"short\nabcdefghij") == ["short"]
    assert clip.feed(b"K" * 1000) == []
    assert len(clip._kept) == 10
    assert clip.feed(b"end\nnext") == ["abcdefghij … [truncated 1003 bytes]"]
    assert clip.rest() == ["next"] and clip.rest() == []


def test_the_split_tail_cuts_lines_too(tmp_path: Path) -> None:
    log = tmp_path / "experiment.log"
    log.write_bytes(b"a" * 100 + b"\nok\nno newline")
    tail = split.Tail(log, line_limit=20)
    assert tail.read_lines() == ["a" * 20 + " … [truncated 80 bytes]", "ok"]
    assert tail.rest() == ["no newline"]


def test_clean_text_drops_escapes_and_control_characters_and_limits_length() -> None:
    text = "\x1b[31mred\x1b[0m \x1b]0;title\x07bell\x00nul\x7fdel\x9b2Jc1\u202eflip\ttab\nnewline"
    assert outputs.clean_text(text) == "red bellnuldelc1flip\ttabnewline"
    assert outputs.clean_text("x" * 500, 300) == "x" * 299 + "…"


def test_a_bounded_log_keeps_its_head_and_its_tail(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "log.txt", keep=4096)
    shown = [log.write(f"line {i:06d} " + "." * 88) for i in range(1000)]  # 100 bytes a line
    log.close()
    text = (tmp_path / "log.txt").read_text()
    assert shown.index(False) == 41 and not any(shown[41:])
    assert text.startswith("line 000000") and text.rstrip().endswith("line 000999 " + "." * 88)
    assert "lines (" in text and "dropped here" in text
    assert len(text) < 2 * 4096 + 200
    assert log.last_bytes(250).decode().startswith("line 00099")


def test_outputs_are_regular_files_under_safe_names_within_the_caps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.json").write_text("{}")
    (out / "a~1.json").write_text("{}")
    (out / "..json").write_text("{}")
    (out / ".hidden.json").write_text("{}")
    (out / "skip.txt").write_text("not an output")
    os.mkfifo(out / "fifo.json")
    os.symlink("/etc/passwd", out / "link.json")
    (out / "suid.json").write_text("{}")
    (out / "suid.json").chmod(0o4755)
    if os.geteuid() == 0:
        os.mknod(out / "null.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    got = collect([(out, ".json", "out")], Caps(total=1 << 20, per_file=1 << 20, count=10))
    assert got.invalid == "" and [n for n, _ in got.files] == ["ok.json", "suid.json"]
    notes = "\n".join(got.notes)
    for name in ("'a~1.json'", "'..json'", "'.hidden.json'", "'fifo.json'", "'link.json'"):
        assert name in notes
    assert "mode 4755" in notes


def test_a_sparse_file_counts_in_full_and_over_a_cap_nothing_is_taken(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    with open(tmp_path / "b.json", "wb") as f:
        f.truncate(5000)
    got = collect([(tmp_path, ".json", "out")], Caps(total=1 << 20, per_file=4096, count=10))
    assert got.files == [] and got.invalid.startswith("out/'b.json' is 5000 bytes, over the per-file cap of 4096")
    got = collect([(tmp_path, ".json", "out")], Caps(total=4000, per_file=8192, count=10))
    assert "over the cap of 4000 bytes" in got.invalid
    got = collect([(tmp_path, ".json", "out")], Caps(total=1 << 20, per_file=8192, count=1))
    assert "over the cap of 1 files" in got.invalid


@pytest.mark.parametrize("raw, why", [
    (b'{"metrics": {"s": {"mean": NaN, "stderr": 0}}, "seeds": [0]}', "NaN is not a JSON number"),
    (b'{"metrics": {"s": {"mean": -Infinity, "stderr": 0}}, "seeds": [0]}', "-Infinity is not a JSON number"),
    (b'{"metrics": {"s": {"mean": 1e400, "stderr": 0}}, "seeds": [0]}', "not a finite number"),
    (b'{"metrics": {}, "seeds": [0], "deep": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
])
def test_final_info_is_strict_json(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_final_info(raw)


def test_failure_kinds() -> None:
    assert failure_kind("invalid_output: final_info.json missing", from_runner=False) == "invalid_output"
    assert failure_kind("crashed: exit code 1", from_runner=True) == "experiment"
    assert failure_kind("runner exited without reporting", from_runner=False) == "lost"


async def test_invalid_output_is_never_run_again_as_a_lost_runner() -> None:
    h = Harness()
    await h.send(request())
    job = h.executor.submitted[-1]
    reason = "invalid_output: out/'x.json' is 62914560 bytes, over the per-file cap of 33554432 bytes"
    outputs_ = await h.send(JobStatus(job_id=job.job_id, experiment_id="x01-baseline", state="failed", reason=reason), sender="engineer")
    assert len(h.executor.submitted) == 1
    (result, _), = outputs_
    assert result.runs[0].status == "failed" and result.runs[0].reason == reason and result.runs[0].attempt == 1


async def test_the_engineer_reads_only_the_logs_tail_cleaned() -> None:
    h = Harness()
    await h.send(request())
    job_id = h.executor.submitted[-1].job_id
    h.store.data["p1/runs/j/log.txt"] = b"the whole log is never read"
    h.store.data["p1/runs/j/log-tail.txt"] = b"".join(b"line %d \x1b[2J\x07\n" % i for i in range(20000))
    record: JobRecord = h.state.jobs[job_id]
    record.reason = "crashed: exit code 1"
    record.status = JobStatus(job_id=job_id, experiment_id="x01-baseline", state="failed",
                              artifacts=["p1/runs/j/log.txt", "p1/runs/j/log-tail.txt"])
    ctx = EngineerContext(project="p1", role="engineer", state=h.state, artifacts=h.store, mind=None, jobs=h.executor)
    text = await h.role._error_of(ctx, record)
    lines = text.splitlines()
    assert lines[0] == "crashed: exit code 1" and len(lines) == 31
    assert lines[-1].strip() == "line 19999" and "\x1b" not in text and "never read" not in text


def test_a_checkpoint_holds_regular_files_only_with_no_mode_and_within_the_cap(tmp_path: Path) -> None:
    import io
    import tarfile

    from services.runner.checkpoint import safe_bundle

    (tmp_path / "state.pt").write_bytes(b"weights")
    (tmp_path / "state.pt").chmod(0o6755)
    os.symlink("/etc/passwd", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with tarfile.open(fileobj=io.BytesIO(safe_bundle(tmp_path, 1 << 20)), mode="r:gz") as tar:
        assert [(m.name, m.mode, m.isreg()) for m in tar.getmembers()] == [("state.pt", 0o644, True)]
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(ValueError, match="over the cap of 1048576"):
        safe_bundle(tmp_path, 1 << 20)
