"""The runner and the launcher as two local processes sharing one folder, as the two containers of a job do.

Real nats-server, real runner, real launcher; what the containers add (other
uids, pid namespaces, no credential mounted) is tests/test_split_hostile.py's
subject. Here: the protocol's outcomes a container test would be slow to reach
— a crash, a planted link, a SIGTERM to both (a deleted pod), a runner that
never got the bus.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bus.schema import JobSpec, NatsAccess
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK
from bus.store import Artifacts
from services import split
from tests.test_jobrunner import GOOD, KEYS, template
from tests.test_split_hostile import statuses_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parent.parent


async def start_pair(admin_bus: Any, server: Any, tmp_path: Path, experiment: str, job_id: str,
                     **env: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str], Path]:
    art = await Artifacts.open(admin_bus)
    await art.put("p1/template.tar.gz", template(tmp_path, experiment))
    job = JobSpec(
        job_id=job_id, project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz",
        overrides={"scale": 2.0}, seeds=[0, 1, 2], wall_time_s=60, memory_mb=512,
        nats=NatsAccess(url=server.url, user="runner", password=server.credentials["runner"]), status_key=KEYS.key("p1", job_id),
    )
    shared, private = tmp_path / "shared", tmp_path / "runner"
    shared.mkdir()
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {"PYTHONPATH": str(REPO), split.SHARED_ENV: str(shared), **env}
    # The launcher first, as the executors start it; it has nothing of the runner's.
    launcher = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=base, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    runner = subprocess.Popen([sys.executable, "-m", "services.jobrunner"], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env=base | {"LAB_JOB_FILE": str(job_file), "LAB_JOB_DIR": str(private), "LAB_EXECUTOR_KIND": "kubernetes"})
    return runner, launcher, shared


def finish(*procs: subprocess.Popen[str]) -> list[str]:
    return [p.communicate(timeout=120)[0] for p in procs]


async def test_a_good_run_through_the_split_reports_results_plot_and_environment(admin_bus, nats_server, tmp_path):
    runner, launcher, shared = await start_pair(admin_bus, nats_server, tmp_path, GOOD, "ok")
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


async def test_a_crash_and_a_planted_link_fail_the_job_and_nothing_behind_the_link_is_read(admin_bus, nats_server, tmp_path):
    secret = tmp_path / "job.json"  # the runner's own job file (it exists once start_pair wrote it)
    experiment = f"""
import argparse, os, sys
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale")
a = p.parse_args()
os.symlink({str(secret)!r}, os.path.join(a.out_dir, "final_info.json"))
os.symlink({str(secret)!r}, os.path.join(a.out_dir, "leak.json"))
print("planted", flush=True)
"""
    runner, launcher, _ = await start_pair(admin_bus, nats_server, tmp_path, experiment, "link")
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_EXPERIMENT_FAILED, (out, lout)
    [_, done] = await statuses_of(admin_bus, "link")
    assert done.state == "failed" and done.reason == "invalid_output: final_info.json is a symbolic link; not read"
    art = await Artifacts.open(admin_bus)
    assert not [n for n in await art.list("p1/runs/link/") if "leak" in n or "final_info" in n]
    assert "status_key" not in (await art.get("p1/runs/link/log.txt")).decode()

    crash = "raise SystemExit('diverged: loss is nan')"
    (tmp_path / "c").mkdir()
    runner, launcher, _ = await start_pair(admin_bus, nats_server, tmp_path / "c", crash, "crash")
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_EXPERIMENT_FAILED, (out, lout)
    done = (await statuses_of(admin_bus, "crash"))[-1]
    assert done.reason.startswith("crashed: exit code 1") and "diverged: loss is nan" in done.reason


async def test_sigterm_to_both_containers_is_a_preemption_with_the_log_kept(admin_bus, nats_server, tmp_path):
    slow = "import time\nprint('working', flush=True)\ntime.sleep(60)\n"
    runner, launcher, shared = await start_pair(admin_bus, nats_server, tmp_path, slow, "pre", LAB_TERM_GRACE_S="2")
    log = shared / "job" / "launcher" / "experiment.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "working" in log.read_text()):
        assert time.monotonic() < deadline and runner.poll() is None, finish(runner, launcher)
        await asyncio.sleep(0.1)
    for p in (runner, launcher):  # what the kubelet does when the pod is deleted or evicted
        os.kill(p.pid, signal.SIGTERM)
    out, lout = finish(runner, launcher)
    assert runner.returncode == EXIT_INFRA and launcher.returncode == 0, (out, lout)  # retried, not failed
    record = split.ExitRecord.model_validate_json((shared / "job" / "launcher" / "exit.json").read_text())
    assert record.state == "preempted"
    log_txt = (await (await Artifacts.open(admin_bus)).get("p1/runs/pre/log.txt")).decode()
    assert "working" in log_txt and "preempted" in log_txt


async def test_a_runner_without_the_bus_releases_the_launcher_at_once(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    job = JobSpec(job_id="nb", project="p1", experiment_id="x", template="t", bundle_object="p1/b", seeds=[0], wall_time_s=60,
                  memory_mb=256, nats=NatsAccess(url="nats://127.0.0.1:1", user="runner", password="x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {
        "PYTHONPATH": str(REPO), split.SHARED_ENV: str(shared), "LAB_RUNNER_CONNECT_TIMEOUT_S": "3"}
    launcher = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runner = subprocess.run([sys.executable, "-m", "services.jobrunner"], env=env | {"LAB_JOB": job.model_dump_json(),
                            "LAB_JOB_DIR": str(tmp_path / "r")}, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert runner.returncode == EXIT_INFRA, runner.stderr
    out, _ = launcher.communicate(timeout=30)  # not waiting for a "ready" that will never come
    assert launcher.returncode == 0 and "nothing to run: the runner said stop" in out
