"""DockerExecutor through the real docker SDK against a local fake of the Engine API.

The real engine (tests/integration/test_docker_real.py, dockerd from tests/docker_engine.py) shows a job end
to end: the split, the containers' limits and lockdown as it holds them, exit codes, the deadline, OOM kills,
cancel and cleanup, idempotent submits, adoption after a lab kill, a foreign container refused, the open
network, a missing image, the GPU refusal. What stays here is what that engine cannot show, each test saying
why: GPUs held and handed out (it has no GPU runtime, so no GPU container ever runs) and an image pulled from
a registry (it reaches none). The fake speaks
the few endpoints docker-py uses here (version, containers create/start/
inspect/kill/list/remove, volumes create/inspect/list/remove, images/create),
records every create request as the engine received it, and "runs" a container
by starting its command as a local process with the container's environment,
so exit codes are real. A named volume is a local folder (owned and moded as
its tmpfs options say), a bind mount the host path itself, and the container's
env and command see them through their mount paths rewritten. Run as root, a
container's process runs under its ``User`` in a pid namespace of its own, as
Docker runs it (tests/kubelet.py's isolation), and with ``network_mode: none``
in a network namespace of its own. A process killed by SIGKILL from
inside is reported as OOMKilled, which is how the kernel OOM killer looks to
Docker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from bus.schema import JobPhase, JobSpec, NatsAccess
from services.executors import make_executor
from services.executors.base import ExecutorError
from services.executors.docker import DockerExecutor
from tests.conftest import ROOT as REPO
from tests.kubelet import _ENTER

IMAGE = "ghcr.io/kenkyu-lab/lab:test"
STAND_IN = [
    "python", "-c",
    "import json, os, sys, time\n"
    "o = json.load(open(os.environ['LAB_JOB_FILE']))['overrides']\n"
    "time.sleep(o.get('sleep', 0))\n"
    "if o.get('oom'): os.kill(os.getpid(), 9); sys.exit(137)  # as PID 1 of its namespace it ignores its own SIGKILL\n"
    "sys.exit(o.get('exit', 0))\n",
]
LAUNCHER_STAND_IN = ["python", "-c", "pass"]


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
        self.volumes: dict[str, dict[str, Any]] = {}
        self.scratch = tempfile.mkdtemp(prefix="fake-docker-")
        os.chmod(self.scratch, 0o755)
        self.isolates = os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "setpriv", "mount"))
        self.lock = threading.Lock()
        self.host_name = "docker-host-1"  # what GET /info names the engine's host
        self.repo_digests: dict[str, list[str]] = {}  # image id -> RepoDigests (none: a locally built image)

    @staticmethod
    def image_id(ref: str) -> str:
        return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()

    def image(self, ref: str) -> dict[str, Any] | None:
        """An image by reference or id, as GET /images/<ref>/json shows it."""
        for name in self.images:
            if ref in (name, self.image_id(name)):
                return {"Id": self.image_id(name), "RepoTags": [name], "RepoDigests": self.repo_digests.get(self.image_id(name), [])}
        return None

    def volume_dir(self, name: str) -> Path:
        return Path(self.scratch) / f"vol-{name}"

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["Name"]
        if name not in self.volumes:
            opts = dict(o.split("=", 1) for o in (body.get("DriverOpts") or {}).get("o", "").split(",") if "=" in o)
            folder = self.volume_dir(name)
            folder.mkdir()
            if self.isolates and "uid" in opts:
                os.chown(folder, int(opts["uid"]), int(opts.get("gid", opts["uid"])))
            folder.chmod(int(opts.get("mode", "0755"), 8))
            self.volumes[name] = {"Name": name, "Driver": body.get("Driver", "local"), "Labels": body.get("Labels") or {},
                                  "Options": body.get("DriverOpts") or {}, "Mountpoint": str(folder)}
        return self.volumes[name]

    def mounts(self, c: dict[str, Any]) -> dict[str, str]:
        """Mount path -> local path, from the container's binds (a name is a volume, a path a host path)."""
        found = {}
        for bind in c["HostConfig"].get("Binds") or []:
            source, dest = bind.split(":")[:2]
            found[dest] = source if source.startswith("/") else str(self.volume_dir(source))
        return found

    def find(self, ref: str) -> dict[str, Any] | None:
        for c in self.containers.values():
            if c["Id"] == ref or c["Name"] == f"/{ref}":
                return c
        return None

    def refresh(self, c: dict[str, Any]) -> dict[str, Any]:
        proc = self.procs.get(c["Id"])
        if proc is not None and c["State"]["Status"] == "running" and proc.poll() is not None:
            code = proc.returncode
            oom = code in (-signal.SIGKILL, 128 + signal.SIGKILL) and c["Id"] not in self.killed
            c["State"].update(Status="exited", Running=False, ExitCode=128 + 9 if code < 0 else code,
                              OOMKilled=oom, FinishedAt=now())
        return c

    def start(self, c: dict[str, Any]) -> None:
        mounts = self.mounts(c)
        tmp = Path(self.scratch) / f"tmp-{c['Id']}"  # the container's own tmpfs /tmp
        tmp.mkdir(mode=0o1777)
        tmp.chmod(0o1777)
        mounts.setdefault("/tmp", str(tmp))

        def local(value: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    return mounts[path] + value[len(path):]
            return value

        cmd = [local(a) for a in c["Config"]["Cmd"]]
        if c["Config"]["Cmd"][0] in ("python", sys.executable):
            cmd[0] = sys.executable  # the image's python is this one, never mapped through /tmp (a checkout under /tmp)
        env = {k: local(v) for k, v in (e.split("=", 1) for e in c["Config"]["Env"])}
        env |= {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
        if self.isolates and c["Config"].get("User"):
            uid, _, gid = c["Config"]["User"].partition(":")
            stage = Path(self.scratch) / f"stage-{c['Id']}"
            env |= {"STAGE": str(stage), "RUN_UID": uid, "RUN_GID": gid or uid, "RUN_GROUPS": gid or uid}
            offline = ["--net"] if c["HostConfig"].get("NetworkMode") == "none" else []  # network_mode none: loopback only
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *offline, "sh", "-c", _ENTER, "sh", *cmd]
        with open(Path(self.scratch) / f"log-{c['Name'].strip('/')}", "ab") as log:  # what `docker logs` would show
            self.procs[c["Id"]] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
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
            def has(labels: dict[str, str], w: str) -> bool:  # "key=value" or just "key", as the engine does
                key, eq, value = w.partition("=")
                return key in labels and (not eq or labels[key] == value)

            m = re.fullmatch(r"/containers/([^/]+)(/json|/start|/kill)?", path)
            if (method, path) == ("GET", "/version"):
                return self.reply(200, {"ApiVersion": "1.45", "Version": "fake", "MinAPIVersion": "1.24"})
            if (method, path) == ("GET", "/info"):
                return self.reply(200, {"Name": engine.host_name, "ID": "fake"})
            image = re.fullmatch(r"/images/(.+)/json", path)
            if method == "GET" and image:
                found = engine.image(image.group(1))
                return self.reply(200, found) if found else self.reply(404, {"message": f"No such image: {image.group(1)}"})
            if (method, path) == ("POST", "/images/create"):
                return self.reply(404, {"message": f"pull access denied for {query.get('fromImage')}"})
            if (method, path) == ("POST", "/volumes/create"):
                return self.reply(201, engine.create_volume(body))
            if (method, path) == ("GET", "/volumes"):
                wanted = json.loads(query.get("filters", "{}")).get("label", [])
                return self.reply(200, {"Volumes": [v for v in engine.volumes.values()
                                                    if all(has(v["Labels"], w) for w in wanted)], "Warnings": []})
            vol = re.fullmatch(r"/volumes/([^/]+)", path)
            if vol and vol.group(1) not in engine.volumes:
                return self.reply(404, {"message": f"get {vol.group(1)}: no such volume"})
            if vol and method == "GET":
                return self.reply(200, engine.volumes[vol.group(1)])
            if vol and method == "DELETE":
                users = [c["Name"] for c in engine.containers.values()
                         if any(b.startswith(vol.group(1) + ":") for b in c["HostConfig"].get("Binds") or [])]
                if users:
                    return self.reply(409, {"message": f"remove {vol.group(1)}: volume is in use - {users}"})
                shutil.rmtree(engine.volumes.pop(vol.group(1))["Mountpoint"], ignore_errors=True)
                return self.reply(204)
            if (method, path) == ("POST", "/containers/create"):
                engine.creates.append({"name": query.get("name"), **body})
                if body["Image"] not in engine.images:
                    return self.reply(404, {"message": f"No such image: {body['Image']}"})
                network = body.get("HostConfig", {}).get("NetworkMode")
                if network in engine.networks_missing:
                    return self.reply(404, {"message": f"network {network} not found"})
                if engine.find(query["name"]):
                    return self.reply(409, {"message": f'Conflict. The container name "/{query["name"]}" is already in use'})
                cid = uuid.uuid4().hex
                engine.containers[cid] = {"Id": cid, "Name": f"/{query['name']}", "Config": body, "Image": engine.image_id(body["Image"]),
                                          "HostConfig": body.get("HostConfig", {}),
                                          "State": {"Status": "created", "Running": False, "ExitCode": 0,
                                                    "OOMKilled": False, "Error": "", "StartedAt": "0001-01-01T00:00:00Z"}}
                return self.reply(201, {"Id": cid, "Warnings": []})
            if (method, path) == ("GET", "/containers/json"):
                wanted = json.loads(query.get("filters", "{}")).get("label", [])
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
    shutil.rmtree(fake.scratch, ignore_errors=True)


@pytest.fixture
async def ex(engine: tuple[FakeEngine, str]) -> Any:
    config = {"base_url": engine[1], "image": IMAGE, "command": STAND_IN, "launcher_command": LAUNCHER_STAND_IN, "network": "lab-bus"}
    executor = make_executor("docker", config)
    assert isinstance(executor, DockerExecutor)
    yield executor
    await executor.close()


@pytest.fixture(autouse=True)
def job_files_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A LAB_HOME the fake engine's containers can reach: the jobs' description files live in it
    ($LAB_HOME/docker-jobs). A real engine bind-mounts as root; the stand-in opens the host path itself."""
    home = Path(tempfile.mkdtemp(prefix="fake-docker-home-"))
    home.chmod(0o755)
    monkeypatch.setenv("LAB_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


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


async def test_the_experiment_gets_the_gpus_as_a_device_request_and_the_runner_none(ex: DockerExecutor, engine: Any) -> None:
    """GPUs by count (no pool): the experiment's device request and memory, none for the runner.

    Fake: the test engine has no GPU runtime, so it never starts a GPU container (its refusal is tested there).
    """
    await ex.submit(spec("gpu-run", gpu=2))
    experiment, runner = engine[0].creates
    rh, eh = runner["HostConfig"], experiment["HostConfig"]
    assert eh["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert "DeviceRequests" not in rh and eh["Memory"] == (512 + 128) * 2**20 and rh["Memory"] == 256 * 2**20
    assert (await settle(ex, "gpu-run")).state == "succeeded"


async def test_the_runner_is_told_the_repository_digest_of_a_pulled_image(ex: DockerExecutor, engine: Any) -> None:
    """env.json's provenance: an image with a repository digest is named by it.

    Fake: only a registry gives an image a digest, and the test engine reaches none (its locally built image, named by
    id, is tested there).
    """
    pinned = "ghcr.io/kenkyu-lab/lab@sha256:" + "5" * 64
    engine[0].repo_digests[FakeEngine.image_id(IMAGE)] = [pinned]
    await ex.submit(spec("pulled"))
    experiment, runner = engine[0].creates
    assert dict(e.split("=", 1) for e in runner["Env"])["LAB_JOB_IMAGE"] == pinned
    assert "LAB_JOB_IMAGE" not in str(experiment["Env"])  # the experiment's environment stays bare
    assert (await settle(ex, "pulled")).state == "succeeded"


def _devices(create: dict[str, Any]) -> list[str]:
    [request] = create["HostConfig"]["DeviceRequests"]
    assert request["Count"] == 0  # by ID, never "any N GPUs"
    return request["DeviceIDs"]


async def test_gpus_are_assigned_by_device_id_from_the_pool(engine: Any) -> None:
    """Each job its own GPUs from the pool, and a restarted engineer reads who holds what from the containers.

    Fake: the pool shows only with GPU containers running, and the test engine has no GPU runtime to run one.
    """
    ex = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, launcher_command=LAUNCHER_STAND_IN, gpu_devices=["0", "1", "GPU-abc"])
    assert ex.capacity() == 3
    await ex.submit(spec("g1", gpu=1, sleep=0.5))
    await ex.submit(spec("g2", gpu=1, sleep=60))
    first, second = (_devices(c) for c in engine[0].creates if c["name"].startswith("lab-exp-"))
    assert first == ["0"] and second == ["1"]
    with pytest.raises(ExecutorError, match=r"needs 2 GPU\(s\), 1 of .* free"):
        await ex.submit(spec("g3", gpu=2))
    assert (await settle(ex, "g1")).state == "succeeded"  # exited: GPU 0 is free again
    await ex.submit(spec("g4", gpu=2, sleep=60))
    assert sorted(_devices(engine[0].creates[-2])) == ["0", "GPU-abc"]
    # A new executor (the engineer restarted) reads who holds what from the containers themselves.
    again = DockerExecutor(base_url=engine[1], image=IMAGE, command=STAND_IN, launcher_command=LAUNCHER_STAND_IN, gpu_devices=["0", "1", "GPU-abc"])
    with pytest.raises(ExecutorError, match=r"needs 1 GPU\(s\), 0 of"):
        await again.submit(spec("g5", gpu=1))
    await ex.close()
    await again.close()
