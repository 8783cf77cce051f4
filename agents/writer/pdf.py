"""pdflatex + bibtex in a temporary folder, bounded in time, failing with one line.

A paper whose PDF does not build is still a paper (the .tex and .md are
uploaded); the error goes into ``DraftReady.pdf_error`` for the PI and the
co-PI to see, taken from the TeX log's first "!" line rather than its tail of
boilerplate.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from bus.errors import LabError

STEP_TIMEOUT_S = 90.0


class PdfError(LabError, RuntimeError):
    """The PDF could not be built; the message is the meaningful log line, ``excerpt`` the log around it."""

    def __init__(self, message: str, excerpt: str = "") -> None:
        super().__init__(message)
        self.excerpt = excerpt


EXCERPT_LINES = 12


def log_excerpt(log: str) -> str:
    """The log from its first error line on (or its tail): what a person needs to fix the source."""
    lines = log.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("!")), max(0, len(lines) - EXCERPT_LINES))
    return "\n".join(lines[start : start + EXCERPT_LINES]).strip()


def _failed(log: str, prefix: str = "") -> PdfError:
    return PdfError(prefix + meaningful_line(log), log_excerpt(log))


def available() -> bool:
    return shutil.which("pdflatex") is not None


def meaningful_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines()]
    for i, ln in enumerate(lines):
        if ln.startswith("!"):
            where = next((x for x in lines[i + 1 : i + 8] if x.startswith("l.")), "")
            return f"{ln} {where}".strip()
    rest = [ln for ln in lines if ln and not ln.startswith(("(", ")", "[", "Transcript", "Output written"))]
    return rest[-1] if rest else "no log output"


async def _step(cwd: Path, *argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PdfError(f"{argv[0]} took longer than {STEP_TIMEOUT_S:.0f} s") from None
    return proc.returncode or 0, out.decode(errors="replace")


async def compile_pdf(tex: str, bib: str, files: dict[str, bytes]) -> bytes:
    """The PDF's bytes, or PdfError."""
    if not available():
        raise PdfError("pdflatex not found; install texlive to get a PDF")
    with tempfile.TemporaryDirectory(prefix="lab-paper-") as tmp:
        d = Path(tmp)
        (d / "paper.tex").write_text(tex)
        (d / "references.bib").write_text(bib)
        for name, data in files.items():
            (d / name).write_bytes(data)
        latex = ("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "paper.tex")
        rc, out = await _step(d, *latex)
        if rc != 0:
            raise _failed((d / "paper.log").read_text(errors="replace") if (d / "paper.log").exists() else out)
        if "\\citation{" in (d / "paper.aux").read_text(errors="replace"):
            rc, out = await _step(d, "bibtex", "paper")
            if rc >= 2:  # 1 means warnings only
                raise _failed(out, "bibtex: ")
        for _ in range(2):
            rc, out = await _step(d, *latex)
            if rc != 0:
                raise _failed((d / "paper.log").read_text(errors="replace"))
        return (d / "paper.pdf").read_bytes()
