"""DockerExecutor on a real Docker engine (tests/docker_engine.py): Debian's dockerd on a private socket.

Real: the engine, runc, the kernel's namespaces, cgroups and OOM killer, the image (built here
from this host's Python and this checkout, never pulled), the job runner and the launcher in
their own containers, and nats-server. The runner container reaches NATS over the host's
network (the test engine has no bridge: ``--bridge=none``, no iptables); the experiment
container has no network at all. Skipped, with the reason counted, where no dockerd can be
started as root; CI sets LAB_REQUIRE_DOCKER=1 so that there it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agents.templates import bundle, load
from bus.schema import JobPhase, JobSpec, NatsAccess
from bus.store import Artifacts
from services.executors import docker as docker_executor
from services.executors.base import ExecutorError
from services.executors.docker import DockerExecutor
from services.executors.render import container_name, experiment_name, volume_name
from tests.conftest import TESTS
from tests.docker_engine import IMAGE, Engine, docker_engine  # noqa: F401 - pytest fixture
from tests.integration.test_docker_executor import STAND_IN
from tests.integration.test_split_hostile import KEYS, Hostile

pytestmark = pytest.mark.timeout(300)


class Host:
    """What the executor writes for the engine to mount (job files, the runner's password), where any uid may traverse."""

    def __init__(self, runner_password: str) -> None:
        self.public = Path(tempfile.mkdtemp(prefix="docker-real-"))
        self.public.chmod(0o755)
        self.jobs = self.public / "docker-jobs"
        self.password_file = self.public / "runner-password"
        self.password_file.write_text(runner_password)
        os.chown(self.password_file, 10001, 10001)
        self.password_file.chmod(0o400)

    def executor(self, engine: Engine, **options: Any) -> DockerExecutor:
        return DockerExecutor(base_url=engine.base_url, image=IMAGE, network="host", nats_password_file=str(self.password_file),
                              job_files_dir=str(self.jobs), **options)

    def close(self) -> None:
        shutil.rmtree(self.public, ignore_errors=True)


async def finish(ex: DockerExecutor, engine: Engine, job_id: str, timeout: float = 180) -> JobPhase:
    """Poll until the job is over; its containers' logs in the message if it never gets there."""
    deadline = time.monotonic() + timeout
    while (phase := await ex.poll(job_id)).state in ("pending", "running"):
        if time.monotonic() > deadline:
            logs = {n: engine.client.containers.get(n).logs()[-2000:] for n in (container_name(job_id), experiment_name(job_id))}
            raise AssertionError(f"{job_id} still {phase} after {timeout}s: {logs}")
        await asyncio.sleep(0.2)
    return phase


def inspect(engine: Engine, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = engine.client.api.inspect_container(name)
    return attrs


def assert_split(engine: Engine, job_id: str, host: Host) -> None:
    """The two containers as the engine holds them: uids, networks, read-only roots, one shared volume, one credential."""
    runner, experiment = inspect(engine, container_name(job_id)), inspect(engine, experiment_name(job_id))
    assert runner["Config"]["User"] == "10001:10001" and experiment["Config"]["User"] == "10002:10001"
    assert runner["HostConfig"]["NetworkMode"] == "host" and experiment["HostConfig"]["NetworkMode"] == "none"
    assert runner["HostConfig"]["ReadonlyRootfs"] and experiment["HostConfig"]["ReadonlyRootfs"]
    volume = {(m["Type"], m["Name"], m["Destination"]) for m in runner["Mounts"] if m["Type"] == "volume"}
    assert volume == {("volume", volume_name(job_id), "/scratch")}
    assert [(m["Type"], m.get("Name"), m["Destination"]) for m in experiment["Mounts"]] == [("volume", volume_name(job_id), "/scratch")]
    binds = {m["Source"]: m["RW"] for m in runner["Mounts"] if m["Type"] == "bind"}
    assert binds == {str(host.jobs / container_name(job_id)): False, str(host.password_file): False}
    secret_env = [e for e in experiment["Config"]["Env"] if any(w in e.partition("=")[0] for w in ("PASSWORD", "TOKEN", "NATS", "JOB_FILE", "KEY"))]
    assert secret_env == [], secret_env
    assert experiment["HostConfig"]["PidMode"] != "host" and experiment["HostConfig"]["CapDrop"] == ["ALL"]


async def test_the_hostile_template_runs_split_on_the_real_engine_and_finds_no_credential(
        admin_bus: Any, nats_server: Any, docker_engine: Engine) -> None:  # noqa: F811
    """A whole job on the real engine: the runner's signed statuses, logs and results come back through NATS as with the
    local executor, and the hostile experiment, in its own container under uid 10002 with no network, finds nothing."""
    hostile = Hostile(nats_server.port)
    host = Host(nats_server.credentials["runner"])
    hostile.targets["job_spec"] = str(host.jobs / container_name("jh") / "job.json")
    try:
        art = await Artifacts.open(admin_bus)
        await art.put("p1/hostile.tar.gz", bundle(hostile.source))
        ex = host.executor(docker_engine)
        try:
            await ex.submit(hostile.job(nats_server.url, nats_server.credentials["runner"]))
            phase = await finish(ex, docker_engine, "jh")
            assert phase.state == "succeeded", (phase, docker_engine.client.containers.get(container_name("jh")).logs()[-3000:])
            assert_split(docker_engine, "jh", host)
            await hostile.check(admin_bus, nats_server, art, "docker", reachable=set())
            assert b"launcher: the experiment succeeded" in docker_engine.client.containers.get(experiment_name("jh")).logs()
            await ex.cleanup("p1")
            assert docker_engine.lab_objects() == [] and list(host.jobs.iterdir()) == []
        finally:
            await ex.close()
    finally:
        hostile.close()
        host.close()


HOG = '''"""Touch far more memory than the job may hold (b"x" * n writes every page at once)."""
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--out_dir")
ap.add_argument("--seeds")
ap.add_argument("--x")
ap.add_argument("--sleep_s")
ap.parse_args()
print("hog: allocating 1 GiB", flush=True)
hog = b"x" * (1 << 30)
print("hog: still alive", len(hog), flush=True)
'''


async def test_a_job_over_its_memory_limit_is_killed_by_the_kernel_and_reported_out_of_memory(
        admin_bus: Any, nats_server: Any, docker_engine: Engine) -> None:  # noqa: F811
    """The experiment container's cgroup limit, not a poll of the process tree: the kernel kills the hog at
    once and Docker's OOMKilled becomes the job's reason, with the job's limit.

    ``launcher_overhead_mb=0`` makes the container's limit the job's own: with the default 128 MiB above it, the
    launcher's poll of the tree's memory (the local executor's guard, also run in the container) may catch the
    hog between the two limits first, and the job then fails as "oom: used ... > limit" from the launcher instead.
    """
    host = Host(nats_server.credentials["runner"])
    source = host.public / "sleep_template"
    shutil.copytree(TESTS / "sleep_template", source)
    (source / "experiment.py").write_text(HOG)
    load(str(source))
    try:
        art = await Artifacts.open(admin_bus)
        await art.put("p1/hog.tar.gz", bundle(source))
        job = JobSpec(job_id="jm", project="p1", experiment_id="x02", template="sleep_template", bundle_object="p1/hog.tar.gz",
                      seeds=[0], wall_time_s=60, memory_mb=256, status_key=KEYS.key("p1", "jm"),
                      nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]))
        ex = host.executor(docker_engine, launcher_overhead_mb=0)
        try:
            await ex.submit(job)
            phase = await finish(ex, docker_engine, "jm")
            logs = docker_engine.client.containers.get(container_name("jm")).logs()
            assert phase == JobPhase(state="failed", reason="killed: out of memory (limit 256 MiB)"), (phase, logs[-2000:])
            assert b"hog: allocating 1 GiB" in logs and b"hog: still alive" not in logs
            assert inspect(docker_engine, experiment_name("jm"))["State"]["OOMKilled"]
            assert not inspect(docker_engine, container_name("jm"))["State"]["OOMKilled"]  # the runner lived to report it
            await ex.cleanup("p1")
        finally:
            await ex.close()
    finally:
        host.close()


async def test_a_gpu_job_on_an_engine_without_the_nvidia_runtime_is_one_clear_line(
        docker_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The GPUs go to the engine as device requests by index from the pool; an engine with no NVIDIA runtime
    refuses them at start, and that refusal is one line naming the fix, with nothing of the job left behind."""
    host = Host("unused")
    held: list[dict[str, Any]] = []
    remove = docker_executor._remove

    def seen_then_removed(c: Any, job_id: str, s: Any) -> None:  # what the engine held just before the executor removed it
        held.append(c.api.inspect_container(experiment_name(job_id))["HostConfig"])
        remove(c, job_id, s)

    monkeypatch.setattr(docker_executor, "_remove", seen_then_removed)
    job = JobSpec(job_id="jg", project="p1", experiment_id="x03", template="t", bundle_object="p1/t.tar.gz", gpu=1, seeds=[0], wall_time_s=60, memory_mb=256,
                  nats=NatsAccess(url="nats://127.0.0.1:1", user="runner", password="x"))
    ex = host.executor(docker_engine, gpu_devices=["1", "0"])
    try:
        with pytest.raises(ExecutorError) as refused:
            await ex.submit(job)
        message = str(refused.value)
        assert "this Docker engine has no GPU runtime: install the NVIDIA Container Toolkit" in message and "\n" not in message
        assert [h["DeviceRequests"] for h in held] == [[{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["1"], "Capabilities": [["gpu"]],
                                                           "Options": {}}]]
        assert docker_engine.lab_objects() == [] and list(host.jobs.iterdir()) == []
    finally:
        await ex.close()
        host.close()


async def test_exit_codes_the_deadline_cancel_and_cleanup_on_the_real_engine(docker_engine: Engine) -> None:  # noqa: F811
    """The runner container's exit code and the wall-time backstop as the engine reports them, and cancel/cleanup
    removing containers, volume and job folder per job and per project (a stand-in runner: no NATS needed)."""
    host = Host("unused")
    ex = host.executor(docker_engine, command=STAND_IN, launcher_command=["python", "-c", "pass"], startup_margin_s=0)

    def stand_in(job_id: str, project: str = "p1", wall_time_s: float = 60, **overrides: Any) -> JobSpec:
        return JobSpec(job_id=job_id, project=project, experiment_id=f"x-{job_id}", template="t", bundle_object="b",
                       overrides=overrides, seeds=[0], wall_time_s=wall_time_s, memory_mb=256,
                       nats=NatsAccess(url="nats://127.0.0.1:1", user="runner", password="x"))

    try:
        for job in (stand_in("ok"), stand_in("bad", exit=3), stand_in("nobus", exit=4), stand_in("hung", wall_time_s=3, sleep=60),
                    stand_in("b1", project="beta", sleep=60)):
            await ex.submit(job)
        await ex.submit(stand_in("ok"))  # a redelivered submit finds the job's containers: nothing runs twice
        assert await finish(ex, docker_engine, "ok") == JobPhase(state="succeeded")
        assert (await finish(ex, docker_engine, "bad")).reason == "the experiment failed (runner exit 3)"
        assert (await finish(ex, docker_engine, "nobus")).reason == "the runner could not reach NATS (exit 4)"
        hung = await finish(ex, docker_engine, "hung")
        assert hung.state == "failed" and hung.reason.startswith("DeadlineExceeded"), hung
        assert (await ex.poll("never-submitted")).state == "missing"
        await ex.cancel("ok")
        await ex.cancel("ok")  # already gone: no error
        assert (await ex.poll("ok")).state == "missing" and not (host.jobs / container_name("ok")).exists()
        await ex.cleanup("p1")
        assert [o for o in docker_engine.lab_objects() if "-b1" not in o] == []  # another project's job stays
        assert [p.name for p in host.jobs.iterdir()] == [container_name("b1")]
        await ex.cleanup("beta")
        assert docker_engine.lab_objects() == [] and list(host.jobs.iterdir()) == []
    finally:
        await ex.close()
        host.close()


async def test_a_cuda_sized_reservation_runs_in_the_docker_experiment_container(
        admin_bus: Any, nats_server: Any, docker_engine: Engine) -> None:  # noqa: F811
    """The container's cgroup bounds its memory; no address-space cap stops a 128 GiB PROT_NONE reservation (as CUDA makes)."""
    from tests.integration.test_cuda_reservations import RESERVE

    host = Host(nats_server.credentials["runner"])
    source = host.public / "sleep_template"
    shutil.copytree(TESTS / "sleep_template", source)
    experiment = source / "experiment.py"
    experiment.write_text(experiment.read_text().replace("def main() -> None:", RESERVE + "\n\ndef main() -> None:", 1))
    load(str(source))
    try:
        art = await Artifacts.open(admin_bus)
        await art.put("p1/reserve.tar.gz", bundle(source))
        job = JobSpec(job_id="jr", project="p1", experiment_id="x03", template="sleep_template", bundle_object="p1/reserve.tar.gz",
                      seeds=[0], wall_time_s=60, memory_mb=256, status_key=KEYS.key("p1", "jr"),
                      nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]))
        ex = host.executor(docker_engine)
        try:
            await ex.submit(job)
            phase = await finish(ex, docker_engine, "jr")
            logs = docker_engine.client.containers.get(container_name("jr")).logs()
            assert phase.state == "succeeded", (phase, logs[-2000:])
            assert b"reserved 128 GiB" in logs
            await ex.cleanup("p1")
        finally:
            await ex.close()
    finally:
        host.close()
