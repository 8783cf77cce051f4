"""`lab backup`: every stream, KV bucket and object store of a lab, read through the JetStream API into one archive.

The archive is a ``.tar.gz`` holding ``manifest.json`` and one ``streams/<NAME>.jsonl`` per stream
whose messages it keeps: one JSON line a message, ``{"seq", "subject", "hdrs", "data", "time"}``
(``hdrs`` the raw NATS header block and ``data`` the payload, both base64, as the server stores
them). The manifest lists every stream with its configuration, its state when read (first and last
sequence, messages, bytes), how many messages the archive holds of it, and the sha256 of its file.
`lab restore` (services/lab/restore.py) checks all of that before it writes anything.

Two kinds of stream are listed but their messages are not kept (``restored: false`` and why):
a stream that sources or mirrors others (the roles' work streams, bus/partitions, are copies of
the conversation and job streams, which the lab recreates at start), and the agents' heartbeats
(each agent writes its own when it starts). Nothing from ``$LAB_HOME`` is in the archive: not
``secrets/``, not ``lab.json``, not ``config.yaml`` (docs/backup.md: what to keep apart).

Messages are read by sequence with ``STREAM.MSG.GET`` (bus/snapshot.py) (``next_by_subj: ">"``, so a stream's
gaps cost nothing), up to the last sequence the stream had when the backup reached it: a running
lab's newer messages are left for the next backup.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import snapshot
from bus.client import Bus
from bus.errors import LabError
from bus.schema.constants import AGENTS_BUCKET, kv_stream

FORMAT = "kenkyu-lab-backup"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_NAME = "lab-backup-{stamp}.tar.gz"
EPHEMERAL = {kv_stream(AGENTS_BUCKET): "the agents' heartbeats: each agent writes its own when it starts"}


class BackupError(LabError):
    """A backup that could not be written or read, in one line."""


@dataclass(frozen=True)
class StreamSaved:
    name: str
    kind: str  # stream, kv or object
    messages: int
    restored: bool


def kind_of(name: str) -> tuple[str, str | None]:
    """(kind, bucket) of a stream: a KV bucket is ``KV_<bucket>``, an object store ``OBJ_<bucket>``."""
    if name.startswith("KV_"):
        return "kv", name[3:]
    if name.startswith("OBJ_"):
        return "object", name[4:]
    return "stream", None


def not_kept(name: str, config: dict[str, Any]) -> str:
    """Why a stream's messages are not kept ("" when they are)."""
    if config.get("sources") or config.get("mirror"):
        return "a copy of other streams (sources/mirror): the lab recreates it at start from what comes after the restored log"
    return EPHEMERAL.get(name, "")


async def _write_messages(bus: Bus, name: str, first: int, last: int, path: Path) -> tuple[int, str]:
    """Every message of ``name`` from ``first`` to ``last`` into ``path`` as JSON lines; (count, sha256 of the file)."""
    digest, count = hashlib.sha256(), 0
    with path.open("wb") as f:
        async for m in snapshot.messages(bus, name, first, last):
            record = {"seq": int(m["seq"]), "subject": m["subject"], "hdrs": m.get("hdrs"), "data": m.get("data") or "", "time": m.get("time")}
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            f.write(line)
            digest.update(line)
            count += 1
    return count, digest.hexdigest()


async def _save_stream(bus: Bus, name: str, folder: Path) -> dict[str, Any]:
    """One stream's manifest entry, its messages written under ``folder/streams/`` where they are kept."""
    info = await snapshot.stream_info(bus, name)
    config, state = info["config"], info["state"]
    kind, bucket = kind_of(name)
    why = not_kept(name, config)
    entry: dict[str, Any] = {
        "name": name, "kind": kind, "bucket": bucket, "config": config,
        "state": {k: state.get(k, 0) for k in ("messages", "bytes", "first_seq", "last_seq")},
        # restored: its messages are in the archive; recreate: `lab restore` creates the stream (empty where not restored).
        "restored": not why, "recreate": not config.get("sources") and not config.get("mirror"), "why_not": why,
        "file": None, "messages": 0, "sha256": None,
    }
    if why:
        return entry
    rel = f"streams/{name}.jsonl"
    count, sha = await _write_messages(bus, name, int(state.get("first_seq") or 1), int(state.get("last_seq") or 0), folder / rel)
    entry.update(file=rel, messages=count, sha256=sha)
    return entry


def archive_path(out: Path | None) -> Path:
    """Where the archive goes: ``out`` itself, or a new time-stamped name inside ``out`` when it is a folder (or None: here)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if out is None:
        return Path(DEFAULT_NAME.format(stamp=stamp))
    if out.is_dir() or str(out).endswith("/"):
        return out / DEFAULT_NAME.format(stamp=stamp)
    return out


async def backup(bus: Bus, out: Path) -> list[StreamSaved]:
    """Write every stream of the lab on ``bus`` into the archive ``out`` (written beside it, then renamed: never half an archive)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lab-backup-", dir=out.parent) as tmp:
        folder = Path(tmp)
        (folder / "streams").mkdir()
        entries = [await _save_stream(bus, name, folder) for name in await snapshot.stream_names(bus)]
        manifest = {
            "format": FORMAT, "version": VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": bus.config.url, "streams": entries,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial = folder / "archive.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(folder / MANIFEST, arcname=MANIFEST)
            for e in entries:
                if e["file"]:
                    tar.add(folder / e["file"], arcname=e["file"])
        partial.chmod(0o600)  # the lab's whole record: its owner's alone, like LAB_HOME
        partial.replace(out)
    return [StreamSaved(e["name"], e["kind"], e["messages"], e["restored"]) for e in entries]


def prune(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` archives `lab backup` named in ``folder``; the removed ones."""
    archives = sorted(folder.glob(DEFAULT_NAME.format(stamp="*")))
    old = archives[:-keep] if keep > 0 else []
    for p in old:
        p.unlink()
    return old


def decode_headers(hdrs: str | None) -> dict[str, str] | None:
    """A stored raw header block (base64 of ``NATS/1.0\\r\\nKey: Value\\r\\n...``) as the dict nats-py publishes."""
    if not hdrs:
        return None
    lines = base64.b64decode(hdrs).decode().split("\r\n")
    out: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out or None
