"""A job split into a runner container and an experiment container, through the Kubernetes executor.

The Docker executor's split runs on a real engine: tests/integration/test_docker_real.py uses ``Hostile`` from here.

Real: nats-server, the executors and what they submit, the job runner and the
launcher, each started by the test kubelet from its own container's command,
environment and mounts; as root, each container runs under its own uid in its
own pid namespace (tests/kubelet.py says what is emulated). The
hostile template (tests/hostile) is the experiment: it tries every attack and
records the outcome in final_info.json, which comes back through NATS like
any result. Without root the containers cannot be told apart by uid, so these
checks are skipped there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from agents.templates import bundle, load
from bus import subjects
from bus.jobkeys import JobKeys
from bus.schema import JobSpec, NatsAccess, decode
from bus.store import Artifacts
from services.executors import make_executor
from services.executors.render import job_name
from services.runner import split
from tests.conftest import ROOT as REPO
from tests.conftest import TESTS
from tests.integration.test_k8s_executor import NS, cluster, raw_secrets, wait_for  # noqa: F401 - pytest fixture
from tests.kubelet import Kubelet
from tests.proc_helpers import processes_with

pytestmark = pytest.mark.timeout(300)
HOSTILE = TESTS / "hostile"
KEYS = JobKeys("a lab job secret for the split tests")


async def statuses_of(admin_bus: Any, job_id: str) -> list[Any]:
    sub = await admin_bus.js.pull_subscribe(subjects.job_status("p1", job_id), stream=subjects.JOBS_STREAM)
    try:
        return [decode(m.data).body for m in await sub.fetch(10, timeout=2)]
    except nats.errors.TimeoutError:
        return []


class Hostile:
    """The hostile template's targets in a folder any uid can reach (pytest's tmp_path is root's alone)."""

    def __init__(self, nats_port: int) -> None:
        self.public = Path(tempfile.mkdtemp(prefix="hostile-split-"))
        self.public.chmod(0o755)
        home = self.public / "labhome"
        home.mkdir(mode=0o755)
        self.lab_secret = "labjson-" + os.urandom(8).hex()
        (home / "lab.json").write_text(json.dumps({"credentials": {"lab": self.lab_secret}}))
        (home / "lab.json").chmod(0o600)
        self.source = self.public / "hostile"
        shutil.copytree(HOSTILE, self.source)
        load(str(self.source))
        self.token = f"hostile-split-outlive-{os.getpid()}-{time.monotonic_ns()}"
        self.targets: dict[str, Any] = {"lab_home": str(home), "nats_port": nats_port, "template_source": str(self.source),
                                        "lab_source": str(REPO / "agents"), "outlive_token": self.token}

    def job(self, nats_url: str, password: str) -> JobSpec:
        return JobSpec(
            job_id="jh", project="p1", experiment_id="x01", template="hostile", bundle_object="p1/hostile.tar.gz",
            overrides={"targets": json.dumps(self.targets)}, seeds=[0, 1, 2], wall_time_s=60, memory_mb=512,
            nats=NatsAccess(url=nats_url, user="runner", password=password), status_key=KEYS.key("p1", "jh"),
        )

    async def check(self, admin_bus: Any, nats_server: Any, art: Artifacts, executor: str, reachable: set[str]) -> dict[str, Any]:
        """The job's signed results came back, and the experiment found no credential anywhere."""
        assert processes_with(self.token) == []  # the setsid child died with the experiment container
        statuses = await statuses_of(admin_bus, "jh")
        assert [s.state for s in statuses] == ["running", "succeeded"]
        assert [KEYS.refusal("p1", s) for s in statuses] == [None, None]  # the runner, holding the key, signed them
        assert {"p1/runs/jh/final_info.json", "p1/runs/jh/log.txt", "p1/runs/jh/env.json"} <= set(statuses[-1].artifacts)
        info = json.loads(await art.get("p1/runs/jh/final_info.json"))
        attacks = info["attacks"]
        worked = {k: v["detail"][:300] for k, v in attacks.items() if v["worked"] and k != "outlive_the_job"}
        assert set(worked) == reachable, worked
        assert not attacks["use_nats_without_credential"]["worked"]
        assert "uid=10002" in attacks["root_inside"]["detail"]  # the experiment container's uid, not the runner's
        assert "services.runner.runner" not in attacks["see_other_processes"]["detail"]
        assert attacks["outlive_the_job"]["worked"]
        # No credential of any kind in anything the experiment saw (its environment, /proc, files).
        recorded = json.dumps(info)
        secrets = {**nats_server.credentials, "lab.json": self.lab_secret, "status_key": KEYS.key("p1", "jh")}
        assert [name for name, value in secrets.items() if value in recorded] == []
        env = json.loads(attacks["credential_in_own_environment"]["detail"])
        assert not [k for k in env if k.startswith("LAB_") or "PASSWORD" in k or "TOKEN" in k], env
        log = (await art.get("p1/runs/jh/log.txt")).decode()
        assert "hostile: 1 attacks worked" in log or "hostile: 0 attacks worked" in log
        assert "in the experiment container" in log
        assert json.loads(await art.get("p1/runs/jh/env.json"))["executor"] == executor
        return attacks

    def close(self) -> None:
        shutil.rmtree(self.public, ignore_errors=True)


async def test_the_hostile_template_finds_no_credential_in_the_kubernetes_experiment_container(admin_bus, nats_server, cluster):  # noqa: F811
    _emu, url, kubeconfig = cluster
    runner_password = nats_server.credentials["runner"]
    hostile = Hostile(nats_server.port)
    try:
        art = await Artifacts.open(admin_bus)
        await art.put("p1/hostile.tar.gz", bundle(hostile.source))
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = url
        with client.ApiClient(cfg) as api:
            await asyncio.to_thread(client.CoreV1Api(api).create_namespaced_secret, NS, {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lab-nats-job", "namespace": NS},
                "stringData": {"user": "runner", "password": runner_password}})
        ex = make_executor("kubernetes", {"kubeconfig": kubeconfig, "namespace": NS, "nats_secret": "lab-nats-job",
                                          "command": [sys.executable, "-m", "services.runner"],
                                          "launcher_command": [sys.executable, "-m", "services.runner.launcher"],
                                          "events_interval_s": 0.05})
        async with Kubelet(url, NS, tick_s=0.1) as kubelet:
            if not kubelet.isolates:
                pytest.skip("the test kubelet isolates containers by uid and pid namespace only as root")
            # The runner container's own mount of the job's Secret (its status key): there, out of reach.
            job_file = kubelet.folder(f"{job_name('jh')}-00001", "runner", "job") / "job.json"
            hostile.targets["job_spec"] = str(job_file)
            try:
                await ex.submit(hostile.job(nats_server.url, runner_password))
                await wait_for(ex, "jh", "succeeded", timeout=180)
                assert job_file.is_file() and "status_key" in job_file.read_text()
            finally:
                await ex.close()
        # The pod's containers share one network: the NATS port answers, the bus does not (no credential to offer).
        attacks = await hostile.check(admin_bus, nats_server, art, "kubernetes", reachable={"connect_nats"})
        assert "Authorization Violation" in attacks["use_nats_without_credential"]["detail"]
        assert await raw_secrets(url) != []  # the job's Secret lives until cleanup (or the Job's TTL)
        await ex.cleanup("p1")
    finally:
        hostile.close()


def launcher_in(shared: Path, experiment: str, **env: str) -> subprocess.Popen[str]:
    """The launcher on its own, with the runner's side of the shared folder played by the test."""
    layout = split.Layout(shared)
    layout.prepare()
    (layout.code / "experiment.py").write_text(experiment)
    job = JobSpec(job_id="j", project="p1", experiment_id="x", template="t", bundle_object="p1/b", seeds=[0], wall_time_s=60,
                  memory_mb=256)
    split.write_atomic(layout.launch, split.LaunchSpec(job=job).model_dump_json())
    layout.alive.write_text("now\n")
    layout.ready.write_text("ready\n")
    return subprocess.Popen([sys.executable, "-m", "services.runner.launcher"], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO), split.SHARED_ENV: str(shared), **env})


def test_the_launcher_stops_the_experiment_when_the_runner_is_gone(tmp_path: Path) -> None:
    """No heartbeat from the runner: nobody would report the result, so the experiment is stopped, not left running."""
    token = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    proc = launcher_in(tmp_path, f"import time; time.sleep(120)  # {token}\n", LAB_RUNNER_ALIVE_STALE_S="1", LAB_TERM_GRACE_S="1")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    record = split.ExitRecord.model_validate_json((tmp_path / "job" / "launcher" / "exit.json").read_text())
    assert record.state == "failed" and "stopped: the runner stopped answering" in record.reason
    assert processes_with(token) == []


def test_the_runner_reads_no_link_the_experiment_planted(tmp_path: Path) -> None:
    """A result file that is a symlink (to the runner's own secret, say) is refused, not read."""
    secret = tmp_path / "job.json"
    secret.write_text('{"status_key": "k"}')
    out = tmp_path / "out"
    out.mkdir()
    (out / "leak.json").symlink_to(secret)
    with pytest.raises(split.SplitError, match="symbolic link"):
        split.read_regular(out / "leak.json")
    (out / "fifo.json").unlink(missing_ok=True)
    os.mkfifo(out / "fifo.json")
    with pytest.raises(split.SplitError, match="not a regular file"):
        split.read_regular(out / "fifo.json")
    (out / "ok.json").write_text("{}")
    assert split.read_regular(out / "ok.json") == b"{}"
