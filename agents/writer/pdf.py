"""pdflatex + bibtex in a sandboxed temporary folder, bounded in time, failing with one line.

A paper whose PDF does not build is still a paper (the .tex and .md are
uploaded); the error goes into ``DraftReady.pdf_error`` for the PI and the
co-PI to see, taken from the TeX log's first "!" line rather than its tail of
boilerplate, and the log from that line on into ``DraftReady.pdf_log``.

What reaches TeX is untrusted (references from templates and users' libraries,
figures from runs), so: TeX runs in :mod:`agents.writer.texbox`'s sandbox;
control characters are stripped from the .tex and the .bib (an ESC in a title
is not a failed build); and a figure that is not a real image of the type its
name says is left out, its ``\\includegraphics`` replaced by a note.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image  # matplotlib's own dependency: a figure is decoded before TeX sees it

from agents.writer import texbox
from agents.writer.citations import strip_controls
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
    try:
        return await texbox.run(cwd, argv, STEP_TIMEOUT_S)
    except TimeoutError:
        raise PdfError(f"{argv[0]} took longer than {STEP_TIMEOUT_S:.0f} s") from None
    except texbox.TexSandboxUnavailable as e:
        raise PdfError(str(e)) from None


_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n", "PNG"), ".jpg": (b"\xff\xd8\xff", "JPEG"), ".jpeg": (b"\xff\xd8\xff", "JPEG"), ".pdf": (b"%PDF-", "PDF")}


def image_problem(name: str, data: bytes) -> str:
    """Why ``data`` is not a figure pdflatex can include under ``name`` ("" when it is): magic bytes, then a real decode."""
    ext = Path(name).suffix.lower()
    if ext not in _MAGIC:
        return f"{ext or 'no extension'} is not a figure type (PNG, JPEG, PDF)"
    magic, kind = _MAGIC[ext]
    if not data.startswith(magic):
        return f"not a {kind} file (its first bytes are {data[:8]!r})"
    if kind == "PDF":
        return "" if b"%%EOF" in data[-1024:] else "a truncated PDF (no %%EOF at its end)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != kind:
                return f"a {im.format} image named {name}"
            im.load()
    except Exception as e:  # PIL raises many types on a corrupt image; any of them means "leave it out"
        return f"a {kind} that does not decode ({type(e).__name__}: {e})"
    return ""


def _graphic(name: str) -> re.Pattern[str]:
    return re.compile(r"\\includegraphics(\[[^\]]*\])?\{" + re.escape(name) + r"\}")


def checked_figures(tex: str, files: dict[str, bytes]) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """The .tex and files with every invalid figure left out (a boxed note where it was), and why each was."""
    good, bad = {}, {}
    for name, data in files.items():
        problem = image_problem(name, data)
        if problem:
            bad[name] = problem
            tex = _graphic(name).sub(lambda m: r"\fbox{Figure left out: not a valid image.}", tex)
        else:
            good[name] = data
    return tex, good, bad


async def compile_pdf(
    tex: str, bib: str, files: dict[str, bytes], left_out: dict[str, str] | None = None, extra: dict[str, bytes] | None = None,
) -> bytes:
    """The PDF's bytes, or PdfError. Figures that are not valid images are left out, and named with why in ``left_out``.

    ``extra``: files put beside the paper as they are, not figures (a template's .sty and .bst: :mod:`agents.writer.their_latex`).
    """
    if not available():
        raise PdfError("pdflatex not found; install texlive to get a PDF")
    tex, files, bad = checked_figures(strip_controls(tex), files)
    if left_out is not None:
        left_out.update(bad)
    with tempfile.TemporaryDirectory(prefix="lab-paper-") as tmp:
        d = Path(tmp)
        (d / "paper.tex").write_text(tex)
        (d / "references.bib").write_text(strip_controls(bib))
        for name, data in {**(extra or {}), **files}.items():
            (d / Path(name).name).write_bytes(data)
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
                raise _failed((d / "paper.log").read_text(errors="replace") if (d / "paper.log").exists() else out)
        return (d / "paper.pdf").read_bytes()
