"""The runner's half of a job split into two containers: it holds the credential, the experiment does not.

On Docker and Kubernetes a job is two containers that share one scratch
volume and nothing else: the ``runner`` (NATS credential, the job's status
key, both from mounted files) and the ``experiment`` (another uid, no
credential, no service-account token, its own process namespace), whose entry
point is :mod:`services.runner.launcher`. They talk through files in the shared
volume, under ``$LAB_SHARED_DIR/job``, a folder the runner creates and owns:

- ``runner/`` (the runner's; the experiment may only read it): ``launch.json``
  (the job without its credential and key, and the experiment's extra
  environment), ``ready`` (the code is unpacked: start), ``alive`` (touched
  every few seconds: a launcher whose runner is gone stops the experiment),
  ``stop`` (the runner gave up waiting: stop now).
- ``code/`` (read-only to the experiment by mode), ``out/``, ``figures/``,
  ``checkpoint/`` (writable by the experiment).
- ``launcher/`` (the experiment container's): ``experiment.log`` (its output,
  which the runner tails to NATS), ``alive`` (the launcher's heartbeat: a
  container killed for memory writes no exit record) and ``exit.json`` (the
  :class:`ExitRecord`), ``usage.json`` (what the experiment uses, when the
  runner serves metrics: :mod:`services.runner.usage`).

The runner believes the exit record only about this job, which is all the
experiment could lie about anyway (it writes its own ``final_info.json``). It
measures the wall time itself, waits no longer than the job's limits allow,
and reads every file the experiment could have touched without following
links (:func:`read_regular`), so a symlink to the runner's own secret files
cannot make it upload them.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import LabError
from bus.schema import JobEnvironment, JobSpec
from bus.schema.results import clean_text
from bus.settings import env_name, settings
from services.runner.outputs import LineClipper

SHARED_ENV = env_name("shared_dir")  # set in both containers: the shared volume's mount path
ALIVE_EVERY_S = 2.0
MAX_READ = 64 << 20  # one result file; more is not a result
REASON_MAX = 500


class SplitError(LabError, RuntimeError):
    """A file the experiment container controls is not what it must be (a link, a device, too large)."""


class ExitRecord(BaseModel):
    """What the launcher says became of the experiment (and of plot.py)."""

    model_config = ConfigDict(extra="ignore")
    state: Literal["succeeded", "failed", "preempted"]
    reason: str = Field("", max_length=4 * REASON_MAX)
    exit_code: int | None = None
    plot_failed: str = Field("", max_length=4 * REASON_MAX)
    # The machine as the experiment container saw it (its GPUs, driver, packages): the runner's has no GPU.
    environment: JobEnvironment | None = None


class LaunchSpec(BaseModel):
    """What the experiment container is told: the job with no credential, and its extra environment."""

    model_config = ConfigDict(extra="forbid")
    job: JobSpec
    env: dict[str, str] = {}
    usage: bool = False  # the runner serves metrics: sample what the experiment uses into launcher/usage.json


class Layout:
    """The folders of one job in the shared volume."""

    def __init__(self, shared: Path) -> None:
        self.root = shared / "job"
        self.runner = self.root / "runner"
        self.launcher = self.root / "launcher"
        self.code, self.out, self.figures, self.checkpoint = (self.root / n for n in ("code", "out", "figures", "checkpoint"))
        self.launch = self.runner / "launch.json"
        self.ready = self.runner / "ready"
        self.alive = self.runner / "alive"
        self.stop = self.runner / "stop"
        self.log = self.launcher / "experiment.log"
        self.exit = self.launcher / "exit.json"
        self.launcher_alive = self.launcher / "alive"
        self.usage = self.launcher / "usage.json"

    def prepare(self) -> None:
        """The runner's folders, made before anything of the experiment's runs (so none is a planted link)."""
        for d in (self.root, self.runner, self.code):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        for d in (self.launcher, self.out, self.figures, self.checkpoint):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o777)  # another uid writes here; only the two containers mount the volume


def public_job(job: JobSpec) -> JobSpec:
    """The job as the experiment container may see it: no NATS access, no status key."""
    return job.model_copy(update={"nats": None, "status_key": None})


def open_tree(folder: Path, writable: bool = False) -> None:
    """Files the runner wrote, readable (``writable``: also replaceable) by the experiment's uid."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 if writable else 0o755)
        else:
            path.chmod(0o666 if writable else 0o644)


def is_regular(path: Path) -> bool:
    """A regular file, not through a link; False for anything that cannot be looked at."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_regular(path: Path, limit: int = MAX_READ) -> bytes:
    """A file's bytes, refusing a symlink, anything but a regular file, or one over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SplitError(f"{path.name} is a symbolic link; not read") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SplitError(f"{path.name} is not a regular file; not read")
        if st.st_size > limit:
            raise SplitError(f"{path.name} is {st.st_size} bytes, over the limit of {limit}")
        return f.read(limit)


def write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


async def keep_alive(path: Path) -> None:
    """Touch ``path`` until cancelled: the other container gives up on this one when it stops."""
    while True:
        path.write_text(f"{time.time()}\n")
        await asyncio.sleep(ALIVE_EVERY_S)


def stale_for(path: Path) -> float | None:
    """Seconds since ``path`` was last touched, or None if it never was (or cannot be looked at)."""
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return None


class Tail:
    """The experiment's log, read as it grows, without following a link the experiment planted.

    Lines come out cut to ``line_limit`` bytes (``LAB_JOB_LOG_LINE_MAX_BYTES``), however long the experiment made them.
    """

    def __init__(self, path: Path, line_limit: int | None = None) -> None:
        self.path = path
        self.offset = 0
        self.clip = LineClipper(settings().job_log_line_max_bytes if line_limit is None else line_limit)

    def read_lines(self) -> list[str]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []  # not there yet, or a link: nothing to read
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []
            f.seek(self.offset)
            data = f.read(4 << 20)
        self.offset += len(data)
        return self.clip.feed(data)

    def rest(self) -> list[str]:
        """Every line left, to the end of the file (a last one without a newline included)."""
        lines: list[str] = []
        for _ in range(32):  # bounded: an experiment still writing (its container not yet stopped) cannot keep us here
            offset = self.offset
            lines += self.read_lines()
            if self.offset == offset:
                break
        return lines + self.clip.rest()


def deadline_s(job: JobSpec, plot_limit_s: float, grace_s: float) -> float:
    """How long the runner waits for an exit record: the experiment's wall time, the plot's, the grace, a margin."""
    return job.wall_time_s + plot_limit_s + grace_s + 60


async def await_experiment(
    layout: Layout, job: JobSpec, extra_env: dict[str, str], on_line: Callable[[str], Awaitable[Any]],
    term: asyncio.Event | None, plot_limit_s: float, grace_s: float, poll_s: float = 0.2, usage: bool = False,
) -> ExitRecord:
    """Hand the job to the experiment container and follow it to its exit record."""
    write_atomic(layout.launch, LaunchSpec(job=public_job(job), env=extra_env, usage=usage).model_dump_json())
    layout.ready.write_text("ready\n")
    tail = Tail(layout.log)
    limit = deadline_s(job, plot_limit_s, grace_s)
    stale_s = settings().runner_alive_stale_s  # read once, not at every poll
    started = time.monotonic()
    termed_at: float | None = None
    while True:
        for line in tail.read_lines():
            await on_line(line)
        if layout.exit.exists() or layout.exit.is_symlink():
            for line in tail.rest():
                await on_line(line)
            return _exit_record(layout)
        now = time.monotonic()
        if term is not None and term.is_set() and termed_at is None:
            termed_at = now
            layout.stop.write_text("preempted\n")
        if termed_at is not None and now - termed_at > grace_s + 5:
            return ExitRecord(state="preempted", reason="preempted: SIGTERM (the experiment container did not report)")
        quiet = stale_for(layout.launcher_alive)
        if quiet is not None and quiet > stale_s:
            layout.stop.write_text("the experiment container stopped answering\n")
            for line in tail.rest():
                await on_line(line)
            return ExitRecord(state="failed", reason=f"the experiment container stopped answering ({quiet:.0f}s since its "
                              "last heartbeat; killed for memory?)")
        if now - started > limit:
            layout.stop.write_text("timeout\n")
            for line in tail.rest():
                await on_line(line)
            return ExitRecord(state="failed", reason=f"timeout: no exit record from the experiment container within {limit:.0f}s")
        await asyncio.sleep(poll_s)


def _exit_record(layout: Layout) -> ExitRecord:
    try:
        record = ExitRecord.model_validate_json(read_regular(layout.exit, 1 << 16))
    except (OSError, SplitError, ValidationError) as e:
        why = str(e) if isinstance(e, SplitError) else type(e).__name__
        return ExitRecord(state="failed", reason=f"invalid_output: the experiment container's exit record is unreadable ({why})")
    # Written where the experiment's uid could write too: its words reach a terminal and a model, without control characters.
    return record.model_copy(update={"reason": clean_text(record.reason, REASON_MAX), "plot_failed": clean_text(record.plot_failed, REASON_MAX)})
