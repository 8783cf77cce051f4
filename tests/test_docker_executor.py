"""DockerExecutor through the real docker SDK against a local fake of the Engine API.

The fake exists only because no Docker engine runs on this machine. It speaks
the few endpoints docker-py uses here (version, containers create/start/
inspect/kill/list/remove, images/create), records every create request as the
engine received it, and "runs" a container by starting its command as a local
process with the container's environment, so exit codes are real. A process
killed by SIGKILL from inside is reported as OOMKilled, which is how the kernel
OOM killer looks to Docker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from services.executors import make_executor
from services.executors.base import ExecutorError
from bus.schema import JobPhase, JobSpec, NatsAccess
from services.executors.docker import DockerExecutor

REPO = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/kenkyu-lab/lab:test"
STAND_IN = [
    "python", "-c",
    "import json, os, sys, time\n"
    "o = json.loads(os.environ['LAB_JOB'])['overrides']\n"
    "time.sleep(o.get('sleep', 0))\n"
    "if o.get('oom'): os.kill(os.getpid(), 9)\n"
    "sys.exit(o.get('exit', 0))\n",
]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


class FakeEngine:
    """Containers by id and name; one local process per started container."""

    def __init__(self, images: set[str]) -> None:
        self.images = images
        self.containers: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        self.creates: list[dict[str, Any]] = []
        self.networks_missing: set[str] = set()
        self.lock = threading.Lock()

    def find(self, ref: str) -> dict[str, Any] | None:
        for c in self.containers.values():
            if c["Id"] == ref or c["Name"] == f"/{ref}":
                return c
        return None

    def refresh(self, c: dict[str, Any]) -> dict[str, Any]:
        proc = self.procs.get(c["Id"])
        if proc is not None and c["State"]["Status"] == "running" and proc.poll() is not None:
            code = proc.returncode
            oom = code == -signal.SIGKILL and c["Id"] not in self.killed
            c["State"].update(Status="exited", Running=False, ExitCode=128 + 9 if code < 0 else code,
                              OOMKilled=oom, FinishedAt=now())
        return c

    def start(self, c: dict[str, Any]) -> None:
        cmd = list(c["Config"]["Cmd"])
        if cmd[0] == "python":
            cmd[0] = sys.executable
        env = dict(e.split("=", 1) for e in c["Config"]["Env"])
        env |= {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
        self.procs[c["Id"]] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, start_new_session=True)
        c["State"].update(Status="running", Running=True, StartedAt=now())

    def stop(self, c: dict[str, Any]) -> None:
        proc = self.procs.get(c["Id"])
        if proc is not None and proc.poll() is None:
            self.killed.add(c["Id"])
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.refresh(c)


def handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def route(self, method: str) -> None:
            url = urlparse(self.path)
            path = re.sub(r"^/v[0-9.]+", "", url.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null") if length else None
            with engine.lock:
                self.dispatch(method, path, query, body)

        def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
            m = re.fullmatch(r"/containers/([^/]+)(/json|/start|/kill)?", path)
            if (method, path) == ("GET", "/version"):
                return self.reply(200, {"ApiVersion": "1.45", "Version": "fake", "MinAPIVersion": "1.24"})
            if (method, path) == ("POST", "/images/create"):
                return self.reply(404, {"message": f"pull access denied for {query.get('fromImage')}"})
            if (method, path) == ("POST", "/containers/create"):
                engine.creates.append({"name": query.get("name"), **body})
                if body["Image"] not in engine.images:
                    return self.reply(404, {"message": f"No such image: {body['Image']}"})
                if engine.find(query["name"]):
                    return self.reply(409, {"message": f'Conflict. The container name "/{query["name"]}" is already in use'})
                cid = uuid.uuid4().hex
                engine.containers[cid] = {"Id": cid, "Name": f"/{query['name']}", "Config": body,
                                          "HostConfig": body.get("HostConfig", {}),
                                          "State": {"Status": "created", "Running": False, "ExitCode": 0,
                                                    "OOMKilled": False, "Error": "", "StartedAt": "0001-01-01T00:00:00Z"}}
                return self.reply(201, {"Id": cid, "Warnings": []})
            if (method, path) == ("GET", "/containers/json"):
                wanted = json.loads(query.get("filters", "{}")).get("label", [])

                def has(labels: dict[str, str], w: str) -> bool:  # "key=value" or just "key", as the engine does
                    key, eq, value = w.partition("=")
                    return key in labels and (not eq or labels[key] == value)

                found = [c for c in engine.containers.values() if all(has(c["Config"]["Labels"], w) for w in wanted)]
                return self.reply(200, [{"Id": c["Id"], "Names": [c["Name"]]} for c in found])
            net = re.fullmatch(r"/networks/([^/]+)/connect", path)
            if method == "POST" and net:
                if net.group(1) in engine.networks_missing:
                    return self.reply(404, {"message": f"network {net.group(1)} not found"})
                c = engine.find(body["Container"])
                if c is None:
                    return self.reply(404, {"message": f"No such container: {body['Container']}"})
                c.setdefault("NetworkSettings", {"Networks": {}})["Networks"][net.group(1)] = {}
                return self.reply(200)
            c = engine.find(m.group(1)) if m else None
            if m is None:
                return self.reply(404, {"message": f"page not found: {method} {path}"})
            if c is None:
                return self.reply(404, {"message": f"No such container: {m.group(1)}"})
            if method == "GET" and m.group(2) == "/json":
                return self.reply(200, engine.refresh(c))
            if method == "POST" and m.group(2) == "/start":
                engine.start(c)
                return self.reply(204)
            if method == "POST" and m.group(2) == "/kill":
                engine.stop(c)
                return self.reply(204)
            if method == "DELETE" and m.group(2) is None:
                if c["State"]["Status"] == "running" and query.get("force") != "True":
                    return self.reply(409, {"message": "You cannot remove a running container"})
                engine.stop(c)
                del engine.containers[c["Id"]]
                return self.reply(204)
            return self.reply(404, {"message": f"page not found: {method} {path}"})

        def do_GET(self) -> None:
            self.route("GET")

        def do_POST(self) -> None:
            self.route("POST")

        def do_DELETE(self) -> None:
            self.route("DELETE")

    return Handler


@pytest.fixture
def engine() -> Iterator[tuple[FakeEngine, str]]:
    fake = FakeEngine({IMAGE})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    for c in list(fake.containers.values()):
        fake.stop(c)


@pytest.fixture
async def ex(engine: tuple[FakeEngine, str]) -> Any:
    executor = make_executor("docker", {"base_url": engine[1], "image": IMAGE, "command": STAND_IN, "network": "lab-bus"})
    assert isinstance(executor, DockerExecutor)
    yield executor
    await executor.close()


def spec(job_id: str, project: str = "p1", gpu: int = 0, wall_time_s: float = 60, network: bool = False,
         **overrides: Any) -> JobSpec:
    return JobSpec(job_id=job_id, project=project, experiment_id="e1", template="grokking", bundle_object="p1/b.tar.gz",
                   overrides=overrides, seeds=[0], wall_time_s=wall_time_s, memory_mb=512, cpu=1.5, gpu=gpu, network=network,
                   nats=NatsAccess(url="nats://nats:4222", user="runner", password="pw"))


async def settle(ex: DockerExecutor, job_id: str, timeout: float = 20) -> JobPhase:
    deadline = time.monotonic() + timeout
    while (phase := await ex.poll(job_id)).state in ("pending", "running"):
        assert time.monotonic() < deadline, phase
        await asyncio.sleep(0.05)
    return phase


async def test_create_request_carries_limits_gpu_and_lockdown(ex: DockerExecutor, engine: Any) -> None:
    await ex.submit(spec("gpu-run", gpu=2))
    [create] = engine[0].creates
    host = create["HostConfig"]
    assert create["name"] == "lab-job-gpu-run" and create["Image"] == IMAGE and create["User"] == "10001:10001"
    assert create["Cmd"] == STAND_IN
    env = dict(e.split("=", 1) for e in create["Env"])
    assert JobSpec.model_validate_json(env["LAB_JOB"]).job_id == "gpu-run"
    assert create["Labels"]["lab.kenkyu.dev/project"] == "p1" and create["Labels"]["lab.kenkyu.dev/job"] == "gpu-run"
    assert host["ReadonlyRootfs"] is True and not host.get("AutoRemove")
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert set(host["Tmpfs"]) == {"/tmp", "/scratch"}
    assert host["NetworkMode"] == "lab-bus"
    assert host["Memory"] == (512 + 256) * 2**20 and host["NanoCpus"] == 1_500_000_000
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert host["ShmSize"] == 2048 * 2**20  # not Docker's 64 MB, which breaks DataLoader workers
    assert (await settle(ex, "gpu-run")).state == "succeeded"


async def test_submit_is_idempotent_by_container_name(ex: DockerExecutor, engine: Any) -> None:
    await ex.submit(spec("once", sleep=0.3))
    await ex.submit(spec("once", sleep=0.3))
    assert len(engine[0].containers) == 1 and len(engine[0].procs) == 1
    assert (await settle(ex, "once")).state == "succeeded"
    await ex.submit(spec("once"))  # finished: still not started again
    assert len(engine[0].procs) == 1


async def test_poll_maps_exit_codes_and_oom(ex: DockerExecutor) -> None:
    await ex.submit(spec("ok"))
    await ex.submit(spec("bad", exit=3))
    await ex.submit(spec("nobus", exit=4))
    await ex.submit(spec("oom", oom=True))
    assert await settle(ex, "ok") == JobPhase(state="succeeded")
    assert (await settle(ex, "bad")).reason == "the experiment failed (runner exit 3)"
    assert (await settle(ex, "nobus")).reason == "the runner could not reach NATS (exit 4)"
    oom = await settle(ex, "oom")
    assert oom.state == "failed" and "OOMKilled" in oom.reason
    assert (await ex.poll("never-submitted")).state == "missing"


async def test_deadline_kills_a_hung_runner(engine: Any) -> None:
    ex = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, startup_margin_s=0)
    await ex.submit(spec("hung", wall_time_s=1, sleep=60))
    assert (await ex.poll("hung")).state == "running"
    phase = await settle(ex, "hung")
    assert phase.state == "failed" and phase.reason.startswith("DeadlineExceeded")
    await ex.close()


async def test_cancel_and_cleanup_remove_containers(ex: DockerExecutor, engine: Any) -> None:
    await ex.submit(spec("a1", project="alpha", sleep=60))
    await ex.submit(spec("a2", project="alpha"))
    await ex.submit(spec("b1", project="beta"))
    await ex.cancel("a1")
    assert (await ex.poll("a1")).state == "missing"
    await ex.cancel("a1")  # already gone: no error
    await ex.cleanup("alpha")
    assert [c["Name"] for c in engine[0].containers.values()] == ["/lab-job-b1"]
    await ex.cleanup("beta")
    assert engine[0].containers == {}


async def test_missing_image_and_no_engine_are_one_line(engine: Any) -> None:
    ex = DockerExecutor(base_url=engine[1], image="registry.invalid/none:1", command=STAND_IN)
    with pytest.raises(ExecutorError, match=r"image registry.invalid/none:1 not found and not pullable"):
        await ex.submit(spec("x"))
    await ex.close()
    gone = DockerExecutor(base_url="unix:///nonexistent/docker.sock")
    with pytest.raises(ExecutorError, match=r"no Docker engine reachable at unix:///nonexistent/docker.sock"):
        await gone.poll("x")
    with pytest.raises(ExecutorError, match=r"bad executor option network"):
        make_executor("docker", {"network": 3})


async def test_a_container_of_another_project_is_refused_not_adopted(ex: DockerExecutor, engine: Any) -> None:
    await ex.submit(spec("shared", sleep=0.3))
    with pytest.raises(ExecutorError, match="already exists for project 'p1'.*refusing to adopt"):
        await ex.submit(spec("shared", project="p2"))
    assert len(engine[0].containers) == 1 and len(engine[0].procs) == 1
    assert (await settle(ex, "shared")).state == "succeeded"


def _devices(create: dict[str, Any]) -> list[str]:
    [request] = create["HostConfig"]["DeviceRequests"]
    assert request["Count"] == 0  # by ID, never "any N GPUs"
    return request["DeviceIDs"]


async def test_gpus_are_assigned_by_device_id_from_the_pool(engine: Any) -> None:
    ex = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, gpu_devices=["0", "1", "GPU-abc"])
    assert ex.capacity() == 3
    await ex.submit(spec("g1", gpu=1, sleep=0.5))
    await ex.submit(spec("g2", gpu=1, sleep=60))
    first, second = (_devices(c) for c in engine[0].creates)
    assert first == ["0"] and second == ["1"]
    with pytest.raises(ExecutorError, match=r"needs 2 GPU\(s\), 1 of .* free"):
        await ex.submit(spec("g3", gpu=2))
    assert (await settle(ex, "g1")).state == "succeeded"  # exited: GPU 0 is free again
    await ex.submit(spec("g4", gpu=2, sleep=60))
    assert sorted(_devices(engine[0].creates[-1])) == ["0", "GPU-abc"]
    # A new executor (the engineer restarted) reads who holds what from the containers themselves.
    again = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, gpu_devices=["0", "1", "GPU-abc"])
    with pytest.raises(ExecutorError, match=r"needs 1 GPU\(s\), 0 of"):
        await again.submit(spec("g5", gpu=1))
    await ex.close()
    await again.close()


async def test_network_true_joins_the_open_network_or_is_refused(engine: Any) -> None:
    closed = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN)
    with pytest.raises(ExecutorError, match=r"asks for the network .* open_network is not set"):
        await closed.submit(spec("net", network=True))
    assert engine[0].creates == []
    ex = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, open_network="lab-jobs-open")
    await ex.submit(spec("net", network=True))
    await ex.submit(spec("offline"))
    by_name = {c["Name"]: c for c in engine[0].containers.values()}
    assert by_name["/lab-job-net"]["HostConfig"]["NetworkMode"] == "lab-bus"  # still reaches NATS
    assert set(by_name["/lab-job-net"]["NetworkSettings"]["Networks"]) == {"lab-jobs-open"}
    assert "NetworkSettings" not in by_name["/lab-job-offline"]
    wrong = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, open_network="no-such-net")
    engine[0].networks_missing = {"no-such-net"}
    with pytest.raises(ExecutorError, match=r"cannot connect job net2 to network no-such-net"):
        await wrong.submit(spec("net2", network=True))
    assert "/lab-job-net2" not in {c["Name"] for c in engine[0].containers.values()}  # removed, not left offline
    await closed.close()
    await ex.close()
    await wrong.close()


async def test_the_nats_password_comes_from_a_mounted_file_not_the_environment(engine: Any, tmp_path: Path) -> None:
    secret = tmp_path / "runner-password"
    secret.write_text("pw\n")
    ex = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, nats_password_file=str(secret))
    await ex.submit(spec("cred"))
    [create] = engine[0].creates
    env = dict(e.split("=", 1) for e in create["Env"])
    assert "pw" not in json.dumps(JobSpec.model_validate_json(env["LAB_JOB"]).nats.model_dump())
    assert env["LAB_NATS_PASSWORD_FILE"] == "/run/secrets/lab-nats-password"
    assert create["HostConfig"]["Binds"] == [f"{secret}:/run/secrets/lab-nats-password:ro"]
    await ex.close()


async def test_a_container_still_running_when_the_lab_died_is_adopted_by_the_next_engineer(engine: Any) -> None:
    """The whole lab is killed; the container runs on under the engine. A fresh executor finds it running,
    adopts it on a redelivered submit, and sees it finish: the experiment ran once."""
    options = {"base_url": engine[1], "image": IMAGE, "command": STAND_IN, "network": "lab-bus"}
    first = make_executor("docker", options)
    await first.submit(spec("outlives", sleep=1.0))
    await first.close()
    second = make_executor("docker", options)
    try:
        assert (await second.poll("outlives")).state == "running"
        await second.submit(spec("outlives", sleep=1.0))
        assert (await settle(second, "outlives")).state == "succeeded"
        assert len(engine[0].containers) == 1 and len(engine[0].procs) == 1
    finally:
        await second.close()
