"""The runner and the launcher as two local processes sharing one folder, as the two containers of a job do.

Real nats-server, real runner, real launcher; what the containers add (other
uids, pid namespaces, no credential mounted) is tests/integration/test_split_hostile.py's
subject. Here: the protocol's outcomes a container test would be slow to reach
— a crash, a planted link, a SIGTERM to both (a deleted pod), a runner that
never got the bus.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from bus.schema import JobSpec, NatsAccess
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK
from bus.store import Artifacts
from services.runner import split
from tests.conftest import ROOT as REPO
from tests.integration.test_runner_limits import GOOD, KEYS, template
from tests.integration.test_split_hostile import statuses_of
from tests.kubelet import _ENTER

pytestmark = pytest.mark.timeout(180)


ISOLATE = os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "setpriv", "mount"))


def as_user(cmd: list[str], env: dict[str, str], uid: int, stage: Path) -> tuple[list[str], dict[str, str]]:
    """As root: ``cmd`` under ``uid`` (group 10001, as both containers), in a pid namespace, as the test kubelet runs it."""
    if not ISOLATE:
        return cmd, env
    env = env | {"STAGE": str(stage), "RUN_UID": str(uid), "RUN_GID": "10001", "RUN_GROUPS": "10001"}
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", _ENTER, "sh", *cmd], env


def public_dir() -> Path:
    """A folder both uids reach (pytest's tmp_path is root's alone), removed at the end of the test."""
    folder = Path(tempfile.mkdtemp(prefix="split-protocol-"))
    folder.chmod(0o755)
    return folder


async def start_pair(admin_bus: Any, server: Any, tmp_path: Path, experiment: str, job_id: str, resumable: bool = False,
                     **env: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str], Path]:
    """The runner (uid 10001 as root) and the launcher (uid 10002) with a fresh shared folder under ``tmp_path``."""
    art = await Artifacts.open(admin_bus)
    await art.put("p1/template.tar.gz", template(tmp_path, experiment))
    job = JobSpec(
        job_id=job_id, project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz",
        overrides={"scale": 2.0}, seeds=[0, 1, 2], wall_time_s=60, memory_mb=512, resumable=resumable,
        nats=NatsAccess(url=server.url, user="runner", password=server.credentials["runner"]), status_key=KEYS.key("p1", job_id),
    )
    shared, private = tmp_path / "shared", tmp_path / "runner"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # an emptyDir
    private.mkdir(mode=0o700)
    job_file = private / "job.json"
    job_file.write_text(job.model_dump_json())
    job_file.chmod(0o400)
    if ISOLATE:
        os.chown(private, 10001, 10001)
        os.chown(job_file, 10001, 10001)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {"PYTHONPATH": str(REPO), split.SHARED_ENV: str(shared), **env}
    # The launcher first, as the executors start it; it has nothing of the runner's.
    cmd, lenv = as_user([sys.executable, "-m", "services.runner.launcher"], base | {"HOME": "/tmp"}, 10002, tmp_path / ".stage-l")
    launcher = subprocess.Popen(cmd, env=lenv, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    renv = base | {"LAB_JOB_FILE": str(job_file), "LAB_JOB_DIR": str(private / "work"), "LAB_EXECUTOR_KIND": "kubernetes"}
    cmd, renv = as_user([sys.executable, "-m", "services.runner"], renv, 10001, tmp_path / ".stage-r")
    runner = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=renv)
    return runner, launcher, shared


def sigterm(p: subprocess.Popen[str]) -> None:
    """SIGTERM to the container's process, as the runtime sends it to PID 1 (unshare would not pass it on)."""
    pid = p.pid
    if ISOLATE:
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        pid = int(children[0])
    os.kill(pid, signal.SIGTERM)


@pytest.fixture
def public() -> Any:
    folder = public_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def finish(*procs: subprocess.Popen[str]) -> list[str]:
    return [p.communicate(timeout=120)[0] for p in procs]


async def test_a_good_run_through_the_split_reports_results_plot_and_environment(admin_bus, nats_server, public):
    runner, launcher, shared = await start_pair(admin_bus, nats_server, public, GOOD, "ok")
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_OK and launcher.returncode == 0, (out, lout)
    statuses = await statuses_of(admin_bus, "ok")
    assert [s.state for s in statuses] == ["running", "succeeded"] and KEYS.refusal("p1", statuses[-1]) is None
    done = statuses[-1]
    assert done.final_info.metrics["score"].values == [2.0, 4.0, 6.0]
    assert "p1/runs/ok/score.png" in done.artifacts  # plot.py ran in the experiment's container
    assert done.environment.executor == "kubernetes" and done.environment.python
    log = (await (await Artifacts.open(admin_bus)).get("p1/runs/ok/log.txt")).decode()
    assert "training" in log and "in the experiment container" in log
    assert "training" in out  # the runner's stdout too: `kubectl logs -c runner`
    assert (shared / "job" / "runner" / "stop").is_file()  # the launcher was told the runner is done


async def test_a_crash_and_a_planted_link_fail_the_job_and_nothing_behind_the_link_is_read(admin_bus, nats_server, public):
    secret = public / "runner" / "job.json"  # the runner's own job file (it exists once start_pair wrote it)
    experiment = f"""
import argparse, os, sys
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale")
a = p.parse_args()
os.symlink({str(secret)!r}, os.path.join(a.out_dir, "final_info.json"))
os.symlink({str(secret)!r}, os.path.join(a.out_dir, "leak.json"))
print("planted", flush=True)
"""
    runner, launcher, _ = await start_pair(admin_bus, nats_server, public, experiment, "link")
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_EXPERIMENT_FAILED, (out, lout)
    [_, done] = await statuses_of(admin_bus, "link")
    assert done.state == "failed" and done.reason == "invalid_output: final_info.json is a symbolic link; not read"
    art = await Artifacts.open(admin_bus)
    assert not [n for n in await art.list("p1/runs/link/") if "leak" in n or "final_info" in n]
    assert "status_key" not in (await art.get("p1/runs/link/log.txt")).decode()

    crash = "raise SystemExit('diverged: loss is nan')"
    (public / "c").mkdir(mode=0o755)
    runner, launcher, _ = await start_pair(admin_bus, nats_server, public / "c", crash, "crash")
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_EXPERIMENT_FAILED, (out, lout)
    done = (await statuses_of(admin_bus, "crash"))[-1]
    assert done.reason.startswith("crashed: exit code 1") and "diverged: loss is nan" in done.reason


async def until_printed(shared, runner, launcher, text: str = "working") -> None:
    """Wait until the experiment has printed ``text`` into its log (the runner still alive)."""
    log = shared / "job" / "launcher" / "experiment.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and text in log.read_text()):
        assert time.monotonic() < deadline and runner.poll() is None, finish(runner, launcher)
        await asyncio.sleep(0.1)


async def test_sigterm_to_both_containers_is_a_preemption_with_the_log_kept(admin_bus, nats_server, public):
    slow = "import time\nprint('working', flush=True)\ntime.sleep(60)\n"
    runner, launcher, shared = await start_pair(admin_bus, nats_server, public, slow, "pre", LAB_TERM_GRACE_S="2")
    await until_printed(shared, runner, launcher)
    for p in (runner, launcher):  # what the kubelet does when the pod is deleted or evicted
        sigterm(p)
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_INFRA and launcher.returncode == 0, (out, lout)  # retried, not failed
    record = split.ExitRecord.model_validate_json((shared / "job" / "launcher" / "exit.json").read_text())
    assert record.state == "preempted"
    log_txt = (await (await Artifacts.open(admin_bus)).get("p1/runs/pre/log.txt")).decode()
    assert "working" in log_txt and "preempted" in log_txt


async def test_an_experiment_container_killed_for_memory_fails_the_job_without_waiting_for_the_deadline(admin_bus, nats_server, public):
    """The launcher dies (as a container OOMKilled does) and writes no exit record: its stale heartbeat tells the runner."""
    slow = "import time\nprint('working', flush=True)\ntime.sleep(60)\n"
    runner, launcher, shared = await start_pair(admin_bus, nats_server, public, slow, "oom", LAB_RUNNER_ALIVE_STALE_S="3")
    await until_printed(shared, runner, launcher)
    started = time.monotonic()
    os.killpg(launcher.pid, signal.SIGKILL)  # the whole container
    out, _ = finish(runner, launcher)
    assert runner.returncode == EXIT_EXPERIMENT_FAILED and time.monotonic() - started < 30, out
    done = (await statuses_of(admin_bus, "oom"))[-1]
    assert done.state == "failed" and done.reason.startswith("the experiment container stopped answering")
    assert "working" in (await (await Artifacts.open(admin_bus)).get("p1/runs/oom/log.txt")).decode()


async def test_a_runner_without_the_bus_releases_the_launcher_at_once(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    job = JobSpec(job_id="nb", project="p1", experiment_id="x", template="t", bundle_object="p1/b", seeds=[0], wall_time_s=60,
                  memory_mb=256, nats=NatsAccess(url="nats://127.0.0.1:1", user="runner", password="x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {
        "PYTHONPATH": str(REPO), split.SHARED_ENV: str(shared), "LAB_RUNNER_CONNECT_TIMEOUT_S": "3"}
    launcher = subprocess.Popen([sys.executable, "-m", "services.runner.launcher"], env=env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runner = subprocess.run([sys.executable, "-m", "services.runner"], env=env | {"LAB_JOB": job.model_dump_json(),
                            "LAB_JOB_DIR": str(tmp_path / "r")}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert runner.returncode == EXIT_INFRA, runner.stderr
    out, _ = launcher.communicate(timeout=30)  # not waiting for a "ready" that will never come
    assert launcher.returncode == 0 and "nothing to run: the runner said stop" in out


RESUMABLE = """
import argparse, json, os, signal, sys, time
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale")
a = p.parse_args()
state = os.path.join(os.environ["LAB_CHECKPOINT_DIR"], "state.json")
step = json.load(open(state))["step"] if os.path.exists(state) else 0

def save(n):
    with open(state, "w") as f:  # in place, as torch.save does: a restored file must be writable by this uid
        json.dump({"step": n}, f)

save(step + 1)
print(f"resumed at {step}", flush=True)
if step == 0:
    signal.signal(signal.SIGTERM, lambda *_: (save(2), sys.exit(0)))
    time.sleep(60)
json.dump({"metrics": {"score": {"mean": float(step), "stderr": 0.0, "values": [float(step)]}}, "seeds": [0], "config": {}},
          open(os.path.join(a.out_dir, "final_info.json"), "w"))
"""


async def test_a_preempted_split_job_resumes_from_its_checkpoint_under_the_experiment_uid(admin_bus, nats_server, public):
    """The checkpoint the runner restores is the experiment container's to overwrite, though the runner wrote it."""
    (public / "a1").mkdir(mode=0o755)
    runner, launcher, shared = await start_pair(admin_bus, nats_server, public / "a1", RESUMABLE, "res", resumable=True,
                                                LAB_TERM_GRACE_S="3", LAB_CHECKPOINT_SYNC_S="0.3")
    await until_printed(shared, runner, launcher, "resumed at 0")
    for p in (runner, launcher):
        sigterm(p)
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_INFRA, (out, lout)
    (public / "a2").mkdir(mode=0o755)  # the pod's retry: fresh volumes
    runner, launcher, shared = await start_pair(admin_bus, nats_server, public / "a2", RESUMABLE, "res", resumable=True)
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_OK, (out, lout)
    assert "restored a checkpoint" in out and "resumed at 2" in out
    done = (await statuses_of(admin_bus, "res"))[-1]
    assert done.state == "succeeded" and done.final_info.metrics["score"].values == [2.0]
    assert (shared / "job" / "checkpoint" / "state.json").read_text() == '{"step": 3}'
