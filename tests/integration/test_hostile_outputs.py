"""Hostile output through the real runner: bad output is the experiment's failure, never a lost runner.

Real: nats-server, the object store, ``python -m services.runner`` with the
experiment in its sandbox. Each experiment below writes something the lab once
choked on (a 64 KiB+ line, 60 MB of stdout, a name with ``~``, NaN metrics, a
huge final_info.json, sparse files past the caps, links, FIFOs and setuid
files): the runner must report exactly one result (it never dies without one,
which the engineer would take for a lost runner and run again), with a clear
reason, and keep what it stores within the caps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agents.templates import bundle
from bus.schema import JobSpec, JobStatus, NatsAccess
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_OK
from bus.schema.formats import RESULT_FILE
from bus.store import Artifacts

pytestmark = pytest.mark.timeout(300)
PLOT = "import argparse; p = argparse.ArgumentParser(); p.add_argument('--run_dir'); p.add_argument('--out_dir'); p.parse_args()\n"
HEAD = """
import argparse, json, os, sys
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); a = p.parse_args()
out = a.out_dir
def final(extra="", **more):
    info = {"metrics": {"score": {"mean": 1.0, "stderr": 0.0, "values": [1.0]}}, "seeds": [0], "config": {}, **more}
    open(os.path.join(out, "final_info.json"), "w").write(json.dumps(info)[:-1] + extra + "}")
"""
MiB = 1 << 20


async def run_job(admin_bus: Any, nats_server: Any, tmp_path: Path, job_id: str, body: str, **env: str) -> tuple[int, JobStatus, str]:
    """Run ``body`` (after HEAD) as a job's experiment; (exit code, the result it reported, the runner's stdout)."""
    d = tmp_path / f"t-{job_id}"
    d.mkdir()
    (d / "experiment.py").write_text(HEAD + textwrap.dedent(body))
    (d / "plot.py").write_text(PLOT)
    await (await Artifacts.open(admin_bus)).put(f"p1/{job_id}.tar.gz", bundle(d))
    job = JobSpec(job_id=job_id, project="p1", experiment_id="x01", template="t", bundle_object=f"p1/{job_id}.tar.gz",
                  seeds=[0], wall_time_s=120, memory_mb=512,
                  nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]))
    work = tmp_path / f"w-{job_id}"
    full_env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(work), **env}
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.runner"], env=full_env,
                                   capture_output=True, timeout=240)
    assert proc.returncode in (EXIT_OK, EXIT_EXPERIMENT_FAILED), proc.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")[-3000:]
    return proc.returncode, JobStatus.model_validate_json((work / RESULT_FILE).read_text()), proc.stdout.decode(errors="replace")


async def stored(admin_bus: Any, job_id: str) -> dict[str, int]:
    """What the job left in the object store: name -> bytes."""
    art = await Artifacts.open(admin_bus)
    return {name: len(await art.get(name)) for name in await art.list(f"p1/runs/{job_id}/")}


def runner_only(job_id: str) -> set[str]:
    return {f"p1/runs/{job_id}/{n}" for n in ("log.txt", "env.json", "log-tail.txt")}


async def test_long_lines_odd_names_links_fifos_and_setuid_files_are_the_runs_own_business(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "odd", """
        print("x" * (100 << 10), flush=True)          # one line of 100 KiB
        sys.stdout.write("y" * (70 << 10) + "\\n" + "tail line\\n"); sys.stdout.flush()
        open(os.path.join(out, "a~1.json"), "w").write("{}")
        open(os.path.join(out, ".hidden.json"), "w").write("{}")
        open(os.path.join(out, "we\\x1b[2Jird.json"), "w").write("{}")
        os.mkfifo(os.path.join(out, "fifo.json"))
        os.symlink("/etc/passwd", os.path.join(out, "link.json"))
        open(os.path.join(out, "suid.json"), "w").write('{"ok": 1}')
        os.chmod(os.path.join(out, "suid.json"), 0o4755)
        final()
        sys.stdout.write("no newline at the end " + "z" * (10 << 10))
    """)
    assert code == EXIT_OK and status.state == "succeeded", status.reason
    names = set(status.artifacts)
    assert names == runner_only("odd") | {"p1/runs/odd/final_info.json", "p1/runs/odd/suid.json"}
    art = await Artifacts.open(admin_bus)
    assert await art.get("p1/runs/odd/suid.json") == b'{"ok": 1}'  # bytes, nothing else
    log = (await art.get("p1/runs/odd/log.txt")).decode()
    lines = log.splitlines()
    assert max(len(line.encode()) for line in lines) < 4096 + 100
    assert any(line.startswith("x" * 4000) and line.endswith(f"… [truncated {(100 << 10) - 4096} bytes]") for line in lines)
    assert "tail line" in lines
    assert any(line.startswith("no newline at the end") and "[truncated" in line for line in lines)
    for bad in ("'a~1.json'", "'.hidden.json'", "fifo.json", "link.json"):
        assert any(bad in line and "not uploading" in line for line in lines), bad
    assert "\x1b" not in log  # the odd name is shown escaped
    assert "not a regular file" in log and "symbolic link" in log


async def test_nan_in_metrics_is_invalid_output(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "nan", """
        json.dump({"metrics": {"score": {"mean": float("nan"), "stderr": float("inf"), "values": [1.0]}}, "seeds": [0]},
                  open(os.path.join(out, "final_info.json"), "w"))
    """)
    assert code == EXIT_EXPERIMENT_FAILED and status.state == "failed"
    assert status.reason.startswith("invalid_output:") and "NaN" in status.reason, status.reason
    assert status.final_info is None
    assert set(await stored(admin_bus, "nan")) == runner_only("nan")


async def test_an_overflowing_number_is_infinity_too(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "big", """
        open(os.path.join(out, "final_info.json"), "w").write(
            '{"metrics": {"score": {"mean": 1e999, "stderr": 0.0}}, "seeds": [0]}')
    """)
    assert code == EXIT_EXPERIMENT_FAILED and status.reason.startswith("invalid_output:") and "finite" in status.reason


async def test_a_huge_final_info_is_invalid_output(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "huge", """
        final(extra=', "junk": "' + "j" * (1 << 20) + '"')
    """)
    assert code == EXIT_EXPERIMENT_FAILED and status.state == "failed"
    assert status.reason.startswith("invalid_output: final_info.json is") and "LAB_JOB_FINAL_INFO_MAX_BYTES" in status.reason
    assert set(await stored(admin_bus, "huge")) == runner_only("huge")


async def test_final_info_off_the_schema_is_invalid_output_with_where(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "schema", """
        open(os.path.join(out, "final_info.json"), "w").write('{"metrics": {"score": {"mean": "high"}}, "seeds": [0]}')
    """)
    assert code == EXIT_EXPERIMENT_FAILED and status.reason.startswith("invalid_output: final_info.json does not match the schema")
    assert "metrics.score.mean" in status.reason


async def test_sparse_files_count_in_full_against_the_per_file_cap(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "sparse", """
        final()
        for i in range(3):
            with open(os.path.join(out, f"big{i}.json"), "wb") as f:
                f.truncate(60 << 20)   # 60 MiB apparent, nothing allocated
    """)
    assert code == EXIT_EXPERIMENT_FAILED and status.state == "failed"
    assert status.reason.startswith("invalid_output: out/'big0.json' is 62914560 bytes, over the per-file cap"), status.reason
    assert "LAB_JOB_OUTPUT_FILE_MAX_BYTES" in status.reason
    kept = await stored(admin_bus, "sparse")
    assert set(kept) == runner_only("sparse") and sum(kept.values()) < 64 << 10


async def test_outputs_over_the_total_and_count_caps_are_invalid_output(admin_bus, nats_server, tmp_path):
    body = """
        final()
        for i in range(4):
            with open(os.path.join(out, f"part{i}.json"), "wb") as f:
                f.truncate(20 << 20)
    """
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "total", body)
    assert code == EXIT_EXPERIMENT_FAILED
    assert "out/'part3.json'" in status.reason and "over the cap of 67108864 bytes (LAB_JOB_OUTPUT_MAX_BYTES)" in status.reason
    assert set(await stored(admin_bus, "total")) == runner_only("total")
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "count", body, LAB_JOB_OUTPUT_MAX_FILES="3")
    assert code == EXIT_EXPERIMENT_FAILED and "over the cap of 3 files (LAB_JOB_OUTPUT_MAX_FILES)" in status.reason


async def test_sixty_megabytes_of_stdout_leave_a_bounded_log_and_the_run_succeeds(admin_bus, nats_server, tmp_path):
    code, status, stdout = await run_job(admin_bus, nats_server, tmp_path, "loud", """
        line = "0123456789" * 10 + "\\n"
        block = line * 10000                       # 1 MB
        for i in range(60):
            sys.stdout.write(block)
        print("the very last line", flush=True)
        final()
    """)
    assert code == EXIT_OK and status.state == "succeeded", status.reason
    kept = await stored(admin_bus, "loud")
    assert kept["p1/runs/loud/log.txt"] < 2 * MiB + 4096
    assert kept["p1/runs/loud/log-tail.txt"] <= 64 << 10
    art = await Artifacts.open(admin_bus)
    log = (await art.get("p1/runs/loud/log.txt")).decode()
    assert "[runner] starting job loud" in log and "output dropped here" in log
    assert log.rstrip().endswith("the very last line")
    assert (await art.get("p1/runs/loud/log-tail.txt")).decode().rstrip().endswith("the very last line")
    assert len(stdout) < 2 * MiB  # not shown live past the cap either


async def test_a_crash_reason_has_no_control_characters_and_the_lab_keeps_working(admin_bus, nats_server, tmp_path):
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "ctl", """
        sys.stdout.write("\\x1b[2J\\x1b]0;pwned\\x07boom\\x00\\x7f\\x9b31m here\\tthere" + "!" * 5000 + "\\n"); sys.stdout.flush()
        raise SystemExit(2)
    """)
    assert code == EXIT_EXPERIMENT_FAILED
    assert status.reason.startswith("crashed: exit code 2: boom here\tthere!!!"), repr(status.reason)
    assert len(status.reason) < 400 and not any(ord(c) < 32 and c != "\t" or 0x7f <= ord(c) <= 0x9f for c in status.reason)
    code, status, _ = await run_job(admin_bus, nats_server, tmp_path, "fine", "final()\n")
    assert code == EXIT_OK and status.state == "succeeded" and status.final_info is not None
