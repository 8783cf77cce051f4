"""Per-template environments: the extra packages a template declares, installed once per set of requirements.

A template declares packages in ``requirements.txt`` beside its ``experiment.py`` or as
``requirements:`` in ``template.yaml`` (an AI Scientist template: in ``lab.yaml``; the lab
writes the merged list into the bundle's ``template.yaml``). :func:`requirements_of` reads
them from the unpacked bundle.

On the local executor the runner builds, outside the sandbox, one environment per
requirements hash (:func:`ensure`): a venv on top of the lab's own Python whose
``site-packages`` chains to the lab's (a ``.pth`` file, since a venv made from a venv
would otherwise see the base installation's packages, not the lab's), so torch and numpy
stay shared and only what is missing is installed, by pip, from the configured index
(``LAB_PIP_INDEX_URL``, ``LAB_PIP_ARGS``). It lives under ``$LAB_HOME/envs/<hash>``, is
built under a lock (two jobs never build it twice), appears only once complete (built in
a side folder and renamed), and is mounted read-only in the sandbox, where the
experiment runs with its python. A failed build is one line naming the package.

On Docker and Kubernetes the job image must hold the packages: :func:`missing` checks
each requirement's installed metadata (name and version) and the job fails with one line
naming the first one absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from bus.settings import settings

READY = ".lab-ready"  # written last: an environment without it is not finished
CHAIN = "lab-base.pth"  # in the env's site-packages: the lab's own site-packages follow the env's
# pip's words for a requirement it could not satisfy, with the requirement after them.
NOT_FOUND = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the requirement) (\S+)")


class EnvError(Exception):
    """The template's environment cannot be built or is not there; the message is one line naming the package."""


def requirements_of(code: Path) -> list[str]:
    """The unpacked bundle's extra packages: ``template.yaml``'s ``requirements``, then ``requirements.txt``'s lines."""
    reqs: list[str] = []
    spec = code / "template.yaml"
    if spec.is_file():
        raw = yaml.safe_load(spec.read_text()) or {}
        if isinstance(raw, dict) and isinstance(raw.get("requirements"), list):
            reqs += [str(r) for r in raw["requirements"]]
    txt = code / "requirements.txt"
    if txt.is_file():
        reqs += [ln.split("#", 1)[0] for ln in txt.read_text().splitlines()]
    seen: dict[str, None] = {}
    for r in (r.strip() for r in reqs):
        if r:
            seen.setdefault(r)
    return list(seen)


def pip_args() -> list[str]:
    """The index arguments every build uses: ``LAB_PIP_INDEX_URL`` and ``LAB_PIP_ARGS``."""
    s = settings()
    return (["--index-url", s.pip_index_url] if s.pip_index_url else []) + shlex.split(s.pip_args)


def env_hash(requirements: list[str]) -> str:
    """One environment per set of requirements, lab Python and index: the first 16 hex digits of their SHA-256."""
    key = {"requirements": sorted(requirements), "python": sys.version, "base": sys.prefix, "pip": pip_args()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(requirements: list[str], root: Path) -> tuple[Path, bool]:
    """The environment for ``requirements`` under ``root``, built now if it is not there yet: (its folder, built now).

    Raises :class:`EnvError` (one line) when it cannot be built.
    """
    root.mkdir(parents=True, exist_ok=True)
    name = env_hash(requirements)
    env = root / name
    with _locked(root / f"{name}.lock"):
        if (env / READY).is_file():
            return env, False
        side = root / f"{name}.building"
        shutil.rmtree(side, ignore_errors=True)
        shutil.rmtree(env, ignore_errors=True)  # a half-built one from a crash
        try:
            _build(side, requirements)
            side.rename(env)
        finally:
            shutil.rmtree(side, ignore_errors=True)
    return env, True


def _build(env: Path, requirements: list[str]) -> None:
    """A venv chained to the lab's site-packages, then ``pip install`` of the requirements into it."""
    timeout = settings().env_build_timeout_s
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env)],
                          capture_output=True, text=True, timeout=timeout)
    if made.returncode != 0:
        raise EnvError(f"cannot create the template's environment: {_last(made.stderr)}")
    site = Path(subprocess.run([str(python_of(env)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    lab = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / CHAIN).write_text("".join(f"{p}\n" for p in lab))
    cmd = [str(python_of(env)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-warn-script-location",
           *pip_args(), *requirements]
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env_vars)
    except subprocess.TimeoutExpired:
        raise EnvError(f"installing the template's requirements ({', '.join(requirements)}) took over {timeout:.0f}s (LAB_ENV_BUILD_TIMEOUT_S)") from None
    if done.returncode != 0:
        raise EnvError(f"cannot install package {_culprit(done.stdout + done.stderr, requirements)} required by the template: {_last(done.stderr)}")
    (env / READY).write_text(json.dumps({"requirements": requirements}) + "\n")


def _culprit(output: str, requirements: list[str]) -> str:
    """The requirement pip says it could not satisfy, else all of them."""
    found = NOT_FOUND.search(output)
    return repr(found.group(1)) if found else ", ".join(map(repr, requirements))


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:300]


def missing(requirements: list[str]) -> str | None:
    """One line naming the first requirement this Python's installed packages do not satisfy, else None."""
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return f"the template's requirement {line!r} is not a valid requirement line"
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return f"this job image lacks package {req.name!r} required by the template; build an image with it"
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            return f"this job image has package {req.name!r} {version}, but the template requires {line!r}; build an image with it"
    return None


def with_python(cmd: list[str], python: Path) -> list[str]:
    """``cmd`` (from :func:`services.runner.runner.command`) run by ``python`` instead of the lab's interpreter."""
    if cmd and cmd[0] == sys.executable:
        return [str(python), *cmd[1:]]
    if cmd and Path(cmd[0]).name == "torchrun":  # its shebang names the lab's Python: run the module instead
        return [str(python), "-m", "torch.distributed.run", *cmd[1:]]
    return cmd
