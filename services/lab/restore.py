"""`lab restore`: a `lab backup` archive back into a lab's store, each message at its original sequence.

The archive is checked whole first (it opens, its manifest is ours, every file's sha256 and
message count match): a truncated or altered archive is refused in one line and nothing is
written. Then each kept stream is created with its configuration (replicas set to the target's)
and its messages published in order on their original subjects with their original headers
(less the ``Nats-Expected-*`` preconditions the server checked when they were first written).

Sequence numbers are kept: ``conversation.jsonl`` (`lab export`, `lab logs`) shows each
message's stream sequence, so the stream starts at its original first sequence and each gap (a
message deleted, a KV revision past the bucket's history) is filled with a placeholder on a
subject of its own that is purged at the end, so every message lands at the sequence it had and
the next one written gets the number it would have got. KV revisions thus stay as they were;
nothing in the lab keeps one beyond a compare-and-set read just before (bus/store.py). What
cannot be kept: each message's timestamp (the server stamps it anew), so a stream's ``max_age``
counts from the restore.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bus import snapshot
from bus.client import Bus
from services.read.backup import FORMAT, MANIFEST, VERSION, BackupError, decode_headers

GAP_TOKEN = "_restore_gap"


def _refused(archive: Path, why: str) -> BackupError:
    return BackupError(f"{archive}: not a complete lab backup ({why}); nothing was restored")


@contextmanager
def opened(archive: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """The archive's manifest and the folder it was unpacked in, once every file checks out; else one line, nothing written."""
    if not archive.is_file():
        raise BackupError(f"{archive}: no such backup file")
    with tempfile.TemporaryDirectory(prefix="lab-restore-") as tmp:
        folder = Path(tmp)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")
            manifest = json.loads((folder / MANIFEST).read_text())
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
            raise _refused(archive, f"{type(e).__name__}: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _refused(archive, f"its {MANIFEST} is not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise _refused(archive, f"format version {manifest.get('version')!r}; this lab reads version {VERSION}")
        for entry in manifest.get("streams", []):
            _check(archive, folder, entry)
        yield manifest, folder


def _check(archive: Path, folder: Path, entry: dict[str, Any]) -> None:
    if not entry.get("restored"):
        return
    path = folder / str(entry.get("file"))
    if not path.is_file():
        raise _refused(archive, f"{entry.get('file')} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise _refused(archive, f"{entry['file']} does not match its sha256")
    lines = data.count(b"\n")
    if lines != entry.get("messages"):
        raise _refused(archive, f"{entry['file']} holds {lines} messages, the manifest says {entry.get('messages')}")


def gap_subject(config: dict[str, Any]) -> str:
    """A subject of the stream no lab message uses: its first subject with each wildcard made ``_restore_gap``."""
    subjects = config.get("subjects") or []
    tokens = str(subjects[0]).split(".") if subjects else []
    if "*" not in tokens and ">" not in tokens:
        raise BackupError(f"stream {config.get('name')} has gaps in its sequence but no wildcard subject to fill them on")
    return ".".join(GAP_TOKEN if t in ("*", ">") else t for t in tokens)


def restored_config(entry: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The stream's configuration for the target: its replicas, starting at its original first sequence."""
    config = dict(entry["config"])
    config["num_replicas"] = max(1, replicas)
    config.pop("sources", None)
    config.pop("mirror", None)
    meta = {k: v for k, v in (config.get("metadata") or {}).items() if not k.startswith("_nats.")}  # the server's own, set anew
    config.pop("metadata", None)
    if meta:
        config["metadata"] = meta
    first = int(entry["state"].get("first_seq") or 1)
    if first > 1 and entry.get("restored"):
        config["first_seq"] = first
    return config


async def _publish(bus: Bus, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
    ack = await snapshot.publish(bus, subject, data, headers)
    if ack.get("duplicate") and headers:  # the same Nats-Msg-Id twice, written further apart than the duplicate window
        ack = await snapshot.publish(bus, subject, data, {k: v for k, v in headers.items() if k != "Nats-Msg-Id"} or None)
    return ack


async def _restore_messages(bus: Bus, entry: dict[str, Any], path: Path) -> None:
    name, config = entry["name"], entry["config"]
    next_seq = int(entry["state"].get("first_seq") or 1)
    last = int(entry["state"].get("last_seq") or 0)
    gap = gap_subject(config) if entry["messages"] < last - next_seq + 1 else None
    with path.open("rb") as f:
        for line in f:
            m = json.loads(line)
            if m["seq"] > next_seq and gap:
                await snapshot.fill(bus, gap, m["seq"] - next_seq)
            headers = {k: v for k, v in (decode_headers(m.get("hdrs")) or {}).items() if not k.startswith("Nats-Expected-")} or None
            ack = await _publish(bus, m["subject"], base64.b64decode(m["data"]), headers)
            if ack.get("stream") != name or int(ack.get("seq", -1)) != m["seq"]:
                raise BackupError(f"stream {name}: message {m['seq']} ({m['subject']}) was stored as {ack.get('stream')} #{ack.get('seq')}")
            next_seq = m["seq"] + 1
    if last >= next_seq and gap:
        await snapshot.fill(bus, gap, last - next_seq + 1)
    if gap is not None:
        await snapshot.purge_subject(bus, name, gap)
    state = (await snapshot.stream_info(bus, name))["state"]
    if int(state.get("messages", 0)) != entry["messages"] or int(state.get("last_seq", 0)) != last:
        got = f"{state.get('messages')} messages up to #{state.get('last_seq')}"
        raise BackupError(f"stream {name}: restored {got}, expected {entry['messages']} up to #{last}")


async def restore(bus: Bus, manifest: dict[str, Any], folder: Path, replicas: int) -> list[tuple[str, int]]:
    """Create every kept stream of ``manifest`` on ``bus`` and write its messages; (stream, messages) restored."""
    done = []
    for entry in manifest["streams"]:
        if not entry.get("recreate"):
            continue  # a copy of other streams: the lab makes it at start
        await snapshot.create_stream(bus, restored_config(entry, replicas))
        if entry.get("restored"):
            await _restore_messages(bus, entry, folder / entry["file"])
        done.append((entry["name"], int(entry.get("messages", 0))))
    return done
