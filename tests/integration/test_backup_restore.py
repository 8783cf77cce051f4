"""`lab backup` of a running lab's server (as the CronJob does) and `lab restore` into a fresh LAB_HOME, through the real commands.

A store written here with what makes a restore hard: gaps in a stream's sequence (a deleted
message, KV revisions past the bucket's history), headers (a message id, a KV delete marker,
the object store's rollups), an object of several chunks. After the round trip every kept
message is at its original sequence with its subject, payload and headers (less the
``Nats-Expected-*`` preconditions), a KV key reads the same value at the same revision, the
object the same bytes, and the next message written gets the sequence it would have got.
A truncated or altered archive is refused in one line and nothing is written. (A stopped lab's backup,
and the byte-for-byte `lab export` of a finished project after the round trip: tests/e2e/test_stopped_lab.py.)
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from bus.client import Bus
from bus.schema.constants import ARTIFACTS_BUCKET, CACHE_BUCKET, CONVO_STREAM, STATE_BUCKET, kv_stream
from bus.server import EmbeddedServer, new_credentials
from tests.conftest import ROOT, config_for, lab_cmd

pytestmark = pytest.mark.integration

BLOB = bytes(range(256)) * 1200  # 300 KiB: three chunks of the object store


def lab(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def _write_store(bus: Bus) -> None:
    await bus.ensure_topology()
    for i in range(4):
        await bus.js.publish("lab.convo.p1.copi.pi", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id-{i}", "X-Who": "test"})
    await bus.js.delete_msg(CONVO_STREAM, 2)  # a gap inside the log
    kv = await bus.js.key_value(STATE_BUCKET)
    for i in range(10):  # history 8: the first revisions leave gaps
        await kv.put("pi.p1", f"v{i}".encode())
    await kv.put("pi.gone", b"x")
    await kv.delete("pi.gone")
    cache = await bus.js.key_value(CACHE_BUCKET)
    await cache.put("pi.k", b"cached")
    await (await bus.js.object_store(ARTIFACTS_BUCKET)).put("p1/runs/j1/blob.bin", BLOB)


async def _messages(bus: Bus, stream: str) -> tuple[list[tuple[int, str, bytes, dict | None]], int]:
    """Every message of ``stream`` by sequence (headers without the server's own), and its last sequence."""
    info = await bus.js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            m = await bus.js.get_msg(stream, seq)
        except NotFoundError:
            continue
        headers = {k: v for k, v in (m.headers or {}).items() if not k.startswith("Nats-Expected-")} or None
        out.append((m.seq, m.subject, m.data or b"", headers))
    return out, info.state.last_seq


STREAMS = (CONVO_STREAM, kv_stream(STATE_BUCKET), kv_stream(CACHE_BUCKET), f"OBJ_{ARTIFACTS_BUCKET}")


async def _snapshot(server: EmbeddedServer) -> dict:
    bus = await Bus.connect(config_for(server))
    try:
        out = {s: await _messages(bus, s) for s in STREAMS}
        kv = await bus.js.key_value(STATE_BUCKET)
        entry = await kv.get("pi.p1")
        out["kv"] = (entry.value, entry.revision)
        out["blob"] = (await (await bus.js.object_store(ARTIFACTS_BUCKET)).get("p1/runs/j1/blob.bin")).data
        out["next"] = (await bus.js.publish("lab.convo.p1.copi.pi", b"after")).seq
        return out
    finally:
        await bus.close()


async def _snapshot_of(home: Path) -> dict:
    """The store at ``home``, read through a server of its own (then stopped)."""
    creds = new_credentials()
    server = EmbeddedServer(home / "nats", credentials=creds).start()
    server.credentials = creds
    try:
        return await _snapshot(server)
    finally:
        server.stop()


@pytest.fixture
def envs(monkeypatch):
    for k in ("LAB_NATS_URL", "LAB_NATS_USER", "LAB_NATS_PASSWORD", "LAB_NATS_PASSWORD_FILE"):
        monkeypatch.delenv(k, raising=False)

    def env(home: Path) -> dict:
        return {**os.environ, "LAB_HOME": str(home), "PYTHONPATH": str(ROOT)}

    return env


async def test_a_backup_restores_every_message_at_its_sequence_and_a_bad_archive_restores_nothing(tmp_path, envs):
    src, fresh = tmp_path / "src", tmp_path / "fresh"
    creds = new_credentials()
    server = EmbeddedServer(src / "nats", credentials=creds).start()
    server.credentials = creds
    bus = await Bus.connect(config_for(server))
    await _write_store(bus)
    await bus.close()
    # A running lab's server, as the Kubernetes CronJob backs it up: its URL, the admin user, the password in a file.
    (tmp_path / "pw").write_text(creds["lab"])
    archive = tmp_path / "lab.tar.gz"
    try:
        r = lab({**envs(tmp_path / "elsewhere"), "LAB_NATS_USER": "lab", "LAB_NATS_PASSWORD_FILE": str(tmp_path / "pw")},
                "backup", "--nats", server.url, "--out", str(archive))
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    by_name = {s["name"]: s for s in manifest["streams"]}
    assert by_name[CONVO_STREAM]["messages"] == 3 and by_name["LAB_WORK_PI"]["restored"] is False
    assert not any(".." in n or n.startswith("secrets") for n in tarfile.open(archive).getnames())

    # Truncated, and one byte altered: refused in one line, nothing written.
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    raw = bytearray(gzip.decompress(data))
    at = raw.find(b'"data":"') + 8
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")
    altered = tmp_path / "altered.tar.gz"
    altered.write_bytes(gzip.compress(bytes(raw)))
    for bad, why in ((cut, "not a complete lab backup"), (altered, "does not match its sha256")):
        r = lab(envs(fresh), "restore", str(bad))
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and why in lines[0] and "nothing was restored" in lines[0], r.stderr
        assert not (fresh / "nats").exists()

    r = lab(envs(fresh), "restore", str(archive))
    assert r.returncode == 0, r.stderr
    again = lab(envs(fresh), "restore", str(archive))  # the target now holds a lab: refused unless --force
    assert again.returncode == 2 and "--force" in again.stderr, again.stderr

    before, after = await _snapshot_of(src), await _snapshot_of(fresh)
    for name in STREAMS:
        assert after[name] == before[name], name
    assert after["kv"] == before["kv"] == (b"v9", 10)
    assert after["blob"] == before["blob"] == BLOB
    assert after["next"] == before["next"] == 5  # the next message gets the sequence it would have got
    msgs = dict((seq, h) for seq, _, _, h in before[CONVO_STREAM][0])
    assert 2 not in msgs and msgs[1] == {"Nats-Msg-Id": "id-0", "X-Who": "test"}
