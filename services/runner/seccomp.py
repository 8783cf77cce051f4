"""The sandbox's seccomp filter, as the classic BPF program ``bwrap --seccomp FD`` loads.

No library is needed for a deny list this small: the program is assembled here
from the kernel's own numbers (``asm/unistd_64.h`` for x86_64,
``asm-generic/unistd.h`` for aarch64), and the tests run it through the real
kernel. Its shape:

1. the architecture must be the one the table is for (a 32-bit ``int 0x80``
   call on x86_64 has other numbers: refused), and on x86_64 the x32 ABI
   (numbers with bit 30 set) is refused;
2. each syscall in :data:`DENIED` fails with ``EPERM``: tracing other
   processes, mounting, kernel modules and kexec, BPF, perf, the key
   ring, swap, reboot, joining namespaces, file handles, userfaultfd;
3. ``clone`` and ``unshare`` with ``CLONE_NEWUSER`` fail with ``EPERM``
   (bwrap's ``--disable-userns`` refuses them too; this holds where it is
   missing); ``clone3`` fails with ``ENOSYS``, its flags are behind a pointer
   the filter cannot read, and glibc then falls back to ``clone``;
4. everything else is allowed.
"""

from __future__ import annotations

import errno
import platform
import struct

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "mount_setattr", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "setns", "kexec_load", "kexec_file_load", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "swapon",
    "swapoff", "reboot", "acct", "quotactl", "syslog", "name_to_handle_at", "open_by_handle_at", "userfaultfd",
)
FLAG_CHECKED = ("clone", "unshare")  # refused only with CLONE_NEWUSER
NO_SYS = ("clone3",)  # refused with ENOSYS so the C library falls back to clone

# name -> number, from the kernel headers of each architecture.
X86_64 = {
    "clone": 56, "ptrace": 101, "syslog": 103, "pivot_root": 155, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "userfaultfd": 323, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "mount_setattr": 442,
}
AARCH64 = {
    "umount2": 39, "mount": 40, "pivot_root": 41, "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104, "init_module": 105,
    "delete_module": 106, "syslog": 116, "ptrace": 117, "reboot": 142, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220,
    "swapon": 224, "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
    "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
    "mount_setattr": 442,
}
# machine -> (AUDIT_ARCH_*, table, x32 bit to refuse)
ARCHES = {"x86_64": (0xC000003E, X86_64, 0x40000000), "aarch64": (0xC00000B7, AARCH64, 0)}

CLONE_NEWUSER = 0x10000000
# BPF opcodes (linux/filter.h, linux/seccomp.h)
LD_W_ABS = 0x20
JEQ_K, JGE_K, JSET_K = 0x15, 0x35, 0x45
RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # struct seccomp_data (args[0]'s low word on a little-endian machine)


def program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one) as raw ``struct sock_filter`` records, or None for an unknown one."""
    arch = ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, table, x32 = arch
    code: list[tuple[int, str | int, str | int, int]] = [(LD_W_ABS, 0, 0, OFF_ARCH), (JEQ_K, 0, "deny", audit_arch), (LD_W_ABS, 0, 0, OFF_NR)]
    if x32:
        code.append((JGE_K, "deny", 0, x32))
    code += [(JEQ_K, "deny", 0, table[name]) for name in DENIED]
    code += [(JEQ_K, "flags", 0, table[name]) for name in FLAG_CHECKED]
    code += [(JEQ_K, "enosys", 0, table[name]) for name in NO_SYS]
    code.append((RET_K, 0, 0, RET_ALLOW))
    labels = {"flags": len(code)}
    code += [(LD_W_ABS, 0, 0, OFF_ARG0), (JSET_K, "deny", 0, CLONE_NEWUSER), (RET_K, 0, 0, RET_ALLOW)]
    labels["deny"] = len(code)
    code.append((RET_K, 0, 0, RET_ERRNO | errno.EPERM))
    labels["enosys"] = len(code)
    code.append((RET_K, 0, 0, RET_ERRNO | errno.ENOSYS))
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        out += struct.pack("=HBBI", op, _jump(labels, i, jt), _jump(labels, i, jf), k)
    return bytes(out)


def _jump(labels: dict[str, int], at: int, target: str | int) -> int:
    """A jump's offset from instruction ``at`` to a label (0 = the next instruction); BPF jumps only forward, at most 255."""
    if isinstance(target, int):
        return target
    offset = labels[target] - at - 1
    assert 0 <= offset <= 255, (target, offset)
    return offset
