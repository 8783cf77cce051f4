"""A process's descendants, read from the kernel (/proc), never from files an experiment can write.

The runner is a child subreaper (see :func:`services.runner.sandbox.become_subreaper`),
so a ``setsid``/double-forked grandchild reparents to it instead of to init:
the tree under the runner is the whole job, whatever sessions or process
groups the experiment invented.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class Usage(NamedTuple):
    """What a process tree holds: processes, tasks (threads included), resident bytes, bytes in its own tmpfs mounts,
    and the CPU seconds (user + system) its live processes used, with those of the children each has waited for."""

    processes: int
    tasks: int
    rss: int
    tmpfs: int
    cpu_s: float


def _stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name, state first) for every process; gone ones are skipped."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 21:
            yield int(d.name), fields


class _Proc(NamedTuple):
    rss: int  # resident bytes
    threads: int
    ticks: int  # CPU clock ticks: utime, stime, and its waited-for children's cutime and cstime


def _parents() -> dict[int, tuple[int, _Proc]]:
    """pid -> (ppid, what it holds) for every live process."""
    page = os.sysconf("SC_PAGE_SIZE")
    return {pid: (int(f[1]), _Proc(int(f[21]) * page, int(f[17]), sum(int(x) for x in f[11:15]))) for pid, f in _stats() if f[0] != "Z"}


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (not ``root`` itself) with its resident bytes."""
    return {pid: proc.rss for pid, proc in _tree(root).items()}


def usage(root: int) -> Usage:
    """The whole tree under ``root``: its processes, tasks, resident memory, memory-backed files (see :func:`tmpfs_bytes`), CPU."""
    tree = _tree(root)
    procs = tree.values()
    return Usage(len(tree), sum(p.threads for p in procs), sum(p.rss for p in procs), tmpfs_bytes(list(tree)),
                 sum(p.ticks for p in procs) / os.sysconf("SC_CLK_TCK"))


def _tree(root: int) -> dict[int, _Proc]:
    """What every live descendant of ``root`` holds, by pid."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, _Proc] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found[pid] = table[pid][1]
        todo += children.get(pid, [])
    return found


def tmpfs_bytes(pids: list[int]) -> int:
    """Bytes used in the tmpfs mounts that ``pids``' own mount namespaces made (the sandbox's /tmp and /dev/shm).

    Files there are memory nobody's resident set shows. A mount counts once, and only if it is new to
    those namespaces: a tmpfs the host has too (a host /tmp a job folder lives on) is not the job's.
    """
    mine = _mount_ns("self")
    host = {dev for dev, _, _ in _mounts("self")}
    seen_ns: set[str] = {mine} if mine else set()
    counted: set[str] = set()
    total = 0
    for pid in pids:
        ns = _mount_ns(str(pid))
        if ns is None or ns in seen_ns:
            continue
        seen_ns.add(ns)
        for dev, point, fstype in _mounts(str(pid)):
            if fstype != "tmpfs" or dev in host or dev in counted:
                continue
            try:
                st = os.statvfs(f"/proc/{pid}/root{point}")
            except OSError:
                continue
            counted.add(dev)
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


def _mount_ns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _mounts(pid: str) -> list[tuple[str, str, str]]:
    """(device, mount point, fs type) of each mount ``pid`` sees, from its mountinfo."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            point = fields[4].encode().decode("unicode_escape")  # mountinfo writes a space as \040
            out.append((fields[2], point, right.split()[0]))
    return out


def kill_descendants(root: int) -> int:
    """SIGKILL every descendant of ``root``, repeating until none is left (a fork may race the first pass).

    Zombies are not counted, so orphans that reparented to the runner need no reaping here (and the
    runner's own child is left for asyncio to reap, with its true exit status).
    """
    killed = 0
    for _ in range(20):
        pids = descendants(root)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)  # let the kernel turn them into zombies before the next look
    return killed



def reap_orphans(root: int) -> int:
    """Reap the zombies that reparented to ``root`` (this process, a subreaper); how many were reaped.

    bubblewrap's outer process exits as soon as the sandbox's pid 1 reports the exit status, so that pid 1
    (which reaped the experiment's processes, and holds their CPU time) ends as an orphan zombie of the runner:
    until it is reaped, none of the experiment's CPU time shows in ``getrusage(RUSAGE_CHILDREN)``. Only zombies
    are waited for, each by its pid, so no live child's exit status is taken from whoever awaits it.
    """
    reaped = 0
    for pid, fields in _stats():
        if fields[0] != "Z" or int(fields[1]) != root:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                reaped += 1
        except ChildProcessError:  # reaped already by whoever awaited it
            continue
    return reaped


def signal_tree(root: int, sig: int, skip: tuple[str, ...] = ("bwrap",)) -> int:
    """Send ``sig`` to every descendant of ``root`` except the sandbox's own processes.

    bubblewrap dies on SIGTERM and, with ``--die-with-parent``, takes the whole
    sandbox with it at once; a polite SIGTERM (time to checkpoint) must reach the
    experiment's processes, not the sandbox around them.
    """
    sent = 0
    for pid in descendants(root):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in skip:
                continue
            os.kill(pid, sig)
            sent += 1
        except (OSError, ProcessLookupError):
            continue
    return sent
