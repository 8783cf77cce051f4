"""`lab run` with an embedded lab leaves nothing behind: not on SIGINT, SIGTERM or SIGHUP, and not even on SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.common.process import alive
from services.runner import proctree
from tests.conftest import lab_cmd

pytestmark = pytest.mark.timeout(900)


def processes_of(home: Path, runners: bool = False) -> dict[int, str]:
    """Every live process of the lab at ``home``: the nats-server on its store, the agents and clients with it as LAB_HOME.

    Job runners (LAB_HOME in their environment) are left out unless ``runners``: only the test that stops a
    run mid-job waits for them; the others stop their lab before any job starts.
    """
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or (not runners and ("services.runner" in cmd or f"{home}/jobs/" in cmd)):
            continue
        if str(home) in cmd or f"LAB_HOME={home}".encode() in env:
            found[int(d.name)] = cmd
    return found


def start_embedded_run(env: dict, home: Path, log: Path, template: str = "grokking") -> subprocess.Popen:
    proc = subprocess.Popen(
        lab_cmd("run", "--template", template, "--fast", "--max-ideas", "1", "--max-rounds", "0", "--quiet", "--out", str(home.parent / "out")),
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while "started on template" not in log.read_text():  # the lab is up and the project is on the bus
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return proc


def settle(home: Path, timeout: float = 30) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def stop_runners(home: Path) -> None:
    for pid_file in home.glob("jobs/*/pid"):  # a runner leads its own session; its sandbox dies with it
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


def kill_everything(home: Path) -> None:
    """What a test leaves, gone whatever it asserted: the job runners, then every other process of the lab."""
    stop_runners(home)
    for pid in processes_of(home):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_everything_the_run_started(lab_env, tmp_path, sig):
    home, env = lab_env
    log = tmp_path / "run.log"
    proc = start_embedded_run(env, home, log)
    try:
        server_pid = json.loads((home / "lab.json").read_text())["server_pid"]
        assert server_pid in processes_of(home)
        proc.send_signal(sig)
        proc.wait(90)
        assert proc.returncode == 128 + sig, log.read_text()[-3000:]
        assert settle(home) == {}, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
        assert not (home / "lab.json").exists() and not (home / "run" / "lab.pids").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_everything(home)


def test_lab_down_stops_what_a_sigkilled_run_left(lab_env, tmp_path):
    home, env = lab_env
    proc = start_embedded_run(env, home, tmp_path / "run.log")
    try:
        proc.kill()
        proc.wait()
        assert json.loads((home / "lab.json").read_text())["server_pid"] in processes_of(home)
        down = subprocess.run(lab_cmd("down"), env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0 and "lab stopped." in down.stdout, down.stdout + down.stderr
        assert settle(home) == {}
    finally:
        kill_everything(home)


def test_a_sigkilled_run_leaves_nothing_that_blocks_the_next_start(lab_env, tmp_path):
    home, env = lab_env
    proc = start_embedded_run(env, home, tmp_path / "run.log")
    try:
        proc.kill()
        proc.wait()
        left = processes_of(home)
        server_pid = json.loads((home / "lab.json").read_text())["server_pid"]
        assert server_pid in left, "SIGKILL cannot be caught: its server and agents are still there"
        up = subprocess.run(lab_cmd("up", "--detach"), env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stderr
        now = processes_of(home)
        assert not set(left) & set(now), f"left over from the killed run: {[left[p] for p in set(left) & set(now)]}"
        supervisor_log = (home / "supervisor.log").read_text()
        assert f"stopped process {server_pid} left running by a lab that was killed" in supervisor_log
        down = subprocess.run(lab_cmd("down"), env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert settle(home) == {}
    finally:
        kill_everything(home)


def slow_sleep_template(tmp_path: Path) -> Path:
    """tests/sleep_template whose fast runs sleep a minute: a job is surely in flight when the signal comes."""
    folder = tmp_path / "sleep_template"
    shutil.copytree(Path(__file__).parents[1] / "sleep_template", folder)
    spec = folder / "template.yaml"
    spec.write_text(spec.read_text().replace("fast:\n  sleep_s: 1.0", "fast:\n  sleep_s: 60.0"))
    return folder


def wait_for_runner(proc: subprocess.Popen, home: Path, log: Path) -> tuple[int, dict[int, int]]:
    """The first job's runner, once it runs its experiment: its pid (from the executor's pid file) and its process tree."""
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        for pid_file in home.glob("jobs/*/pid"):
            try:
                runner = int(pid_file.read_text())
            except ValueError:
                continue
            tree = proctree.descendants(runner)
            if tree:  # the experiment (in its sandbox) has started under the runner
                return runner, tree
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_job_ends_the_runner_and_its_experiment(lab_env, tmp_path, sig):
    """The runner carries LAB_HOME in its environment, not its command line: every such process must go."""
    home, env = lab_env
    log = tmp_path / "run.log"
    proc = start_embedded_run(env, home, log, template=str(slow_sleep_template(tmp_path)))
    try:
        runner, tree = wait_for_runner(proc, home, log)
        assert runner in processes_of(home, runners=True), "the runner names the lab's home in its environment"
        proc.send_signal(sig)
        proc.wait(90)
        assert proc.returncode == 128 + sig, log.read_text()[-3000:]
        assert settle(home) == {}, log.read_text()[-3000:]
        left = processes_of(home, runners=True)
        assert left == {}, f"outlived the run: {left}"
        assert not [p for p in [runner, *tree] if alive(p)], "the job's process tree outlived the run"
        assert f"stopped job runner {runner}" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_everything(home)
