"""The template's own paper style: its ``latex/template.tex`` (and style files) filled with the lab's paper.

An AI Scientist template carries ``latex/template.tex`` with the venue's style files
beside it (``.sty``, ``.bst``, ``.cls``). When the project's template bundle has one, the
writer keeps that document's preamble (its class, its packages, its macros; not its
``filecontents`` bibliography, nor its placeholder title and author), adds what the lab's
body needs and the template does not load already, and puts the lab's whole document body
(title, abstract, sections, tables, figures, bibliography, appendix) in it, with the
template's ``\\bibliographystyle``. It compiles in the TeX sandbox with the style files
beside it; if it does not compile, the paper is built with the lab's own template and the
reason is logged (``their_latex_failed``).
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from agents.writer import pdf

TEMPLATE = "latex/template.tex"
PREFIXES = ("original/", "")  # an AI Scientist bundle keeps the user's folder under original/; the lab's format at the top
STYLE_SUFFIXES = {".sty", ".cls", ".bst", ".clo", ".cfg", ".def", ".fd"}
BEGIN = "\\begin{document}"
# The lab's packages a template decides for itself: the layout (its style sets the page) and the input encoding.
THEIRS_TO_DECIDE = {"geometry", "inputenc"}
FILECONTENTS = re.compile(r"\\begin\{filecontents\*?\}.*?\\end\{filecontents\*?\}\s*", re.S)
USEPACKAGE = re.compile(r"^\s*\\usepackage(?:\[[^\]]*\])?\{([^}]*)\}\s*$")
BIBSTYLE = re.compile(r"\\bibliographystyle\{([^}]*)\}")


def bundle_object(project: str) -> str:
    """Where ``lab run`` puts the project's template bundle (services/cli/run.py)."""
    return f"{project}/template.tar.gz"


@dataclass
class Style:
    """The template's ``template.tex`` and the style files beside it (by file name)."""

    tex: str
    files: dict[str, bytes] = field(default_factory=dict)


def from_bundle(data: bytes) -> Style | None:
    """The bundle's ``latex/template.tex`` and its style files, or None when it has none."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        prefix = next((p for p in PREFIXES if p + TEMPLATE in members), None)
        if prefix is None:
            return None

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            return f.read() if f is not None else b""

        folder = PurePosixPath(prefix + TEMPLATE).parent
        files = {PurePosixPath(n).name: read(n) for n in members
                 if PurePosixPath(n).parent == folder and PurePosixPath(n).suffix.lower() in STYLE_SUFFIXES}
        return Style(tex=read(prefix + TEMPLATE).decode(errors="replace"), files=files)


async def load(artifacts: Any, project: str) -> Style | None:
    """The project's template style, or None (no bundle in the store, or no ``latex/template.tex`` in it)."""
    try:
        data = await artifacts.get(bundle_object(project))
    except KeyError:
        return None
    try:
        return from_bundle(data)
    except (tarfile.TarError, OSError, EOFError):
        return None


def _drop_command(text: str, name: str) -> str:
    """``text`` without each ``\\name[..]{...}`` (balanced braces): the template's placeholder title, author, date."""
    out, i = [], 0
    pattern = re.compile(r"\\" + name + r"\s*(\[[^\]]*\])?\s*\{")
    while (m := pattern.search(text, i)) is not None:
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0) if text[j - 1] != "\\" else 0
            j += 1
        out.append(text[i : m.start()])
        i = j
    return "".join(out) + text[i:]


def _loads(text: str, package: str) -> bool:
    return re.search(r"\\(?:usepackage|RequirePackage)\s*(?:\[[^\]]*\])?\s*\{[^}]*\b" + re.escape(package) + r"\b[^}]*\}", text) is not None


def fill(style: Style, lab_tex: str) -> str:
    """The template's document with the lab's paper in it (see the module's docstring); ValueError if either has no body."""
    if BEGIN not in style.tex or BEGIN not in lab_tex:
        raise ValueError(f"no {BEGIN} in {TEMPLATE}")
    theirs = FILECONTENTS.sub("", style.tex.split(BEGIN, 1)[0])
    for name in ("title", "author", "date"):
        theirs = _drop_command(theirs, name)
    known = theirs + "".join(data.decode(errors="replace") for name, data in style.files.items() if not name.endswith(".bst"))
    lab_head, lab_body = lab_tex.split(BEGIN, 1)
    added = []
    for line in lab_head.splitlines():
        used = USEPACKAGE.match(line)
        if line.lstrip().startswith("\\documentclass"):
            continue
        if used and any(p.strip() in THEIRS_TO_DECIDE or _loads(known, p.strip()) for p in used.group(1).split(",")):
            continue
        added.append(line)
    body = BEGIN + lab_body
    chosen = BIBSTYLE.search(style.tex)
    if chosen:
        body = BIBSTYLE.sub(lambda _: f"\\bibliographystyle{{{chosen.group(1)}}}", body)
    return f"{theirs.rstrip()}\n% The lab's additions to the template's preamble (agents/writer/their_latex.py)\n" + "\n".join(added) + f"\n{body}"


async def compile_styled(style: Style | None, tex: str, bib: str, files: dict[str, bytes], log: Any) -> tuple[bytes, str]:
    """(PDF, the .tex it was built from): the template's style when it compiles, else the lab's ``tex`` (PdfError if that fails too)."""
    if style is not None:
        try:
            filled = fill(style, tex)
            return await pdf.compile_pdf(filled, bib, files, extra=style.files), filled
        except (ValueError, pdf.PdfError) as e:
            log.warning("their_latex_failed", reason=f"the template's {TEMPLATE} does not compile with this paper, "
                        f"so the lab's own style is used: {e}")
    return await pdf.compile_pdf(tex, bib, files), tex
