"""The job's own filesystem: a size-capped tmpfs, private to the runner, holding every folder the sandbox binds.

A bind mount names its source's path within the source's filesystem in
``/proc/self/mountinfo``: a job folder bound from the host's disk shows the
sandbox ``$LAB_HOME/jobs/<id>/work/out``, and so where the lab lives. Folders
in a tmpfs of their own show only ``/out``. So, before anything else (one
thread, no event loop yet), a local runner moves into a mount namespace of its
own (and, when it is not root, a user namespace that maps only its own uid
and gid) and mounts a tmpfs at ``<workdir>/box``: the code, outputs, figures
and checkpoint live there. The host sees ``box`` empty; the runner, and the
sandbox it starts (which inherits the namespace), see the tmpfs. It lives
as long as the runner, which uploads what the job made before it exits, so
a job killed at its wall time loses nothing; then it is gone with everything
the experiment left in it, setuid bits included (it is mounted ``nosuid``).
Its size is the job's scratch disk (``resources.disk_mb``, else
``scratch_size_mb``): a disk quota for ``/job/out`` too. It is memory: a job
that writes its quota holds that much memory until it ends.

Where the kernel refuses (user namespaces disabled), the runner says so on
its log and binds from the job folder as before.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
NAME = "box"


class BoxError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        raise BoxError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter(workdir: Path, size_mb: int) -> Path:
    """Mount the private tmpfs at ``workdir/box`` in a namespace of this process's own and return it.

    Call it while the process has one thread (a user namespace refuses any
    other). Raises :class:`BoxError` when the kernel refuses; nothing has
    changed for the process then unless the namespaces were entered, which
    changes nothing it can see either.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    box = workdir / NAME
    box.mkdir(mode=0o700, exist_ok=True)
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")  # the same uid inside: files on the host stay the lab's
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    options = f"mode=0700,size={max(16, size_mb)}m".encode()
    _check(libc.mount(b"lab-job", str(box).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"tmpfs on {box}")
    return box
