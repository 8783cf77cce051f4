"""Runs that survive preemption: SIGTERM forwarding and checkpoints kept in the artifact store.

A pod's scratch volume dies with the pod, so a checkpoint only helps if it
leaves the pod before the pod goes. The job runner gives a resumable
experiment a folder (``LAB_CHECKPOINT_DIR``), copies that folder to the
artifact store as one tar.gz while the experiment runs and once more after it
stops, and a retried run of the same experiment (a Kubernetes pod retry, or the
next attempt) fetches it back before starting, so the experiment resumes
instead of starting from zero inside the same deadline.

The object is named after the experiment, not the job: a pod retry keeps the
job id, a new attempt does not, and both should resume. The experiment itself
checks that a checkpoint was made with its configuration before using it.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agents.templates import unbundle
from bus.errors import ArtifactMissing
from bus.schema import JobSpec
from bus.settings import env_name, settings
from bus.store import Artifacts
from services.runner import proctree

# The experiment learns its folder from this variable. How long it gets after SIGTERM is LAB_TERM_GRACE_S
# (20 s: Kubernetes' default terminationGracePeriodSeconds is 30, the runner keeps the rest to upload and exit).
CHECKPOINT_ENV = env_name("checkpoint_dir")


def object_name(job: JobSpec) -> str:
    """Where a job's checkpoint lives in the artifact store, under its project's prefix."""
    return f"{job.project}/checkpoints/{job.experiment_id}.tar.gz"


def _regular_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """The regular files under ``folder`` (not through links: a link, a FIFO or a device is no part of a checkpoint)."""
    found = []
    for f in sorted(folder.rglob("*")):
        try:
            st = os.lstat(f)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((f, st))
    return found


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes: cheap to read, and it changes whenever the experiment saves."""
    if not folder.is_dir():
        return ()
    return tuple((str(f.relative_to(folder)), st.st_size, st.st_mtime_ns) for f, st in _regular_files(folder))


def safe_bundle(folder: Path, cap: int) -> bytes:
    """The checkpoint folder as tar.gz: regular files only, read without following links, mode 0644, uid 0.

    Raises ValueError when the files hold more than ``cap`` bytes (apparent or allocated, the larger: a sparse
    file counts in full).
    """
    files = _regular_files(folder)
    total = sum(max(st.st_size, st.st_blocks * 512) for _, st in files)
    if total > cap:
        raise ValueError(f"the checkpoint holds {total} bytes, over the cap of {cap} (LAB_JOB_OUTPUT_MAX_BYTES)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f, _ in files:
            try:
                fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # gone, or replaced by a link since it was listed
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
                    continue
                info = tarfile.TarInfo(str(f.relative_to(folder)))
                info.size, info.mode, info.mtime = st.st_size, 0o644, int(st.st_mtime)
                tar.addfile(info, io.BytesIO(src.read(st.st_size)))
    return buf.getvalue()


async def restore(artifacts: Artifacts, job: JobSpec, folder: Path) -> int:
    """Fetch the experiment's last checkpoint into ``folder``; the bytes fetched, 0 when there is none."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = await artifacts.get(object_name(job))
    except ArtifactMissing:
        return 0
    unbundle(data, folder)
    return len(data)


class CheckpointSync:
    """Uploads the checkpoint folder whenever it changed, every ``every`` seconds and on demand."""

    def __init__(self, artifacts: Artifacts, job: JobSpec, folder: Path, every: float | None = None):
        every = settings().checkpoint_sync_s if every is None else every  # LAB_CHECKPOINT_SYNC_S
        self.artifacts, self.job, self.folder, self.every = artifacts, job, folder, every
        self._last = _fingerprint(folder)  # what was restored needs no upload
        self.uploads = 0
        self.refused = ""  # why the last checkpoint was not uploaded (over the cap)

    async def sync(self) -> bool:
        """Upload if the folder changed since the last upload; True when something was uploaded."""
        now = _fingerprint(self.folder)
        if not now or now == self._last:
            return False
        # A file mid-write is replaced atomically by the experiment (write, then rename), so a
        # tar of the folder never holds half a checkpoint.
        try:
            data = safe_bundle(self.folder, settings().job_output_max_bytes)
        except ValueError as e:
            self._last, self.refused = now, str(e)
            return False
        await self.artifacts.put(object_name(self.job), data)
        self._last = now
        self.uploads += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sync()
            except (TimeoutError, OSError, ConnectionError):
                pass  # the next tick or the final sync tries again


async def forward_term(root: int, requested: asyncio.Event, grace_s: float, on_line: Callable[[str], Awaitable[Any]]) -> None:
    """Once SIGTERM reached the runner: pass it to the experiment's processes, SIGKILL the tree after the grace period.

    The tree under the runner (``root``), read from /proc, not a process group: the
    experiment may have left its group, and the sandbox's own processes must not get it.
    """
    await requested.wait()
    await on_line(f"[runner] SIGTERM: forwarding it to the experiment, {grace_s:.0f}s to save a checkpoint and exit")
    proctree.signal_tree(root, signal.SIGTERM)
    await asyncio.sleep(grace_s)
    proctree.kill_descendants(root)


def catch_sigterm(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set when SIGTERM arrives (an eviction, a preemption, ``kubectl delete pod``).

    Without a handler the runner died at once and, as PID 1 in a container, did not
    even do that: the kernel ignores unhandled signals for PID 1.
    """
    requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, requested.set)
    return requested
