"""Which of the mind's sections a pdflatex error points at, so the mind can be asked to fix just those.

The markup escapes LaTeX's special characters and control characters are
stripped before TeX, but a model's text can still break the build (a Latin
letter utf8 inputenc has no glyph for, such as U+0149). TeX's
log names the line it stopped on (``l.42 ...``); the section of paper.tex
that line lies in is the one to send back. An error outside the mind's prose
(the appendix, the bibliography, a missing package) names no section: no
model can fix it, and it is reported as it is.
"""

from __future__ import annotations

import re

from agents.writer.assemble import SECTION_ORDER

FIX_ROUNDS = 2  # fixes asked for before a PDF that still fails is reported with its log excerpt

_LINE = re.compile(r"(?m)(?:^|\s)l\.(\d+)\b")
_SECTION = re.compile(r"\\section\*?\{([^}]*)\}")
_FIELDS = {title: name for title, name in SECTION_ORDER} | {"Revisions": "revision_notes"}


def error_line(error: str) -> int | None:
    """The paper.tex line (1-based) a TeX error names, if it names one."""
    m = _LINE.search(error)
    return int(m.group(1)) if m else None


def failing_sections(tex: str, error: str) -> list[str]:
    """The PaperSections fields whose text is around the error's line; [] when it is not in the mind's prose."""
    n = error_line(error)
    lines = tex.splitlines()
    if n is None or not 1 <= n <= len(lines):
        return []
    for line in reversed(lines[:n]):
        if line.startswith("\\appendix") or line.startswith("\\bibliography"):
            return []
        if line.startswith("\\title{"):
            return ["title"]
        if line.startswith("\\begin{abstract}"):
            return ["abstract"]
        m = _SECTION.match(line)
        if m:
            name = _FIELDS.get(m.group(1))
            return [name] if name else []
    return []
