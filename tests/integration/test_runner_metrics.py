"""A running job's /metrics (LAB_RUNNER_METRICS_PORT): scraped from a real runner while its experiment runs.

On the local sandbox the runner measures the experiment's processes itself; split in two (Docker, Kubernetes)
the launcher samples them into the shared volume and the runner serves what it wrote.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.schema import JobSpec, NatsAccess
from bus.schema.constants import EXIT_OK
from bus.store import Artifacts
from services.common.process import alive
from services.executors.local import LocalExecutor
from tests.integration.test_runner_limits import KEYS, template
from tests.integration.test_split_protocol import finish, public_dir, start_pair

pytestmark = pytest.mark.timeout(120)

# A second of CPU, 64 MiB held, then a line every 0.2 s for 6 s: long enough to be scraped mid-run.
BUSY = """
import argparse, json, os, time
p = argparse.ArgumentParser(); p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale")
a = p.parse_args()
t = time.process_time()
while time.process_time() - t < 1.0:
    pass
held = bytearray(64 << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
for step in range(30):
    print(f"step {step}", flush=True)
    time.sleep(0.2)
json.dump({"metrics": {"score": {"mean": 1.0, "stderr": 0.0, "values": [1.0]}}, "seeds": [0], "config": {}},
          open(os.path.join(a.out_dir, "final_info.json"), "w"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The runner's lab_runner_* samples by name; {} while nothing answers."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("lab_runner_"):
                found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def value(seen: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    [(labels, v)] = seen[name]
    assert labels["job_id"] == "m1"
    return v


async def busy_metrics(port: int, alive: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Scrape until the experiment's CPU second and 64 MiB show (while the runner still runs); the last scrape."""
    seen: dict[str, list[tuple[dict[str, str], float]]] = {}
    deadline = time.monotonic() + 60
    while alive() and time.monotonic() < deadline:
        seen = await asyncio.to_thread(scrape, port)
        if "lab_runner_memory_bytes" in seen and value(seen, "lab_runner_cpu_seconds") >= 0.9 \
                and value(seen, "lab_runner_memory_bytes") >= 64 << 20 and value(seen, "lab_runner_log_lines_total") >= 3:
            return seen
        await asyncio.sleep(0.3)
    raise AssertionError(f"no plausible usage while the job ran: {seen}")


def check(seen: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    [(info, one)] = seen["lab_runner_job_info"]
    assert info == {"project": "p1", "experiment": "x01", "job_id": "m1"} and one == 1
    assert 1.0 <= value(seen, "lab_runner_elapsed_seconds") < 60
    assert value(seen, "lab_runner_cpu_seconds") < value(seen, "lab_runner_elapsed_seconds") * (os.cpu_count() or 1)
    assert value(seen, "lab_runner_peak_memory_bytes") >= value(seen, "lab_runner_memory_bytes")
    assert value(seen, "lab_runner_memory_bytes") < 1 << 30
    assert "lab_runner_gpu_memory_bytes" not in seen  # a CPU job: absent, never a 0


async def test_a_local_runner_serves_its_jobs_usage_while_it_runs(admin_bus, nats_server, tmp_path, monkeypatch):
    """Through the local executor, which hands the engineer's LAB_RUNNER_METRICS_PORT on to the runner."""
    await (await Artifacts.open(admin_bus)).put("p1/template.tar.gz", template(tmp_path, BUSY))
    job = JobSpec(job_id="m1", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/template.tar.gz",
                  seeds=[0], wall_time_s=60, memory_mb=512, status_key=KEYS.key("p1", "m1"),
                  nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]))
    port = free_port()
    monkeypatch.setenv("LAB_RUNNER_METRICS_PORT", str(port))
    ex = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
    await ex.submit(job)
    pid = int((tmp_path / "jobs" / "m1" / "pid").read_text())
    try:
        check(await busy_metrics(port, lambda: alive(pid)))
        for _ in range(600):
            if (phase := await ex.poll("m1")).state != "running":
                break
            await asyncio.sleep(0.1)
        assert phase.state == "succeeded", phase
    finally:
        await ex.close()
    log = (tmp_path / "jobs" / "m1" / "runner.log").read_text()
    assert f"[runner] metrics at http://{socket.gethostname()}:{port}/metrics" in log


async def test_split_in_two_the_launcher_measures_and_the_runner_serves(admin_bus, nats_server):
    folder = public_dir()
    port = free_port()
    try:
        runner, launcher, _ = await start_pair(admin_bus, nats_server, folder, BUSY, "m1", LAB_RUNNER_METRICS_PORT=str(port))
        try:
            check(await busy_metrics(port, lambda: runner.poll() is None))
        finally:
            out, lout = finish(runner, launcher)
        assert runner.returncode == EXIT_OK, (out, lout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
