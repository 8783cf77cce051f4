"""The sandbox for real: the lab refuses model code without it, and its limits count every descendant of a job."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bus.schema.constants import EXIT_EXPERIMENT_FAILED
from services.runner import sandbox
from tests.conftest import lab_cmd
from tests.integration.test_runner_limits import run_job
from tests.proc_helpers import processes_with


@pytest.mark.parametrize("args", [["run", "--template", "grokking", "--fast"], ["agent", "engineer"]])
def test_lab_refuses_llm_code_without_a_sandbox_in_one_line(lab_env, args):
    _, env = lab_env
    env = {**env, sandbox.BWRAP_ENV: "no-such-bwrap"}
    proc = subprocess.run(lab_cmd(*args, "--mind", "llm"), env=env, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--unsafe-no-sandbox" in lines[0] and "no sandbox" in lines[0]


async def test_unconfined_runs_still_get_no_credential(admin_bus, nats_server, tmp_path):
    experiment = """
    import json, os, sys
    leaked = sorted(k for k in os.environ if k.startswith("LAB_") or "PASSWORD" in k)
    print("LEAKED", leaked, flush=True)
    sys.exit(1 if leaked else 0)
    """
    proc, statuses, work, _ = await run_job(admin_bus, nats_server, tmp_path, experiment, **{sandbox.BWRAP_ENV: "no-such-bwrap"})
    log = (work / "log.txt").read_text()
    assert "UNCONFINED" in log and "LEAKED []" in log, log


async def test_memory_of_a_setsid_grandchild_counts_against_the_job(admin_bus, nats_server, tmp_path):
    token = f"hog-{os.getpid()}-{time.monotonic_ns()}"
    experiment = f"""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(400 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(60)",
                      {token!r}], start_new_session=True)
    time.sleep(60)
    """
    proc, statuses, _, elapsed = await run_job(admin_bus, nats_server, tmp_path, experiment, memory_mb=200)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].reason.startswith("oom: used") and elapsed < 40
    assert processes_with(token) == []


async def test_a_fork_bomb_is_killed_at_the_process_limit(admin_bus, nats_server, tmp_path):
    experiment = """
    import subprocess, sys, time
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(40)]
    time.sleep(60)
    """
    proc, statuses, _, elapsed = await run_job(admin_bus, nats_server, tmp_path, experiment, LAB_JOB_MAX_PROCESSES="15")
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].reason.startswith("pids:") and "limit 15" in statuses[-1].reason and elapsed < 40


async def test_the_local_runner_reads_its_job_from_a_private_file(tmp_path):
    from bus.schema import JobSpec, NatsAccess
    from services.executors.local import LocalExecutor

    ex = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
    job = JobSpec(job_id="jf", project="p1", experiment_id="x", template="t", bundle_object="p1/t", seeds=[0],
                  wall_time_s=5, memory_mb=128, nats=NatsAccess(url="nats://127.0.0.1:1", user="runner", password="pw-in-a-file"))
    await ex.submit(job)
    pid = int((tmp_path / "jobs" / "jf" / "pid").read_text())
    try:
        assert b"pw-in-a-file" not in Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        pass  # already gone: nothing to read there either
    spec = tmp_path / "jobs" / "jf" / "job.spec.json"
    assert spec.stat().st_mode & 0o777 == 0o600 and "pw-in-a-file" in spec.read_text()
    await ex.cancel("jf")


def test_without_bubblewrap_the_lab_says_so_in_one_line_at_start(lab_env):
    _, env = lab_env
    env = {**env, sandbox.BWRAP_ENV: "no-such-bwrap"}
    proc = subprocess.run(lab_cmd("agent", "engineer", "--mind", "offline", "--nats", "nats://127.0.0.1:1"),
                          env=env, capture_output=True, text=True, timeout=120)
    warnings = [line for line in proc.stderr.splitlines() if "no sandbox" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lab: warning: no sandbox: 'no-such-bwrap'"), proc.stderr
