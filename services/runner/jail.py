"""The step between the runner and bwrap: run as ``python -I -S jail.py ARGS --exec BWRAP-ARGV`` (standard library only).

:func:`services.runner.sandbox.wrap` puts it in front of bwrap. In the one
process that then becomes bwrap it:

- ``--gate SRC DEST MODE``: while still root, bind-mounts the job folder SRC
  at DEST, a path under :data:`GATE` (a tmpfs this process mounts in a
  private mount namespace of its own, so the host sees nothing of it), and for
  MODE ``rw`` gives SRC's tree to the sandbox uid. Job folders are 0700 and
  the lab's; bwrap, once it runs as the sandbox uid, could not walk to them,
  and ``--bind-fd`` does not help (bwrap resolves the fd back to its path);
- ``--drop UID GID``: drops every group, then to UID/GID, before bwrap runs,
  so bwrap's user namespace maps the sandbox to that unprivileged host uid:
  files it writes on the host are that uid's, never root's, so a setuid bit
  on one is worth nothing;
- ``--seccomp HEX``: puts the BPF program in a memfd and hands bwrap its fd
  (``--seccomp`` takes an fd number, which only this process knows);
- keeps ``PR_SET_PDEATHSIG`` (a uid change clears it) and refuses to go on if
  the runner already died.
"""

from __future__ import annotations

import ctypes
import os
import sys

GATE = "/dev/shm"  # mounted over in the private namespace only: bwrap builds the sandbox's own /dev
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1


class JailError(Exception):
    pass


def parse(argv: list[str]) -> tuple[tuple[int, int] | None, list[tuple[str, str, str]], bytes | None, list[str]]:
    """(drop to (uid, gid), gates, seccomp program, bwrap argv) from this script's arguments."""
    drop, gates, program = None, [], None
    i = 0
    while i < len(argv) and argv[i] != "--exec":
        if argv[i] == "--drop":
            drop, i = (int(argv[i + 1]), int(argv[i + 2])), i + 3
        elif argv[i] == "--gate":
            gates.append((argv[i + 1], argv[i + 2], argv[i + 3]))
            i += 4
        elif argv[i] == "--seccomp":
            program, i = bytes.fromhex(argv[i + 1]), i + 2
        else:
            raise JailError(f"unknown argument {argv[i]!r}")
    if i >= len(argv) - 1:
        raise JailError("no command after --exec")
    return drop, gates, program, argv[i + 1 :]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")


def _give(path: str, uid: int, gid: int) -> None:
    """``path`` (a directory opened without following links) and everything under it to uid:gid; links are never followed."""
    os.chown(path, uid, gid)  # ``path`` is /proc/self/fd/N: followed to the directory itself
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def gate(gates: list[tuple[str, str, str]], owner: tuple[int, int] | None) -> None:
    """Bind each job folder at its path under :data:`GATE`, in a mount namespace of this process alone."""
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    # Opened in the new namespace (a bind's source must be in it) and before the gate covers anything.
    fds = [os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW) for src, _, _ in gates]
    _check(libc.mount(b"tmpfs", GATE.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=0755,size=65536"), f"tmpfs on {GATE}")
    for fd, (_, dest, mode) in zip(fds, gates, strict=True):
        if owner is not None and mode == "rw":
            _give(f"/proc/self/fd/{fd}", *owner)
        os.makedirs(dest, mode=0o755, exist_ok=True)
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), dest.encode(), None, MS_BIND | MS_REC, None), f"binding {dest}")
        os.close(fd)


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getgroups() not in ([], [gid]):
        raise JailError("could not drop privileges")


def seccomp_fd(program: bytes) -> int:
    """A memfd holding ``program``, inherited by bwrap, which reads it to the end."""
    fd = os.memfd_create("seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def main(argv: list[str]) -> int:
    parent = os.getppid()
    try:
        drop, gates, program, cmd = parse(argv)
        if gates:
            gate(gates, drop)
        if drop is not None:
            drop_to(*drop)
        if program is not None:
            at = cmd.index("--seccomp") + 1
            cmd[at] = str(seccomp_fd(program))
        _check(_libc().prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "PR_SET_PDEATHSIG")  # a uid change cleared it
    except (JailError, OSError, ValueError) as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 125
    if os.getppid() != parent:
        return 125  # the runner died before the signal was armed
    os.execv(cmd[0], cmd)
    return 125  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
