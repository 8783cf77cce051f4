"""What a lab leaves behind, and what it needs before it starts: signals, a pid file, free space.

`lab run` with an embedded lab is a foreground process that owns a
nats-server (in its own session, so a terminal's Ctrl-C does not reach it)
and six agents. SIGTERM and SIGHUP must stop them like Ctrl-C does; and when
even that cannot run (SIGKILL), the pid file ``run/lab.pids`` lets the next
start find the leftovers and stop them, so they never hold the store the new
lab needs. A full disk or store is refused up front with the numbers, not
met halfway through a start that then cannot even write its own log.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.client import Bus
from bus.errors import LabError
from bus.settings import env_name, settings
from services.common.process import alive

# JetStream refuses writes at its limit; new projects are refused a little before, so running ones can finish.
STORE_FULL_FRACTION = 0.95


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, like Ctrl-C's KeyboardInterrupt.

    A KeyboardInterrupt (not a plain exception) so that asyncio re-raises it out
    of whatever task it lands in instead of storing it there, and every
    ``finally`` on the way out runs.
    """


class StoreFull(LabError, RuntimeError):
    """The disk under LAB_HOME, or the lab's JetStream store, has no room for a new project."""


@dataclass
class Stopped:
    signum: int | None = None
    name: str = ""


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[Stopped]:
    """Turn the first of ``signals`` into Terminated; later ones are ignored while the shutdown runs."""
    stopped = Stopped()

    def handler(signum: int, _frame: Any) -> None:
        if stopped.signum is None:
            stopped.signum, stopped.name = signum, signal.Signals(signum).name
            raise Terminated(stopped.name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stopped
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- free space


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def check_disk(home: Path, min_free_mb: float | None = None) -> None:
    """StoreFull when the file system holding ``home`` has less than ``min_free_mb`` free; OSError when it is not writable."""
    where = home
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK):  # root too: access() reports a read-only mount
        code = errno.EROFS if os.statvfs(where).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(where))
    usage = shutil.disk_usage(where)
    min_free_mb = settings().min_free_mb if min_free_mb is None else min_free_mb
    if usage.free < min_free_mb * (1 << 20):
        raise StoreFull(
            f"the disk under {home} is full: {_mib(usage.used)} used of {_mib(usage.total)}, {_mib(usage.free)} free "
            f"(a lab needs {min_free_mb:.0f} MiB, LAB_MIN_FREE_MB); free some space or point LAB_HOME elsewhere"
        )


def max_store_bytes() -> int:
    """The embedded server's JetStream file store limit: LAB_MAX_STORE (e.g. ``50G``, ``512M``), default 10 GiB."""
    return settings().max_store


async def check_store(bus: Bus, where: str, server_limit: int | None = None) -> None:
    """StoreFull when the lab's JetStream store (``bus.store_usage()``) is at its limit.

    The account's own limit when it has one; else the server's, which only the
    lab that configured it knows (``max_store_bytes`` in lab.json).
    """
    usage = await bus.store_usage()
    limit = usage.limit or server_limit
    if limit and usage.used >= STORE_FULL_FRACTION * limit:
        raise StoreFull(
            f"the lab's store is full: {_mib(usage.used)} used of its {_mib(limit)} limit (JetStream at {where}); "
            "no new project until space is freed (finished projects can be exported with `lab export`, then removed)"
        )


# ---------------------------------------------------------------- the pid file


PRIVATE_FILES = ("lab.json", "web.json", "supervisor.log")  # what a home holds that no one else may read


def private_home(home: Path) -> None:
    """Make ``home`` (LAB_HOME) this user's alone: created 0700, or narrowed to 0700 when an older lab made it wider.

    Everything under it (the NATS store, agents' logs, the supervisor's log) is then out of other users'
    reach; its credentials are 0600 files besides (``write_secret``), and those an older lab left wider are
    narrowed here, with ``secrets/`` and ``logs/`` at 0700.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    for folder in (home / "secrets", home / "logs", home / "run"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o700)
    for f in [*(home / name for name in PRIVATE_FILES), *(home / "secrets").glob("*")]:
        if f.is_file() and not f.is_symlink():
            f.chmod(0o600)


def private_log(path: Path) -> int:
    """A log file opened for appending, 0600 from creation (and narrowed if it exists): the caller closes the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def pid_file(home: Path) -> Path:
    return home / "run" / "lab.pids"


def record_pids(home: Path, servers: list[int], agents: dict[str, int]) -> None:
    """Who this lab started (every nats-server node and agent), written before anything can be left behind."""
    path = pid_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"supervisor": os.getpid(), "home": str(home), "servers": servers, "agents": agents}))
    tmp.replace(path)


def forget_pids(home: Path) -> None:
    path = pid_file(home)
    try:
        if json.loads(path.read_text()).get("supervisor") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _belongs(pid: int, home: Path, what: str) -> bool:
    """Whether ``pid`` is still the process we recorded (pids are reused): its command line or environment names ``home``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if what == "server":
            return "nats-server" in cmdline and str(home) in cmdline
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        started = "services.cli" in cmdline or "services.auth" in cmdline  # an agent, or the auth service
        return started and f"{env_name('home')}={home}".encode() in environ
    except OSError:
        return False


def reap_stale(home: Path, grace_s: float = 10.0) -> list[int]:
    """Stop what a dead supervisor of ``home`` left running (agents, then its server); the pids stopped.

    A supervisor that still lives is a running lab: nothing is touched (the caller refuses to start).
    Its job runners go too (:func:`stop_job_runners`): nothing a lab started outlives it.
    """
    try:
        recorded = json.loads(pid_file(home).read_text())
    except (OSError, ValueError):
        return []
    if alive(recorded.get("supervisor")):
        return []
    servers = recorded.get("servers") or [recorded.get("server")]
    order = [(p, "agent") for p in (recorded.get("agents") or {}).values()] + [(p, "server") for p in servers]
    stopped = [p for p, what in order if p and alive(p) and _belongs(p, home, what)]
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in stopped):
        time.sleep(0.1)
    for pid in stopped:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stopped += stop_job_runners(home)
    pid_file(home).unlink(missing_ok=True)
    return stopped


def jobs_dirs(home: Path) -> list[Path]:
    """Where the local executor of the lab at ``home`` records its jobs: ``jobs/``, and the config's ``jobs_dir`` if set."""
    dirs = [home / "jobs"]
    try:
        from services.common.config import lab_config

        configured = lab_config(home).executor_options("local").get("jobs_dir")
    except (LabError, OSError):  # a config that does not load names no other folder; jobs/ is still swept
        configured = None
    if configured and Path(str(configured)) not in dirs:
        dirs.append(Path(str(configured)))
    return dirs


def stop_job_runners(home: Path) -> list[int]:
    """End every job runner the local executor recorded for the lab at ``home``, each with its process tree."""
    from services.executors.local import stop_runners

    return [pid for d in jobs_dirs(home) for pid in stop_runners(d)]


def supervisor_alive(home: Path) -> int | None:
    """The pid of a supervisor recorded in the pid file that still lives (a lab starting or running)."""
    try:
        pid = json.loads(pid_file(home).read_text()).get("supervisor")
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and alive(pid) else None
