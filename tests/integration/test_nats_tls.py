"""NATS over TLS, as k8s/components/nats-tls configures it, against a real nats-server.

A throwaway CA and server certificate are made with the openssl CLI; the server runs the component's own
``tls`` block (its paths pointed at them). The lab connects with the CA alone (LAB_NATS_CA_FILE) and speaks
TLS from the first byte; a plaintext client is refused; a client without the CA fails with one line; and
the lab with a CA never sends a byte in the clear to a server that does not speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus import natsjwt
from bus.client import Bus, BusConfig
from bus.errors import ConnectError
from bus.permissions import USERS
from bus.server import free_port, server_binary
from tests.manifests import REPO

COMPONENT = REPO / "k8s/components/nats-tls"
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI makes the throwaway CA")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL or "openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d: Path, name: str) -> None:
    """``<name>.key`` and a self-signed ``<name>.crt`` (EC P-256, one day)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_server_cert(d: Path, ca: str) -> None:
    """``tls.key``/``tls.crt`` for localhost and the names of certificates.yaml, signed by ``ca``; ``ca.crt`` beside them."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=nats",
             "-keyout", "tls.key", "-out", "tls.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,DNS:nats,DNS:*.nats-headless,IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "1", "-extfile", "ext.cnf", "-out", "tls.crt", cwd=d)
    shutil.copy(d / f"{ca}.crt", d / "ca.crt")


def component_tls_block() -> str:
    """The component's client ``tls { ... }`` block, exactly as nats-server would read it."""
    conf = (COMPONENT / "nats-tls.conf").read_text()
    m = re.search(r"^tls \{\n.*?^\}\n", conf, re.M | re.S)
    assert m, "no top-level tls block in nats-tls.conf"
    return m.group(0)


@dataclass
class TlsServer:
    url: str
    monitor: str
    certs: Path


def _wait_up(proc: subprocess.Popen[bytes], monitor: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{monitor}/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(proc.stderr.read().decode()[-2000:] if proc.stderr and proc.poll() is not None else "nats-server did not start")


@contextlib.contextmanager
def nats_server(tmp_path: Path, tls: bool) -> Iterator[TlsServer]:
    """A real nats-server on loopback, with the component's client TLS block (certificates in tmp_path) or none."""
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    if not (certs / "tls.crt").exists():
        make_ca(certs, "lab-ca")
        make_ca(certs, "other-ca")
        make_server_cert(certs, "lab-ca")
    port, mon = free_port(), free_port()
    conf = f'listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mon}\nauthorization {{ users: [{{user: pi, password: "pw"}}] }}\n'
    if tls:
        conf += component_tls_block().replace("/etc/nats-tls", str(certs))
    (tmp_path / "server.conf").write_text(conf)
    proc = subprocess.Popen([server_binary(), "-c", str(tmp_path / "server.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(proc, f"http://127.0.0.1:{mon}")
        yield TlsServer(f"nats://localhost:{port}", f"http://127.0.0.1:{mon}", certs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def connz(server: TlsServer) -> list[dict[str, object]]:
    return json.loads(urllib.request.urlopen(f"{server.monitor}/connz?auth=1", timeout=5).read())["connections"] or []


async def test_the_lab_connects_over_tls_trusting_only_the_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with nats_server(tmp_path, tls=True) as server:
        monkeypatch.setenv("LAB_NATS_CA_FILE", str(server.certs / "ca.crt"))  # as the manifests set it
        bus = await Bus.connect(BusConfig(url=server.url, user="pi", password="pw", name="tls-lab"), reconnect=False, timeout=10)
        try:
            sub = await bus.nc.subscribe("_INBOX_pi.echo")
            await bus.nc.publish("_INBOX_pi.echo", b"over tls")
            assert (await sub.next_msg(timeout=5)).data == b"over tls"
            [conn] = [c for c in connz(server) if c.get("name") == "tls-lab"]
            assert str(conn["tls_version"]).startswith("1.") and conn.get("tls_first") is True, conn
        finally:
            await bus.close()
        # The same CA given in the config, and a CA that did not sign the server: refused, in one line.
        monkeypatch.delenv("LAB_NATS_CA_FILE")
        with pytest.raises(ConnectError) as e:
            await Bus.connect(BusConfig(url=server.url, user="pi", password="pw", ca_file=str(server.certs / "other-ca.crt")),
                              reconnect=False, timeout=10)
        assert "not signed by a CA this client trusts" in str(e.value) and "\n" not in str(e.value)


def _plaintext_session(port: int) -> tuple[dict[str, object], bytes]:
    """A client that never starts TLS: the INFO it is sent, and all it gets for a plaintext CONNECT and PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        info = json.loads(f.readline().decode().removeprefix("INFO "))
        s.sendall(b'CONNECT {"user":"pi","pass":"pw","verbose":false}\r\nPING\r\n')
        return info, f.read()  # until the server closes the connection


async def test_plaintext_is_refused(tmp_path: Path) -> None:
    with nats_server(tmp_path, tls=True) as server:
        port = int(server.url.rsplit(":", 1)[1])
        info, answer = await asyncio.to_thread(_plaintext_session, port)
        assert info["tls_required"] is True
        # nats-server reads the plaintext CONNECT as a broken TLS handshake and hangs up: no PONG, no session.
        assert b"PONG" not in answer and b"+OK" not in answer, answer
        assert not [c for c in connz(server) if c.get("authorized_user") == "pi"]


async def test_a_client_without_the_ca_fails_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_NATS_CA_FILE", raising=False)
    with nats_server(tmp_path, tls=True) as server:
        with pytest.raises(ConnectError) as e:
            await Bus.connect(BusConfig(url=server.url, user="pi", password="pw"), reconnect=False, timeout=10)
    message = str(e.value)
    assert "\n" not in message and server.url in message, message
    assert "set LAB_NATS_CA_FILE" in message, message
    # A CA file that is not there is its own line, naming the variable.
    with pytest.raises(ConnectError, match=r"^LAB_NATS_CA_FILE=.*missing\.crt: cannot read the CA"):
        await Bus.connect(BusConfig(url=server.url, ca_file=str(tmp_path / "missing.crt")), reconnect=False, timeout=5)


async def test_the_lab_with_a_ca_sends_nothing_in_the_clear(tmp_path: Path) -> None:
    """An impostor on the server's address (or a server without TLS) gets a TLS ClientHello, never the CONNECT with the password."""
    received = bytearray()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.15.1","max_payload":1048576,"auth_required":true}\r\n')
        await writer.drain()
        with contextlib.suppress(Exception):
            received.extend(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()

    certs = tmp_path / "certs"
    certs.mkdir()
    make_ca(certs, "lab-ca")
    srv = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError) as e:
            await Bus.connect(BusConfig(url=f"nats://localhost:{port}", user="pi", password="secret-pw", ca_file=str(certs / "lab-ca.crt")),
                              reconnect=False, timeout=10)
    finally:
        srv.close()
        await srv.wait_closed()
    assert received[:2] == b"\x16\x03", bytes(received[:16])  # a TLS handshake record
    assert b"CONNECT" not in received and b"secret-pw" not in received
    assert "TLS" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_component_config_parses_with_the_lab_s_nats_conf(tmp_path: Path) -> None:
    """nats-server -t reads nats-tls.conf as the StatefulSet does: the lab's nats.conf included, both tls blocks loading their files."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_ca(certs, "lab-ca")
    make_server_cert(certs, "lab-ca")
    for name in ("nats.conf", "nats-tls.conf"):
        src = REPO / ("k8s/base" if name == "nats.conf" else "k8s/components/nats-tls") / name
        (tmp_path / name).write_text(src.read_text().replace("/etc/nats-tls", str(certs)).replace("/data/jetstream", str(tmp_path / "js")))
    env = {**os.environ, "POD_NAME": "nats-0", "AUTH_ISSUER": natsjwt.public_key(natsjwt.new_account_seed())}
    env |= {f"{u.upper()}_PASSWORD": "pw-" + u for u in USERS}
    out = subprocess.run([server_binary(), "-t", "-c", str(tmp_path / "nats-tls.conf")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    # The routes block replaces nats.conf's: it must keep the same cluster name and routes.
    base, tls = (tmp_path / "nats.conf").read_text(), (tmp_path / "nats-tls.conf").read_text()
    assert re.findall(r"nats://nats-\d\.nats-headless:6222", tls) == re.findall(r"nats://nats-\d\.nats-headless:6222", base)
    assert re.search(r"cluster \{\n  name: lab\n", tls) and re.search(r"cluster \{\n  name: lab\n", base)
