"""Where a job's output ends up: stdout (for `kubectl logs`) and log.txt, even when the run is stopped.

A Kubernetes Job deleted mid-run, or a stopped container, sends the runner
SIGTERM; the runner must still upload what the experiment printed so far. And
on Docker the NATS password arrives as a mounted file, not in the environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from agents.templates import bundle
from bus.schema import JobSpec, NatsAccess
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK
from bus.store import Artifacts
from services.common.process import alive
from services.runner import proctree

PLOT = "import argparse; p = argparse.ArgumentParser(); p.add_argument('--run_dir'); p.add_argument('--out_dir'); p.parse_args()\n"
GOOD = """
import argparse, json, os
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); a = p.parse_args()
print("epoch 1 loss 0.5", flush=True)
json.dump({"metrics": {"score": {"mean": 1.0, "stderr": 0.0, "values": [1.0]}}, "seeds": [0], "config": {}},
          open(os.path.join(a.out_dir, "final_info.json"), "w"))
"""
SLOW = """
import time
print("epoch 1 loss 0.5", flush=True)
time.sleep(120)
"""


async def _job(admin_bus, server, tmp_path: Path, experiment: str, job_id: str, password: str | None) -> JobSpec:
    d = tmp_path / job_id
    d.mkdir()
    (d / "experiment.py").write_text(textwrap.dedent(experiment))
    (d / "plot.py").write_text(PLOT)
    await (await Artifacts.open(admin_bus)).put(f"p1/{job_id}.tar.gz", bundle(d))
    return JobSpec(job_id=job_id, project="p1", experiment_id="x01", template="t", bundle_object=f"p1/{job_id}.tar.gz",
                   seeds=[0], wall_time_s=120, memory_mb=512, nats=NatsAccess(url=server.url, user="runner", password=password))


async def _log(admin_bus, job_id: str) -> str:
    return (await (await Artifacts.open(admin_bus)).get(f"p1/runs/{job_id}/log.txt")).decode()


async def test_output_is_teed_to_stdout_and_the_password_read_from_a_file(admin_bus, nats_server, tmp_path):
    secret = tmp_path / "runner-password"
    secret.write_text(nats_server.credentials["runner"] + "\n")
    job = await _job(admin_bus, nats_server, tmp_path, GOOD, "teed", password=None)  # nothing in LAB_JOB
    env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(tmp_path / "w1"), "LAB_NATS_PASSWORD_FILE": str(secret)}
    env.pop("LAB_NATS_PASSWORD", None)
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.runner"], env=env,
                                   capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "epoch 1 loss 0.5" in proc.stdout and "[runner] starting job teed" in proc.stdout
    assert "epoch 1 loss 0.5" in await _log(admin_bus, "teed")


async def test_a_failed_run_uploads_its_log(admin_bus, nats_server, tmp_path):
    job = await _job(admin_bus, nats_server, tmp_path, "print('about to fail', flush=True); raise SystemExit(1)", "bad",
                     password=nats_server.credentials["runner"])
    env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(tmp_path / "w2")}
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.runner"], env=env,
                                   capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert "about to fail" in await _log(admin_bus, "bad")


async def test_sigterm_mid_run_still_uploads_the_log_and_kills_the_experiment(admin_bus, nats_server, tmp_path):
    job = await _job(admin_bus, nats_server, tmp_path, SLOW, "stopped", password=nats_server.credentials["runner"])
    work = tmp_path / "w3"
    env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(work)}
    proc = subprocess.Popen([sys.executable, "-m", "services.runner"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = ""
    while "epoch 1" not in line:  # the experiment is running and has printed
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, "the runner ended before the experiment printed"
    tree = proctree.descendants(proc.pid)
    assert tree, "the experiment runs under the runner"
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.to_thread(proc.communicate, timeout=90)
    assert proc.returncode == EXIT_INFRA  # preempted, not the experiment's fault: a retry may resume it
    assert "preempted" in rest
    log = await _log(admin_bus, "stopped")
    assert "epoch 1 loss 0.5" in log and "SIGTERM" in log
    assert not [pid for pid in tree if alive(pid)]  # the experiment and everything it started died with the run
