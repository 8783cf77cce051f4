"""pdflatex and bibtex in a bubblewrap sandbox: the paper's TeX is untrusted input, like an experiment's code.

What TeX compiles is not all the lab's own text: references come from
templates and users' libraries, figures from runs. TeX can read files
(``\\input``, ``\\openin``) and, with shell escape, run commands, so a build is
confined the way experiments are (``services/runner/sandbox.py``; this module
builds its own, smaller command, as ``agents`` may not import ``services``):

- ``bwrap --unshare-all`` (user, pid, ipc, uts, cgroup and network namespaces)
  as uid 65534, ``--die-with-parent`` and ``--new-session``. The filesystem is
  built from nothing: ``/usr`` and the system TeX tree (``/etc/texmf``,
  ``/var/lib/texmf``) read-only, the build folder the only writable place
  (at ``/build``), a fresh ``/proc`` whose ``self/environ`` holds only what is
  set here, an empty private ``/tmp``. ``$LAB_HOME`` is simply not there.
- The environment is rebuilt (``--clearenv``): ``PATH``, ``HOME`` (the build
  folder) and the kpathsea variables that TeX's configuration takes from the
  environment before texmf.cnf: ``openin_any=p`` and ``openout_any=p`` (no
  absolute paths, no ``..``, no dot files), ``shell_escape=f`` (with
  ``-no-shell-escape`` on the command line as well).
- Limits: ``prlimit`` sets address space, CPU seconds, file size and core
  dumps on the process before it execs bubblewrap, so every TeX process
  inherits them; the caller bounds the wall time and kills the sandbox
  (``--die-with-parent`` takes TeX with it).

Without a working bubblewrap the PDF is refused with one reason
(:func:`unavailable_reason`) unless ``LAB_TEX_UNSANDBOXED=1`` accepts running
TeX bare; even then it gets the cleared environment, the paranoid kpathsea
settings and the limits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from agents.sysroot import system_binds
from bus.settings import env_name, settings

BUILD = Path("/build")  # where the build folder appears inside the sandbox
SANDBOX_UID = 65534
MEMORY_MB = 2048  # address space of each TeX process: pdflatex on a paper needs a few hundred MiB
CPU_S = 120
FILE_MB = 256  # the largest file a build may write (a runaway \write cannot fill the disk)
TEX_SETTINGS = {"openin_any": "p", "openout_any": "p", "shell_escape": "f"}
SYSTEM_TEX = ("/etc/texmf", "/var/lib/texmf")
UNSANDBOXED_ENV = env_name("tex_unsandboxed")


class TexSandboxUnavailable(RuntimeError):
    """No working bubblewrap and no permission to run TeX bare; the message is the one reason."""


@functools.lru_cache(maxsize=8)
def _probe(name: str) -> str | None:
    path = shutil.which(name)
    if not path:
        return None
    try:
        ok = subprocess.run(
            [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
             "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "true"],
            capture_output=True, timeout=20,
        ).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None
    return path if ok else None


def tool() -> str | None:
    """The bubblewrap binary if it can build a sandbox here, else None."""
    return _probe(settings().bwrap)


def unavailable_reason() -> str:
    name = settings().bwrap
    why = "is not installed" if not shutil.which(name) else "cannot create namespaces on this kernel"
    return (f"no PDF: TeX runs only in a sandbox and {name!r} (bubblewrap) {why}; install bubblewrap, "
            f"or set {UNSANDBOXED_ENV}=1 to accept running TeX on references and figures unconfined")


def tex_root(binary: str) -> Path | None:
    """The TeX installation a binary outside /usr belongs to (``/opt/texlive/2024/bin/x86_64-linux/pdflatex``), to mount as well."""
    real = Path(binary).resolve()
    if Path("/usr") in real.parents or len(real.parents) < 4:
        return None
    return real.parents[2]


def environment(home: str, binary: str) -> dict[str, str]:
    """The whole environment TeX gets: no LAB_*, no credential, whatever this process holds."""
    bin_dir = str(Path(binary).resolve().parent)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": home, "TEXMFOUTPUT": home, "LC_ALL": "C", **TEX_SETTINGS}


def command(argv: Sequence[str], build: Path, bwrap: str, binary: str) -> list[str]:
    """The bwrap command line that runs ``argv`` (a TeX program and its arguments) with only ``build`` writable."""
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
           "--hostname", "tex", "--clearenv"]
    for k, v in environment(str(BUILD), binary).items():
        cmd += ["--setenv", k, v]
    root = tex_root(binary)
    cmd += system_binds([*SYSTEM_TEX, *([str(root)] if root is not None else [])])
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(64 << 20), "--tmpfs", "/tmp"]
    cmd += ["--bind", str(build), str(BUILD), "--remount-ro", "/", "--chdir", str(BUILD), "--", *argv]
    return cmd


def _limits() -> Callable[[], None]:
    """A ``preexec_fn`` for where prlimit(1) is missing: the same limits, set in the child before it execs."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB << 20, MEMORY_MB << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_MB << 20, FILE_MB << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def argv_for(argv: Sequence[str], build: Path) -> tuple[list[str], dict[str, str] | None]:
    """The full command (limits, sandbox, TeX) and, when TeX runs bare, the environment to give it.

    TexSandboxUnavailable when there is no sandbox and running without one was not allowed.
    """
    binary = shutil.which(argv[0]) or argv[0]
    bwrap = tool()
    if bwrap is not None:
        full, env = command([binary, *argv[1:]], build, bwrap, binary), None
    elif settings().tex_unsandboxed:
        full, env = [binary, *argv[1:]], environment(str(build), binary)
    else:
        raise TexSandboxUnavailable(unavailable_reason())
    prlimit = shutil.which("prlimit")
    if prlimit:
        full = [prlimit, f"--as={MEMORY_MB << 20}", f"--cpu={CPU_S}", f"--fsize={FILE_MB << 20}", "--core=0", "--", *full]
    return full, env


async def run(build: Path, argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run one TeX step in ``build``: its exit status and output. TimeoutError after ``timeout_s`` (the sandbox is killed)."""
    full, env = argv_for(argv, build)
    proc = await asyncio.create_subprocess_exec(
        *full, cwd=build, env=env if env is not None else {}, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, preexec_fn=None if full[0].endswith("prlimit") else _limits(), start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        os.killpg(proc.pid, 9)  # its own session: the sandbox, or TeX and whatever it started when it runs bare
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
