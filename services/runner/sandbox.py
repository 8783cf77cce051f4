"""The experiment's sandbox: bubblewrap namespaces plus kernel limits, applied from outside.

Model-written code is hostile until proven otherwise, and a static guard on
source text cannot be the boundary (STYLE.md 13). The boundary is this:

- ``bwrap`` puts the experiment in new user, pid, ipc, uts, cgroup, mount
  and (unless the job asks for it) network namespaces, as a non-root uid even
  when the lab runs as root; then bwrap itself runs as ``LAB_SANDBOX_UID``
  (:mod:`services.runner.jail` drops to it), so the sandbox is no one
  privileged on the host either, with no nested user namespace
  (``--disable-userns``) and the seccomp filter of
  :mod:`services.runner.seccomp`. ``/dev`` is a read-only handful of nodes
  with a size-capped ``/dev/shm`` the runner's watch counts as memory. The filesystem it sees is built from nothing:
  ``/usr`` and the Python environment read-only, the template copy read-only,
  only the directories the runner names writable, a fresh ``/proc`` that shows
  only its own processes. ``$LAB_HOME``, the lab's source and every other
  process's ``/proc/*/environ`` simply are not there.
- Its environment is rebuilt from an allow-list (``--clearenv``): no
  credential of any kind crosses, whatever the runner's own environment holds.
- ``--die-with-parent`` and the pid namespace: when the runner (or the
  sandbox's init) dies, the kernel kills every process in the namespace, a
  ``setsid`` grandchild included.
- Limits: per-process rlimits (private writable memory, CPU seconds, core dumps) set in
  the child before exec, so the kernel enforces them on every descendant; the
  runner's watch adds the sum over the whole process tree.

:func:`tool` says whether bubblewrap works here; the lab states it at start and
refuses model-written code without it unless the user accepts the risk.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agents.sysroot import system_binds
from bus.errors import LabError
from bus.settings import env_name, settings
from services.runner import jail, seccomp

BWRAP_ENV = env_name("bwrap")  # the bubblewrap binary to use; a name that does not resolve means "no sandbox"
UNSAFE_ENV = env_name("unsafe_no_sandbox")  # set by `--unsafe-no-sandbox`: the user accepted running model code bare
UNSAFE_FLAG = "--unsafe-no-sandbox"
SANDBOX_UID = 65534  # "nobody": never root inside, whoever runs the lab
JAIL = Path(jail.__file__).resolve()  # run by path with -I -S: the step that drops to the sandbox's host uid
DEV_NODES = ("null", "zero", "full", "random", "urandom")  # the whole /dev besides GPUs: no tty, no pts, no host devices
# Variables that may cross into the sandbox; everything else (credentials, LAB_*, PYTHONPATH) stays out.
PASS_ENV = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "PYTHONHASHSEED")
# /etc files a Python/numpy/matplotlib process reads; none holds a secret (no shadow, no ssl keys).


class SandboxUnavailable(LabError, RuntimeError):
    """No working sandbox tool on this machine; the message says why in one line."""


JOB_ROOT = Path("/job")  # where the job's own directories appear inside; host paths (and $LAB_HOME) never do


class Bind(BaseModel):
    """One host directory of the job, seen inside at ``JOB_ROOT / name``."""

    model_config = ConfigDict(extra="forbid")
    source: Path
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    writable: bool = False

    @property
    def dest(self) -> Path:
        return JOB_ROOT / self.name


class Policy(BaseModel):
    """What one sandboxed process may see and touch."""

    model_config = ConfigDict(extra="forbid")
    binds: list[Bind] = Field(default_factory=list, description="the job's directories; only writable ones take writes")
    tmp_mb: int = Field(256, gt=0, description="size of the private /tmp (memory-backed, so it is capped)")
    shm_mb: int = Field(64, gt=0, description="size of /dev/shm (memory-backed: capped, and counted by the runner's watch)")
    cwd: str = "code"  # the bind the process starts in
    network: bool = False
    devices: list[Path] = Field(default_factory=list, description="device nodes to pass through (GPUs)")
    env: dict[str, str] = Field(default_factory=dict)


class Limits(BaseModel):
    """Kernel-enforced per-process limits, set in the child before it execs."""

    model_config = ConfigDict(extra="forbid")
    # RLIMIT_DATA: private writable memory a process may map, a backstop well above the job's limit.
    # Never RLIMIT_AS: the CUDA driver reserves far more address space than it backs (PROT_NONE,
    # MAP_NORESERVE), which RLIMIT_DATA does not count. None: no such backstop (GPU jobs: the driver's
    # own mappings are not ours to judge); the exact limit is the runner's watch over resident memory.
    data_mb: int | None = Field(None, gt=0)
    cpu_s: int = Field(gt=0)


def tool() -> str | None:
    """The bubblewrap binary if it exists and can build a sandbox on this kernel (as the uid it will run as), else None."""
    return _probe(settings().bwrap, host_ids())


def host_ids() -> tuple[int, int] | None:
    """The host (uid, gid) bwrap runs as: ``LAB_SANDBOX_UID`` when the lab is root; None otherwise (its own uid is unprivileged)."""
    if os.geteuid() != 0:
        return None
    uid = settings().sandbox_uid
    return uid, uid


def unavailable_reason() -> str:
    name = settings().bwrap
    if not shutil.which(name):
        return f"no sandbox: {name!r} (bubblewrap) is not installed, so experiments on the local executor run unconfined"
    ids = host_ids()
    who = f" as uid {ids[0]}" if ids else ""
    return f"no sandbox: {name!r} cannot create namespaces{who} on this kernel, so experiments on the local executor run unconfined"


@functools.lru_cache(maxsize=8)
def features(path: str) -> frozenset[str]:
    """Which of the options this lab uses beyond the basics the installed bwrap has (``--disable-userns`` is 0.8+)."""
    try:
        text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(f for f in ("--disable-userns", "--seccomp", "--size") if f in text)


@functools.lru_cache(maxsize=8)
def _probe(name: str, ids: tuple[int, int] | None) -> str | None:
    path = shutil.which(name)
    if not path:
        return None
    userns = ["--disable-userns"] if "--disable-userns" in features(path) else []
    try:
        ok = subprocess.run(
            [*_jail(ids, [], None), path, "--unshare-all", "--unshare-user", *userns, "--die-with-parent", "--ro-bind", "/", "/",
             "--proc", "/proc", "--dev", "/dev", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "true"],
            capture_output=True, timeout=20, cwd="/",
        ).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None
    return path if ok else None


def _jail(ids: tuple[int, int] | None, gates: list[tuple[str, str, str]], program: bytes | None) -> list[str]:
    """The :mod:`services.runner.jail` step in front of bwrap: drop to ``ids``, open the job folders' gates, hand over the filter."""
    head = [sys.executable, "-I", "-S", str(JAIL)]
    if ids is not None:
        head += ["--drop", str(ids[0]), str(ids[1])]
    for src, dest, mode in gates:
        head += ["--gate", src, dest, mode]
    if program is not None:
        head += ["--seccomp", program.hex()]
    return [*head, "--exec"]


def python_roots() -> list[Path]:
    """The directories the running interpreter needs: its venv and the base installation it points to."""
    roots = {Path(p).resolve() for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)}
    roots.add(Path(sys.executable).resolve().parent.parent)
    roots |= {Path(p) for p in (sys.prefix, sys.exec_prefix)}  # the venv's own path, as sys.executable names it
    return sorted(r for r in roots if not _under(r, Path("/usr")))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def sandbox_env(policy_env: dict[str, str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The experiment's whole environment: the allow-list from ``source`` (default: this process's) plus what the runner sets."""
    env_in: Mapping[str, str] = os.environ if source is None else source
    bin_dir = str(Path(sys.executable).parent)
    env = {k: env_in[k] for k in PASS_ENV if k in env_in}
    env.update({"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp/.mpl"})
    env.update(policy_env)
    return env


def translate(argv: list[str], binds: list[Bind]) -> list[str]:
    """``argv`` with each host path of a bind replaced by where it appears inside the sandbox."""
    out = []
    for arg in argv:
        for b in sorted(binds, key=lambda b: -len(str(b.source))):
            src = str(b.source)
            if arg == src or arg.startswith(src + "/"):
                arg = str(b.dest) + arg[len(src) :]
                break
        out.append(arg)
    return out


def wrap(argv: list[str], policy: Policy, bwrap: str) -> list[str]:
    """The command line that runs ``argv`` (host paths of the binds allowed) under ``policy``: the jail step, then bwrap."""
    ids = host_ids()
    feats = features(bwrap)
    # As root, bwrap runs as the sandbox uid, which cannot walk the 0700 job folders (nor, say, a Python under /root):
    # the jail binds each at a gate first, and bwrap binds it from there.
    shared = [(str(root), root, False) for root in python_roots()] + [(str(b.source), b.dest, b.writable) for b in policy.binds]
    gates = [(src, f"{jail.GATE}/{i}", "rw" if rw else "ro") for i, (src, _, rw) in enumerate(shared)] if ids else []
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    if "--disable-userns" in feats:
        cmd.append("--disable-userns")  # no nested user namespace: `unshare -Ur` fails inside
    if not policy.network:
        cmd.append("--unshare-net")
    cmd.append("--clearenv")
    for k, v in sandbox_env(policy.env).items():
        cmd += ["--setenv", k, v]
    cmd += system_binds()
    cmd += ["--proc", "/proc", *_dev(policy)]
    cmd += ["--size", str(policy.tmp_mb << 20), "--tmpfs", "/tmp"]
    for i, (src, dest, rw) in enumerate(shared):
        cmd += ["--bind" if rw else "--ro-bind", gates[i][1] if gates else src, str(dest)]
    cmd += ["--remount-ro", "/"]  # the skeleton bwrap built (/, /job, /etc) is read-only too
    program = seccomp.program() if "--seccomp" in feats else None
    if program is not None:
        cmd += ["--seccomp", "FD"]  # the jail puts the program in a memfd and writes its number here
    cmd += ["--chdir", str(JOB_ROOT / policy.cwd), "--", *translate(argv, policy.binds)]
    return [*_jail(ids, gates, program), *cmd]


def _dev(policy: Policy) -> list[str]:
    """A read-only /dev of a few harmless nodes (and the GPUs), with a size-capped /dev/shm, instead of bwrap's ``--dev``."""
    args = ["--size", str(1 << 16), "--tmpfs", "/dev"]
    for node in DEV_NODES:
        args += ["--dev-bind", f"/dev/{node}", f"/dev/{node}"]
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        args += ["--symlink", target, f"/dev/{link}"]
    args += ["--size", str(policy.shm_mb << 20), "--tmpfs", "/dev/shm"]
    for dev in policy.devices:
        args += ["--dev-bind", str(dev), str(dev)]
    return [*args, "--remount-ro", "/dev"]  # not recursive: /dev/shm stays writable, within its size


def gpu_devices() -> list[Path]:
    return sorted(Path("/dev").glob("nvidia*"))


def preexec(limits: Limits) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the limits in the child, where they bind every process it starts."""

    def apply() -> None:
        if limits.data_mb is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limits.data_mb << 20, limits.data_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _die_with_parent()

    return apply


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the direct child is killed if the runner dies (bwrap repeats it inside)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphans of our children reparent to us, so the runner still sees (and kills) them."""
    try:
        import ctypes

        status: int = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
        return status == 0
    except (OSError, AttributeError):
        return False


def unsafe_accepted() -> bool:
    return settings().unsafe_no_sandbox


def check_start(mind: str, executor: str, unsafe: bool = False) -> str | None:
    """At start: None when experiments will be sandboxed (or run in containers), else one line to print.

    Raises :class:`SandboxUnavailable` when model-written code (``--mind llm``) would run unconfined on this
    machine and the user has not accepted that risk with ``--unsafe-no-sandbox``.
    """
    if executor != "local" or tool() is not None:
        return None
    reason = unavailable_reason()
    if mind == "llm" and not (unsafe or unsafe_accepted()):
        raise SandboxUnavailable(
            f"{reason}; refusing to run model-written code (--mind llm) unconfined: install bubblewrap, "
            f"or pass {UNSAFE_FLAG} to accept the risk"
        )
    return f"warning: {reason}" + (f" ({UNSAFE_FLAG} given)" if mind == "llm" else "")
