"""Provenance of a run: the hashes that name the code and packages it ran, the chain from a run to its job, and its compute.

Pure functions over bytes and records, shared by the runner (which hashes what it
unpacked), ``lab export`` (``export.json``'s ``provenance``) and the writer (the
paper's provenance appendix), so the three cannot disagree on what a hash covers.

``reused`` says where a run's results came from: ``"fresh"`` for a run executed
for its job, ``"reused from <project>/<experiment>"`` for one the lab's result
cache served (bus/resultcache.py; ``RunRecord.reused_from``).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bus.schema.project import Usage
from bus.schema.results import RunRecord

# What is not the template's code: Python's byte-code caches and editor/VCS leftovers, as agents.templates.bundle skips them.
SKIPPED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints"})
FRESH = "fresh"
# What ``tar_sha256`` reads of a bundle's files at most: a template's code and small data, never a data set to hold in memory.
TAR_HASH_LIMIT = 256 << 20


def _skipped(rel: Path) -> bool:
    return any(part in SKIPPED_DIRS or part.startswith(".") for part in rel.parts) or rel.suffix == ".pyc"


def tree_sha256(folder: Path, skip: frozenset[str] = frozenset()) -> str:
    """sha256 over a code tree: each regular file's relative path and bytes, in sorted path order.

    Byte-code caches, hidden files and top-level entries named in ``skip`` (an outputs folder) are left
    out, so running the code (which may write ``__pycache__``) does not change its hash; a symbolic link
    counts by its target text, never followed. An empty or missing folder hashes like no file at all.
    """
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.is_dir() else []
    return _digest(
        (rel, str(p.readlink()).encode() if p.is_symlink() else p.read_bytes())
        for rel, p in files if not (_skipped(Path(rel)) or rel.split("/", 1)[0] in skip)
    )


def _digest(entries: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (relative path, bytes) pairs given in sorted path order: the one framing both hashes of a code tree use."""
    h = hashlib.sha256()
    for rel, data in entries:
        name = rel.encode()
        # Lengths first, so no two different trees can concatenate to the same stream.
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def tar_sha256(data: bytes) -> str:
    """``tree_sha256`` of a template bundle (tar.gz) as if unpacked: its regular files and links, by path.

    The result cache keys a run's code with it before anything is unpacked; a leading ``./`` is dropped.
    Raises ``ValueError`` for a bundle whose files add up to more than ``TAR_HASH_LIMIT`` bytes.
    """
    entries: list[tuple[str, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        if sum(m.size for m in members if m.isfile()) > TAR_HASH_LIMIT:
            raise ValueError(f"bundle files exceed {TAR_HASH_LIMIT >> 20} MiB: not hashed")
        for m in members:
            rel = m.name.removeprefix("./")
            if not (m.isfile() or m.issym()) or _skipped(Path(rel)):
                continue
            f = tar.extractfile(m) if m.isfile() else None
            entries.append((rel, f.read() if f is not None else m.linkname.encode()))
    return _digest(sorted(entries))


def reused_text(reused_from: str) -> str:
    """What a provenance row says of where a run's results came from: "fresh", or "reused from <project>/<experiment>"."""
    if not reused_from:
        return FRESH
    return "reused from " + "/".join(reused_from.split("/")[:2])


def packages_sha256(packages: dict[str, str]) -> str:
    """sha256 of the sorted ``name==version`` lines ("" when no package was recorded)."""
    if not packages:
        return ""
    return hashlib.sha256("".join(f"{k}=={v}\n" for k, v in sorted(packages.items())).encode()).hexdigest()


def text_sha256(text: str) -> str:
    """sha256 of a text's UTF-8 bytes; "" for no text (a run that applied no diff)."""
    return hashlib.sha256(text.encode()).hexdigest() if text else ""


def provenance(run: RunRecord) -> dict[str, Any]:
    """The chain from one run to what ran it; a field its runner did not record is "" (older runs record none)."""
    env = run.environment
    return {
        "experiment_id": run.experiment_id,
        "job_id": run.job_id,
        "attempt": run.attempt,
        "status": run.status,
        "executor": env.executor if env else "",
        "node": env.node if env else "",
        "image": env.image if env else "",
        "interpreter": env.interpreter if env else "",
        "packages_sha256": (env.packages_sha256 or packages_sha256(env.packages)) if env else "",
        "code_sha256": env.code_sha256 if env else "",
        "diff_sha256": text_sha256(run.diff),
        "reused": reused_text(run.reused_from),
        "reused_from": run.reused_from,  # the served run's <project>/<experiment>/<job>; "" when fresh
        "cpu_s": run.cpu_s,  # None: its runner could not see the experiment's CPU time (or predates measuring it)
        "gpu_s": run.gpu_s,
    }


def spend(runs: Iterable[RunRecord], usage: Mapping[str, Usage] | None = None) -> dict[str, Any]:
    """What a project's jobs used, each job once (by id): wall, CPU and GPU seconds, GPU-hours; and its minds' tokens.

    A run the result cache served (``reused_from``) ran no job: it is counted in ``reused``, not in the sums.

    ``cpu_s`` sums the jobs whose CPU time was measured, ``cpu_measured`` says how many those are (a job that ran in
    its own container is not); ``llm`` (only when ``usage`` is given) totals the tokens and money each role reported.
    """
    every = list({r.job_id: r for r in runs}.values())
    jobs = [r for r in every if not r.reused_from]
    cpu = [r.cpu_s for r in jobs if r.cpu_s is not None]
    gpu_s = sum(r.gpu_s for r in jobs)
    out: dict[str, Any] = {
        "jobs": len(jobs),
        "wall_s": round(sum(r.wall_s for r in jobs), 3),
        "cpu_s": round(sum(cpu), 3),
        "cpu_measured": len(cpu),
        "gpu_s": round(gpu_s, 3),
        "gpu_hours": round(gpu_s / 3600, 4),
        "reused": len(every) - len(jobs),
    }
    if usage is not None:
        total = sum(usage.values(), Usage())
        out["llm"] = {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
                      "tokens": total.prompt_tokens + total.completion_tokens, "cost_usd": round(total.cost_usd, 6)}
    return out
