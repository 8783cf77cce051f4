"""The sandbox's command line, the start-up gate without bubblewrap, and limits that count every descendant."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.runner import sandbox
from bus.schema.constants import EXIT_EXPERIMENT_FAILED
from tests.conftest import lab_cmd
from tests.proc_helpers import processes_with
from tests.integration.test_runner_limits import run_job

needs_bwrap = pytest.mark.skipif(sandbox.tool() is None, reason="needs bubblewrap (CI installs it)")


def policy(tmp_path: Path, **kw) -> sandbox.Policy:
    return sandbox.Policy(
        binds=[sandbox.Bind(source=tmp_path / "work" / "code", name="code"),
               sandbox.Bind(source=tmp_path / "work" / "out", name="out", writable=True)],
        env={"OMP_NUM_THREADS": "1"}, **kw,
    )


def test_the_command_line_hides_host_paths_and_isolates_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_NATS_PASSWORD", "s3cret")
    argv = [sys.executable, str(tmp_path / "work" / "code" / "experiment.py"), "--out_dir", str(tmp_path / "work" / "out")]
    cmd = sandbox.wrap(argv, policy(tmp_path), "/usr/bin/bwrap")
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent", "--clearenv"):
        assert flag in cmd
    assert cmd[cmd.index("--uid") + 1] == str(sandbox.SANDBOX_UID) != "0"
    tail = cmd[cmd.index("--") + 1 :]
    assert tail == [sys.executable, "/job/code/experiment.py", "--out_dir", "/job/out"]
    binds = {cmd[i + 2]: (cmd[i], cmd[i + 1]) for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind")}
    assert binds["/job/out"] == ("--bind", str(tmp_path / "work" / "out"))
    assert binds["/job/code"][0] == "--ro-bind"
    assert [d for d, (flag, _) in binds.items() if flag == "--bind"] == ["/job/out"]  # the only writable place
    assert "s3cret" not in " ".join(cmd) and not any(a.startswith("LAB_") for a in cmd)


def test_a_job_that_asks_for_the_network_keeps_it():
    cmd = sandbox.wrap(["true"], sandbox.Policy(network=True), "/usr/bin/bwrap")
    assert "--unshare-net" not in cmd and "--unshare-pid" in cmd


def test_without_bubblewrap_model_code_is_refused_unless_the_risk_is_accepted(monkeypatch):
    monkeypatch.setenv(sandbox.BWRAP_ENV, "no-such-bwrap")
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="--unsafe-no-sandbox"):
        sandbox.check_start("llm", "local")
    assert "no-such-bwrap" in sandbox.check_start("llm", "local", unsafe=True)
    assert sandbox.check_start("offline", "local").startswith("warning: no sandbox")
    assert sandbox.check_start("llm", "kubernetes") is None  # containers are the boundary there


@needs_bwrap
def test_with_bubblewrap_nothing_is_said():
    assert sandbox.check_start("llm", "local") is None


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


def test_agents_get_credential_files_not_values(tmp_path, monkeypatch):
    from bus.permissions import JOB_USER
    from bus.server import new_credentials
    from services.common.config import bus_config
    from services.lab.supervisor import LabOptions, Supervisor

    sup = Supervisor(LabOptions(home=tmp_path / "home"))
    sup.credentials = new_credentials()
    env = sup._agent_env("engineer")
    assert not set(sup.credentials.values()) & set(env.values())
    path = Path(env["LAB_NATS_PASSWORD_FILE"])
    assert path.read_text() == sup.credentials["engineer"] and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # Its job runners log in each as a user of its own (the auth service admits them by their job's key):
    # the engineer holds no shared runner password, in a file or otherwise.
    assert env["LAB_RUNNER_USER"] == JOB_USER
    assert not {"LAB_RUNNER_PASSWORD", "LAB_RUNNER_PASSWORD_FILE"} & set(env)
    assert not (tmp_path / "home" / "secrets" / "runner").exists()
    assert not (tmp_path / "home" / "secrets" / "lab").exists()  # the admin's password is written nowhere
    monkeypatch.delenv("LAB_NATS_PASSWORD", raising=False)
    monkeypatch.setenv("LAB_NATS_USER", "engineer")
    monkeypatch.setenv("LAB_NATS_PASSWORD_FILE", env["LAB_NATS_PASSWORD_FILE"])
    config = bus_config("engineer", "nats://127.0.0.1:4222")
    assert (config.user, config.password) == ("engineer", sup.credentials["engineer"])
    # The lab job secret: the engineers' alone, the same file for every replica, never in an environment.
    secret = Path(env["LAB_JOB_SECRET_FILE"])
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text()) >= 32 and secret.read_text() not in env.values()
    assert sup._agent_env("engineer", "engineer-2")["LAB_JOB_SECRET_FILE"] == str(secret)
    assert "LAB_JOB_SECRET_FILE" not in sup._agent_env("analyst")


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
