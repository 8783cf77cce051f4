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
from services.executors import make_executor
from services.executors.base import ExecutorError
from services.executors.docker import DockerExecutor
from services.executors.render import container_name, experiment_name, volume_name
from tests.conftest import TESTS
from tests.docker_engine import IMAGE, PART_OF, Engine, docker_engine  # noqa: F401 - pytest fixture
from tests.integration.test_docker_executor import LAUNCHER_STAND_IN, STAND_IN
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


# ------------------------------------------------ moved here from the fake engine (tests/integration/test_docker_executor.py)


def stand_in(job_id: str, project: str = "p1", network: bool = False, nats: NatsAccess | None = None, **overrides: Any) -> JobSpec:
    """A job for the stand-in runner (it reads its job file, sleeps, exits as told): no NATS, no bundle."""
    return JobSpec(job_id=job_id, project=project, experiment_id=f"x-{job_id}", template="t", bundle_object="b", overrides=overrides,
                   seeds=[0], wall_time_s=60, memory_mb=512, cpu=1.5, network=network,
                   nats=nats or NatsAccess(url="nats://127.0.0.1:1", user="runner", password="pw"))


def stand_in_executor(host: Host, engine: Engine, **options: Any) -> DockerExecutor:
    return host.executor(engine, command=STAND_IN, launcher_command=LAUNCHER_STAND_IN, **options)


def env_of(attrs: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in attrs["Config"]["Env"])


async def test_the_two_containers_limits_lockdown_and_provenance_as_the_engine_holds_them(docker_engine: Engine) -> None:  # noqa: F811
    """Two containers and a volume as the engine made them: the runner with the job (a read-only file), the password
    (a read-only file of its own) and the image it runs; the experiment with the limits and nothing else."""
    host = Host("pw\n")
    ex = stand_in_executor(host, docker_engine)
    try:
        await ex.submit(stand_in("lock"))
        assert await finish(ex, docker_engine, "lock") == JobPhase(state="succeeded")
        runner, experiment = inspect(docker_engine, container_name("lock")), inspect(docker_engine, experiment_name("lock"))
        assert_split(docker_engine, "lock", host)
        assert runner["Config"]["Cmd"] == STAND_IN and experiment["Config"]["Cmd"] == LAUNCHER_STAND_IN
        env = env_of(runner)
        assert env["LAB_JOB_FILE"] == "/run/lab/job/job.json" and env["LAB_NATS_PASSWORD_FILE"] == "/run/secrets/lab-nats-password"
        assert "LAB_JOB" not in env and not any("pw" in v for v in env.values())  # the job (its key) is a file, not the environment
        job_file = host.jobs / container_name("lock") / "job.json"
        assert job_file.stat().st_mode & 0o777 == 0o400 and (job_file.stat().st_uid, job_file.stat().st_gid) == (10001, 10001)
        assert JobSpec.model_validate_json(job_file.read_text()).nats.password in ("", None)  # the password is its file's alone
        # The experiment's environment: the image's own and the launcher's; no job, no credential, nothing of the runner's.
        assert sorted(env_of(experiment)) == ["HOME", "LAB_SHARED_DIR", "MPLCONFIGDIR", "PATH", "PYTHONDONTWRITEBYTECODE",
                                              "PYTHONUNBUFFERED", "TMPDIR"]
        for attrs in (runner, experiment):
            labels, hc = attrs["Config"]["Labels"], attrs["HostConfig"]
            assert labels["lab.kenkyu.dev/project"] == "p1" and labels["lab.kenkyu.dev/job"] == "lock"
            assert hc["SecurityOpt"] == ["no-new-privileges"] and set(hc["Tmpfs"]) == {"/tmp"} and not hc["AutoRemove"]
            assert hc["IpcMode"] in ("private", "") and hc["PidMode"] == ""  # each its own pid and IPC namespace
        eh, rh = experiment["HostConfig"], runner["HostConfig"]
        assert eh["Memory"] == (512 + 128) * 2**20 and eh["NanoCpus"] == 1_500_000_000 and eh["ShmSize"] == 2048 * 2**20
        assert rh["Memory"] == 256 * 2**20 and not rh["DeviceRequests"] and not eh["DeviceRequests"]
        assert docker_engine.client.volumes.get(volume_name("lock")).attrs["Options"] == {
            "type": "tmpfs", "device": "tmpfs", "o": "size=4096m,uid=10001,gid=10001,mode=0770"}
        # env.json's provenance: a locally built image has no repository digest, so its id; the engine's own host name.
        image_id = docker_engine.client.images.get(IMAGE).id
        assert env["LAB_JOB_IMAGE"] == f"{IMAGE} (image id {image_id})" and runner["Image"] == image_id
        assert env["LAB_NODE_NAME"] == docker_engine.client.info()["Name"] != ""
        await ex.cleanup("p1")
    finally:
        await ex.close()
        host.close()


async def test_a_job_of_its_own_user_keeps_its_key_and_never_gets_the_shared_password_file(docker_engine: Engine) -> None:  # noqa: F811
    """Issue 16: under the auth callout the job's key is its password; a shared file left in the config stays out of its runner."""
    host = Host("shared\n")
    ex = stand_in_executor(host, docker_engine)
    own = stand_in("own", nats=NatsAccess(url="nats://127.0.0.1:1", user="job.p1.own", password="k" * 64))
    try:
        await ex.submit(own.model_copy(update={"status_key": "k" * 64}))
        assert await finish(ex, docker_engine, "own") == JobPhase(state="succeeded")
        runner = inspect(docker_engine, container_name("own"))
        nats = JobSpec.model_validate_json((host.jobs / container_name("own") / "job.json").read_text()).nats
        assert (nats.user, nats.password) == ("job.p1.own", "k" * 64)
        assert "LAB_NATS_PASSWORD_FILE" not in env_of(runner)
        binds = {m["Source"]: m["Destination"] for m in runner["Mounts"] if m["Type"] == "bind"}
        assert binds == {str(host.jobs / container_name("own")): "/run/lab/job"}
        await ex.cleanup("p1")
    finally:
        await ex.close()
        host.close()


async def test_submit_is_idempotent_by_name_and_another_project_s_container_is_refused(docker_engine: Engine) -> None:  # noqa: F811
    """A redelivered submit finds the job's containers and starts nothing twice, even after they finished; a job of
    another project under the same id is refused, never adopted."""
    host = Host("unused")
    ex = stand_in_executor(host, docker_engine)
    try:
        await ex.submit(stand_in("once", sleep=1))
        await ex.submit(stand_in("once", sleep=1))
        with pytest.raises(ExecutorError, match="already exists for project 'p1'.*refusing to adopt"):
            await ex.submit(stand_in("once", project="p2"))
        names = sorted(c.name for c in docker_engine.client.containers.list(all=True, filters={"label": PART_OF}))
        assert names == [experiment_name("once"), container_name("once")]
        assert [v.name for v in docker_engine.client.volumes.list(filters={"label": PART_OF})] == [volume_name("once")]
        assert await finish(ex, docker_engine, "once") == JobPhase(state="succeeded")
        started = inspect(docker_engine, container_name("once"))["State"]["StartedAt"]
        await ex.submit(stand_in("once"))  # finished: still not started again
        again = inspect(docker_engine, container_name("once"))
        assert again["State"]["StartedAt"] == started and again["State"]["Status"] == "exited" and again["RestartCount"] == 0
        await ex.cleanup("p1")
    finally:
        await ex.close()
        host.close()


async def test_a_container_still_running_when_the_lab_died_is_adopted_by_the_next_engineer(docker_engine: Engine) -> None:  # noqa: F811
    """The whole lab is killed; the containers run on under the engine. A fresh executor finds the job running,
    adopts it on a redelivered submit, and sees it finish: the experiment ran once."""
    host = Host("unused")
    first = stand_in_executor(host, docker_engine)
    await first.submit(stand_in("outlives", sleep=3))
    await first.close()
    second = stand_in_executor(host, docker_engine)
    try:
        assert (await second.poll("outlives")).state == "running"
        started = inspect(docker_engine, container_name("outlives"))["State"]["StartedAt"]
        await second.submit(stand_in("outlives", sleep=3))
        assert await finish(second, docker_engine, "outlives") == JobPhase(state="succeeded")
        for name in (container_name("outlives"), experiment_name("outlives")):
            assert inspect(docker_engine, name)["RestartCount"] == 0
        assert inspect(docker_engine, container_name("outlives"))["State"]["StartedAt"] == started
        assert len(docker_engine.client.containers.list(all=True, filters={"label": PART_OF})) == 2
        await second.cleanup("p1")
    finally:
        await second.close()
        host.close()


async def test_network_true_joins_the_open_network_or_is_refused(docker_engine: Engine) -> None:  # noqa: F811
    """A job asking for the network: refused without open_network; with it the experiment (not the runner) joins that
    network; a network that does not exist leaves nothing of the job behind (no job a resubmit would start offline)."""
    host = Host("unused")
    closed = stand_in_executor(host, docker_engine)
    ex = stand_in_executor(host, docker_engine, open_network="lab-jobs-open")
    wrong = stand_in_executor(host, docker_engine, open_network="no-such-net")
    network = docker_engine.client.networks.create("lab-jobs-open", driver="bridge")
    try:
        with pytest.raises(ExecutorError, match=r"asks for the network .* open_network is not set"):
            await closed.submit(stand_in("net", network=True))
        assert docker_engine.lab_objects() == []
        await ex.submit(stand_in("net", network=True))
        await ex.submit(stand_in("offline"))
        assert inspect(docker_engine, container_name("net"))["HostConfig"]["NetworkMode"] == "host"  # the runner still reaches NATS
        experiment = inspect(docker_engine, experiment_name("net"))
        assert experiment["HostConfig"]["NetworkMode"] == "lab-jobs-open" and list(experiment["NetworkSettings"]["Networks"]) == ["lab-jobs-open"]
        assert inspect(docker_engine, experiment_name("offline"))["HostConfig"]["NetworkMode"] == "none"
        with pytest.raises(ExecutorError, match=r"cannot connect job net2 to network no-such-net"):
            await wrong.submit(stand_in("net2", network=True))
        assert not [o for o in docker_engine.lab_objects() if "net2" in o] and not (host.jobs / container_name("net2")).exists()
        for job in ("net", "offline"):
            assert await finish(ex, docker_engine, job) == JobPhase(state="succeeded")
        await ex.cleanup("p1")
    finally:
        network.remove()
        for e in (closed, ex, wrong):
            await e.close()
        host.close()


async def test_a_missing_image_and_no_engine_are_one_line(docker_engine: Engine) -> None:  # noqa: F811
    """An image the engine has not and cannot pull (no registry reachable) and an engine that is not there: one line each."""
    host = Host("unused")
    ex = DockerExecutor(base_url=docker_engine.base_url, image="registry.invalid/none:1", command=STAND_IN,
                        launcher_command=LAUNCHER_STAND_IN, network="host", job_files_dir=str(host.jobs))
    try:
        with pytest.raises(ExecutorError, match=r"image registry.invalid/none:1 not found and not pullable") as refused:
            await ex.submit(stand_in("x"))
        assert "\n" not in str(refused.value)  # the engine's own reason: here, no registry in reach
        # What the failed submit made (its volume, its description) went with it: a resubmit starts from nothing.
        assert docker_engine.lab_objects() == [] and list(host.jobs.iterdir()) == []
    finally:
        await ex.close()
        host.close()
    gone = DockerExecutor(base_url="unix:///nonexistent/docker.sock")
    with pytest.raises(ExecutorError, match=r"no Docker engine reachable at unix:///nonexistent/docker.sock"):
        await gone.poll("x")
    with pytest.raises(ExecutorError, match=r"bad executor option network"):
        make_executor("docker", {"network": 3})
