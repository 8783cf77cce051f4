"""A job's runner reaches a NATS that speaks TLS with the lab's CA, on every executor.

Local: a real nats-server with JetStream, the lab's users and the TLS block of
k8s/components/nats-tls; the engineer's side (LAB_NATS_CA_FILE set) submits a job
through LocalExecutor, whose runner connects over TLS and reports the job done.
Docker and Kubernetes: the rendered objects mount the CA into the runner container
alone, never into the experiment's. Kubernetes, through kmock's emulator and the test
kubelet: the executor keeps the CA ConfigMap the Jobs mount, and their runners connect with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from bus import subjects
from bus.client import Bus, BusConfig
from bus.permissions import ADMIN
from bus.schema import JobSpec, NatsAccess, decode
from bus.server import free_port, new_credentials, render_config, server_binary
from bus.store import Artifacts
from services.executors import make_executor
from services.executors.base import ExecutorError
from services.executors.local import LocalExecutor
from services.executors.render import render_job
from tests.integration.test_k8s_executor import NS, cluster, raw_items, raw_jobs, wait_for  # noqa: F401 - pytest fixture
from tests.integration.test_nats_tls import OPENSSL, _wait_up, component_tls_block, make_ca, make_server_cert
from tests.integration.test_runner_limits import GOOD, KEYS, template
from tests.kubelet import Kubelet

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI makes the throwaway CA")
CA_ENV = "LAB_NATS_CA_FILE"


def tls_jetstream_server(tmp_path: Path, creds: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    """nats-server as `lab up` configures it (JetStream, the lab's users), with the component's client TLS block."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_ca(certs, "lab-ca")
    make_server_cert(certs, "lab-ca")
    port, mon = free_port(), free_port()
    conf = render_config(port=port, store_dir=tmp_path / "js", credentials=creds)
    conf += f"http: 127.0.0.1:{mon}\n" + component_tls_block().replace("/etc/nats-tls", str(certs))
    (tmp_path / "server.conf").write_text(conf)
    proc = subprocess.Popen([server_binary(), "-c", str(tmp_path / "server.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_up(proc, f"http://127.0.0.1:{mon}")
    return proc, f"nats://localhost:{port}", certs


async def test_a_local_job_reports_back_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = new_credentials()
    proc, url, certs = tls_jetstream_server(tmp_path, creds)
    monkeypatch.setenv(CA_ENV, str(certs / "ca.crt"))  # the engineer's, as the nats-tls component sets it
    try:
        bus = await Bus.connect(BusConfig(url=url, user=ADMIN, password=creds[ADMIN], name="tls-engineer"), reconnect=False, timeout=10)
        try:
            await bus.ensure_topology()
            await (await Artifacts.open(bus)).put("p1/tpl.tar.gz", template(tmp_path, GOOD))
            job = JobSpec(job_id="j1", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/tpl.tar.gz", seeds=[0, 1],
                          wall_time_s=60, memory_mb=512, status_key=KEYS.key("p1", "j1"),
                          nats=NatsAccess(url=url, user="runner", password=creds["runner"]))
            ex = LocalExecutor(jobs_dir=str(tmp_path / "jobs"), capacity=1)
            await ex.submit(job)
            deadline = time.monotonic() + 90
            while (phase := await ex.poll("j1")).state in ("pending", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
            await ex.close()
            log = (tmp_path / "jobs" / "j1" / "runner.log").read_text(errors="replace")
            assert phase.state == "succeeded", (phase, log[-2000:])
            # What the runner said over TLS (the server takes nothing else): the job's statuses, ending in success.
            sub = await bus.js.pull_subscribe(subjects.job_status("p1", "j1"), stream=subjects.JOBS_STREAM)
            states = [decode(m.data).body.state for m in await sub.fetch(10, timeout=5)]
            assert states[-1] == "succeeded" and "running" in states, states
        finally:
            await bus.close()
        # The engineer's own client key, were there one, is never handed on: only the CA.
        assert "LAB_NATS_TLS" not in (tmp_path / "jobs" / "j1" / "runner.log").read_text(errors="replace")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _job() -> JobSpec:
    return JobSpec(job_id="j1", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/tpl.tar.gz", seeds=[0],
                   wall_time_s=60, memory_mb=512, nats=NatsAccess(url="nats://nats.lab:4222", user="job.p1.j1", password="k"))


def test_the_kubernetes_runner_alone_mounts_the_ca_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CA_ENV, raising=False)
    job, secret = yaml.safe_load_all(render_job(_job(), "kubernetes", {"nats_ca_configmap": "lab-nats-ca"}))
    pod = job["spec"]["template"]["spec"]
    runner, experiment = pod["containers"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": "lab-nats-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "defaultMode": 0o444}
    [mount] = [m for m in runner["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert {"name": CA_ENV, "value": f"{mount['mountPath']}/ca.crt"} in runner["env"]
    assert volume["name"] not in {m["name"] for m in experiment["volumeMounts"]}
    assert CA_ENV not in {e["name"] for e in experiment["env"]}
    # Without the option nothing is mounted: a lab without TLS renders as before.
    plain = next(yaml.safe_load_all(render_job(_job(), "kubernetes", {})))["spec"]["template"]["spec"]
    assert not [v for v in plain["volumes"] if "configMap" in v] and CA_ENV not in {e["name"] for e in plain["containers"][0]["env"]}
    # A lab that speaks TLS mounts the ConfigMap its executor keeps, by default lab-nats-ca.
    monkeypatch.setenv(CA_ENV, "/run/secrets/nats-ca/ca.crt")
    tls = next(yaml.safe_load_all(render_job(_job(), "kubernetes", {})))["spec"]["template"]["spec"]
    assert [v["configMap"]["name"] for v in tls["volumes"] if "configMap" in v] == ["lab-nats-ca"]


def test_the_docker_runner_alone_mounts_the_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CA_ENV, raising=False)
    _volume, _file, runner, experiment = yaml.safe_load_all(render_job(_job(), "docker", {"nats_ca_file": "/srv/lab/ca.crt"}))
    bind = runner["volumes"]["/srv/lab/ca.crt"]
    assert bind["mode"] == "ro" and runner["environment"][CA_ENV] == bind["bind"]
    assert "/srv/lab/ca.crt" not in experiment["volumes"] and CA_ENV not in experiment["environment"]
    # No option: the engineer's own CA file (the engine sees it at the same path); no CA at all: no TLS.
    monkeypatch.setenv(CA_ENV, "/etc/lab/engineer-ca.crt")
    runner = list(yaml.safe_load_all(render_job(_job(), "docker", {})))[2]
    assert runner["volumes"]["/etc/lab/engineer-ca.crt"]["mode"] == "ro"
    monkeypatch.delenv(CA_ENV)
    runner = list(yaml.safe_load_all(render_job(_job(), "docker", {})))[2]
    assert CA_ENV not in runner["environment"] and len(runner["volumes"]) == 2


def _config_maps(url: str) -> Any:
    return raw_items(url, lambda api: client.CoreV1Api(api).list_namespaced_config_map)


# The runner container's stand-in: the job's NATS user connects with the lab's own client (bus.client, which
# trusts LAB_NATS_CA_FILE, as services.runner does) and exits 0, or 4 (the runner's "could not reach NATS").
# The whole runner over TLS: test_a_local_job_reports_back_over_tls (its 30 s through the test kubelet stay out of CI).
TLS_STAND_IN = [
    sys.executable, "-c",
    "import asyncio, json, os, sys\n"
    "from bus.client import Bus, BusConfig\n"
    "n = json.load(open(os.environ['LAB_JOB_FILE']))['nats']\n"
    "async def main():\n"
    "    try:\n"
    "        bus = await Bus.connect(BusConfig(url=n['url'], user=n['user'], password=n['password'], name='runner'), reconnect=False, timeout=5)\n"
    "    except Exception:\n"
    "        return 4\n"
    "    await bus.close()\n"
    "    return 0\n"
    "sys.exit(asyncio.run(main()))\n",
]


async def test_a_tls_lab_s_kubernetes_jobs_get_the_ca_configmap_the_executor_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Any) -> None:  # noqa: F811
    """Nobody makes the CA ConfigMap by hand: the executor keeps it from its own LAB_NATS_CA_FILE.

    Real: nats-server with the component's TLS block, the kubernetes client and executor, the lab's NATS
    client in the runner container, run by the test kubelet from the Job's pod with the ConfigMap's
    ``ca.crt`` written where the pod mounts it. Not shown by the emulator: RBAC (kmock enforces none;
    test_k8s_overlays checks the Role's grant), a real kubelet refreshing a running pod's ConfigMap volume,
    and its FailedMount wait for a missing ConfigMap (the test kubelet says CreateContainerConfigError).
    """
    _emu, url, kubeconfig = cluster
    creds = new_credentials()
    proc, nats_url, certs = tls_jetstream_server(tmp_path, creds)
    ca_file = tmp_path / "engineer-ca.crt"  # the engineer's mounted CA; rotated below
    shutil.copy(certs / "ca.crt", ca_file)
    make_ca(tmp_path, "next-ca")
    monkeypatch.setenv(CA_ENV, str(ca_file))
    ex = make_executor("kubernetes", {"kubeconfig": kubeconfig, "namespace": NS, "events_interval_s": 0.05, "backoff_limit": 0,
                                      "command": TLS_STAND_IN, "launcher_command": [sys.executable, "-c", "pass"]})

    def job(job_id: str) -> JobSpec:
        return JobSpec(job_id=job_id, project="p1", experiment_id="x01", template="tpl", bundle_object="p1/tpl.tar.gz", seeds=[0],
                       wall_time_s=60, memory_mb=512, nats=NatsAccess(url=nats_url, user="runner", password=creds["runner"]))

    async def config_map() -> dict[str, Any]:
        [found] = await raw_items(url, lambda api: client.CoreV1Api(api).list_namespaced_config_map)
        return found

    try:
        assert await raw_items(url, lambda api: client.CoreV1Api(api).list_namespaced_config_map) == []
        async with Kubelet(url, NS, tick_s=0.1):
            await ex.submit(job("j1"))
            cm = await config_map()
            assert cm["metadata"]["name"] == "lab-nats-ca" and cm["data"] == {"ca.crt": ca_file.read_text()}
            assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kenkyu-lab-engineer"
            [pod_job] = await raw_jobs(url)
            volumes = [v.get("configMap") for v in pod_job["spec"]["template"]["spec"]["volumes"]]
            assert {"name": "lab-nats-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "defaultMode": 0o444} in volumes
            await wait_for(ex, "j1", "succeeded")  # connected over TLS, trusting the mounted CA
            # Rotated to a CA that did not sign the server's certificate: the ConfigMap follows, and the runner refuses the server.
            shutil.copy(tmp_path / "next-ca.crt", ca_file)
            await ex.submit(job("j2"))
            assert (await config_map())["data"] == {"ca.crt": ca_file.read_text()}
            assert "could not reach NATS" in (await wait_for(ex, "j2", "failed")).reason
            # A real rotation (the new CA beside the old): the next job trusts both.
            ca_file.write_text((certs / "ca.crt").read_text() + (tmp_path / "next-ca.crt").read_text())
            await ex.submit(job("j3"))
            assert (await config_map())["data"] == {"ca.crt": ca_file.read_text()}
            await wait_for(ex, "j3", "succeeded")
        # A file holding a key is never copied into a ConfigMap: the job is refused with the reason.
        ca_file.write_text(ca_file.read_text() + (tmp_path / "next-ca.key").read_text())
        with pytest.raises(ExecutorError, match="not PEM CA certificates alone"):
            await ex.submit(job("j4"))
        assert "PRIVATE" not in json.dumps(await config_map()) and len(await raw_jobs(url)) == 3
    finally:
        await ex.close()
        proc.terminate()
        proc.wait(timeout=30)
