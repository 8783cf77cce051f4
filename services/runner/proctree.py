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
from pathlib import Path


def _parents() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, resident bytes) for every live process."""
    out: dict[int, tuple[int, int]] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            out[int(d.name)] = (int(fields[1]), int(fields[21]) * page)
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (not ``root`` itself) with its resident bytes."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found[pid] = table[pid][1]
        todo += children.get(pid, [])
    return found


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
