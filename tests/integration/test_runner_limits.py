"""The job runner enforces limits from outside: crash, timeout, memory, a child that tries to outlive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents.templates import bundle
from bus import subjects
from bus.jobkeys import JobKeys
from bus.schema import JobSpec, NatsAccess, decode
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK
from bus.store import Artifacts
from services.common.process import alive
from services.executors.base import ExecutorError
from services.executors.local import LocalExecutor
from tests.proc_helpers import processes_with

KEYS = JobKeys("a lab job secret for the tests")

GOOD = """
import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale", type=float, default=1.0)
a = p.parse_args()
seeds = [int(s) for s in a.seeds.split(",")]
values = [a.scale * (s + 1) for s in seeds]
mean = sum(values) / len(values)
sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
print("training", flush=True)
json.dump({"metrics": {"score": {"mean": mean, "stderr": sd / len(values) ** 0.5, "values": values}}, "seeds": seeds,
           "config": {"scale": a.scale}, "device": "cpu"}, open(os.path.join(a.out_dir, "final_info.json"), "w"))
"""
PLOT = """
import argparse, os
p = argparse.ArgumentParser(); p.add_argument("--run_dir"); p.add_argument("--out_dir"); a = p.parse_args()
os.makedirs(a.out_dir, exist_ok=True)
open(os.path.join(a.out_dir, "score.png"), "wb").write(b"\\x89PNG\\r\\n\\x1a\\n")
"""


def template(tmp: Path, experiment: str) -> bytes:
    d = tmp / "tpl"
    d.mkdir(exist_ok=True)
    (d / "experiment.py").write_text(textwrap.dedent(experiment))
    (d / "plot.py").write_text(textwrap.dedent(PLOT))
    return bundle(d)


async def run_job(admin_bus, server, tmp_path, experiment: str, *, wall: float = 30, memory_mb: int = 512, job_id: str = "j1", **env: str):
    art = await Artifacts.open(admin_bus)
    await art.put("p1/template.tar.gz", template(tmp_path, experiment))
    job = JobSpec(
        job_id=job_id, project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz",
        overrides={"scale": 2.0}, seeds=[0, 1, 2], wall_time_s=wall, memory_mb=memory_mb,
        nats=NatsAccess(url=server.url, user="runner", password=server.credentials["runner"]),
        status_key=KEYS.key("p1", job_id),
    )
    work = tmp_path / f"work-{job_id}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.runner"],
        env={**os.environ, **job.env(), "LAB_JOB_DIR": str(work), **env},
        capture_output=True, text=True, timeout=wall + 60,
    )
    elapsed = time.monotonic() - started
    sub = await admin_bus.js.pull_subscribe(subjects.job_status("p1", job_id), stream=subjects.JOBS_STREAM)
    statuses = []
    try:
        for m in await sub.fetch(10, timeout=2):
            statuses.append(decode(m.data).body)
    except Exception:
        pass
    return proc, statuses, work, elapsed


async def test_a_good_run_reports_results_and_environment(admin_bus, nats_server, tmp_path):
    proc, statuses, work, _ = await run_job(admin_bus, nats_server, tmp_path, GOOD)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert [s.state for s in statuses] == ["running", "succeeded"]
    assert [KEYS.refusal("p1", s) for s in statuses] == [None, None]  # each signed with the job's key, as the engineer checks
    done = statuses[-1]
    assert done.final_info.metrics["score"].values == [2.0, 4.0, 6.0]
    assert done.environment.python and done.environment.cpu_count >= 1 and done.environment.packages.get("numpy")
    names = set(done.artifacts)
    assert {"p1/runs/j1/final_info.json", "p1/runs/j1/score.png", "p1/runs/j1/env.json", "p1/runs/j1/log.txt"} <= names
    log = (await (await Artifacts.open(admin_bus)).get("p1/runs/j1/log.txt")).decode()
    assert "training" in log and "--scale 2.0" in log


BURN = """
import subprocess, sys, time
def burn(s):
    while time.process_time() < s:
        pass
# Half the CPU time in a child the experiment waits for, half in itself: the whole process tree counts.
subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.6: pass"], check=True)
burn(0.6)
""" + GOOD


async def test_a_run_reports_the_cpu_seconds_its_process_tree_burned_and_no_gpu_seconds(admin_bus, nats_server, tmp_path):
    proc, statuses, _, _ = await run_job(admin_bus, nats_server, tmp_path, BURN)
    assert proc.returncode == EXIT_OK, proc.stderr
    done = statuses[-1]
    assert done.state == "succeeded" and done.gpu_s == 0.0
    assert done.cpu_s is not None and 1.1 <= done.cpu_s <= done.wall_s * (os.cpu_count() or 1) + 1.0, (done.cpu_s, done.wall_s)


async def test_a_crash_is_reported_with_its_last_line(admin_bus, nats_server, tmp_path):
    proc, statuses, _, _ = await run_job(admin_bus, nats_server, tmp_path, "raise SystemExit('diverged: loss is nan')")
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].state == "failed"
    assert statuses[-1].reason.startswith("crashed: exit code 1") and "diverged: loss is nan" in statuses[-1].reason


async def test_missing_output_is_invalid(admin_bus, nats_server, tmp_path):
    proc, statuses, _, _ = await run_job(admin_bus, nats_server, tmp_path, "print('done, but wrote nothing')")
    assert proc.returncode == EXIT_EXPERIMENT_FAILED and statuses[-1].reason.startswith("invalid_output")


async def test_a_hang_is_killed_at_the_wall_time_with_everything_it_started(admin_bus, nats_server, tmp_path):
    """The experiment ignores SIGTERM and starts a child in a new session: both die at the limit."""
    token = f"outlive-{os.getpid()}-{time.monotonic_ns()}"
    experiment = f"""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {token!r}], start_new_session=True)
    # Trying to extend its own time: the limit is not the experiment's to change.
    os.environ["LAB_WALL_TIME"] = "100000"
    time.sleep(300)
    """
    proc, statuses, _, elapsed = await run_job(admin_bus, nats_server, tmp_path, experiment, wall=3)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].reason.startswith("timeout: exceeded the wall-time limit of 3s")
    assert elapsed < 30
    time.sleep(0.5)
    assert processes_with(token) == []


async def test_memory_over_the_limit_is_killed(admin_bus, nats_server, tmp_path):
    experiment = """
    import time
    hog = []
    for _ in range(200):
        hog.append(bytearray(10 * 1024 * 1024))  # 10 MiB at a time, touched
        time.sleep(0.02)
    time.sleep(30)
    """
    proc, statuses, _, _ = await run_job(admin_bus, nats_server, tmp_path, experiment, memory_mb=150)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].reason.startswith("oom: used") and "limit 150 MiB" in statuses[-1].reason


async def test_no_bus_is_an_infrastructure_failure(tmp_path):
    job = JobSpec(
        job_id="j9", project="p1", experiment_id="x", template="t", bundle_object="p1/none", seeds=[0, 1, 2],
        wall_time_s=5, memory_mb=128, nats=NatsAccess(url="nats://127.0.0.1:1"),
    )
    env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(tmp_path / "w"), "LAB_RUNNER_CONNECT_TIMEOUT_S": "3"}
    proc = subprocess.run([sys.executable, "-m", "services.runner"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_INFRA and "cannot reach the bus" in proc.stderr


def test_a_bad_job_description_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "services.runner"], env={**os.environ, "LAB_JOB": '{"job_id": 3}'},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "not a valid job" in proc.stderr


async def test_local_executor_submits_once_and_cancels(admin_bus, nats_server, tmp_path):
    token = f"cancelled-{os.getpid()}-{time.monotonic_ns()}"
    experiment = f"""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {token!r}], start_new_session=True)
    time.sleep(60)
    """
    art = await Artifacts.open(admin_bus)
    await art.put("p1/template.tar.gz", template(tmp_path, experiment))
    ex = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
    job = JobSpec(
        job_id="jl", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz", seeds=[0, 1, 2],
        wall_time_s=60, memory_mb=256, nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]),
    )
    assert ex.capacity() == 1
    assert (await ex.poll("jl")).state == "missing"
    await ex.submit(job)
    pid = (tmp_path / "jobs" / "jl" / "pid").read_text()
    await ex.submit(job)  # a redelivered request: nothing new starts
    assert (tmp_path / "jobs" / "jl" / "pid").read_text() == pid
    assert (await ex.poll("jl")).state == "running"
    for _ in range(300):
        if processes_with(token):
            break
        time.sleep(0.1)
    assert processes_with(token), "the experiment's child never started"
    assert not (tmp_path / "jobs" / "jl" / "work" / "child.pgid").exists()  # no record the experiment could forge
    await ex.cleanup("p1")
    for _ in range(50):  # the sandbox dies with its runner; give the kernel a moment
        if not processes_with(token):
            break
        time.sleep(0.1)
    assert (await ex.poll("jl")).state == "failed"
    assert processes_with(token) == []
    await ex.close()


async def test_a_job_that_ended_while_no_executor_watched_it_is_swept_at_cleanup(admin_bus, nats_server, tmp_path):
    """The engineer (and its executor) restarted while the job ran; its status came over the bus, so nothing polled it:
    the project's cleanup still moves the runner's files up and removes work/ (the chaos test's agent kills found it)."""
    art = await Artifacts.open(admin_bus)
    await art.put("p1/template.tar.gz", template(tmp_path, "pass"))
    job = JobSpec(
        job_id="je", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz", seeds=[0],
        wall_time_s=60, memory_mb=256, nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]),
    )
    first = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
    await first.submit(job)
    d = tmp_path / "jobs" / "je"
    for _ in range(600):
        if (d / "work" / "result.json").is_file() and not alive(int((d / "pid").read_text())):
            break
        time.sleep(0.1)
    assert (d / "work" / "result.json").is_file() and (d / "work" / "log.txt").is_file()
    restarted = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)  # knows no process of it
    await restarted.cleanup("p1")
    assert not (d / "work").exists() and (d / "log.txt").is_file() and (d / "result.json").is_file()
    await first.close()
    await restarted.close()


async def test_local_executor_refuses_a_job_directory_of_another_project(tmp_path):
    ex = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
    (tmp_path / "jobs" / "jx").mkdir(parents=True)
    (tmp_path / "jobs" / "jx" / "job.json").write_text(json.dumps({"project": "p1", "experiment_id": "x01"}))
    job = JobSpec(
        job_id="jx", project="p2", experiment_id="x01", template="tpl", bundle_object="p2/template.tar.gz", seeds=[0],
        wall_time_s=60, memory_mb=256, nats=NatsAccess(url="nats://127.0.0.1:1"),
    )
    with pytest.raises(ExecutorError, match="already exists for project 'p1'.*refusing to adopt"):
        await ex.submit(job)
    await ex.submit(job.model_copy(update={"project": "p1"}))  # its own job: adopted, nothing started
    assert not (tmp_path / "jobs" / "jx" / "pid").exists()


def test_job_ids_are_per_project_experiment_and_attempt():
    from agents.engineer.workflow import job_id_for

    ids = {job_id_for(p, e, a) for p in ("p1", "p2") for e in ("x01-baseline", "x02") for a in (1, 2)}
    assert len(ids) == 8 and job_id_for("p1", "x01-baseline") == job_id_for("p1", "x01-baseline", 1)
