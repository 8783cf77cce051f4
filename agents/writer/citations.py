"""references.bib from the request's references, and a check that every \\cite resolves.

The entry key inside each BibTeX string is rewritten to ``Reference.key``,
because that is the key the sections cite; sources disagree about keys.
A separate check of the finished .tex against the .bib runs before pdflatex,
so a missing key is a readable error instead of a "?" in the PDF.
"""

from __future__ import annotations

import re

from bus.schema import Reference

ENTRY = re.compile(r"@(\w+)\s*\{\s*([^,\s]*)\s*,")
TEX_CITE = re.compile(r"\\(?:no)?cite[a-zA-Z]*\*?(?:\[[^\]]*\])*\{([^}]*)\}")
NON_ENTRIES = {"comment", "string", "preamble"}


def _field(value: str) -> str:
    return value.replace("{", "").replace("}", "").replace("\n", " ")


def fallback_entry(ref: Reference) -> str:
    fields = {"title": ref.title, "author": " and ".join(ref.authors), "year": str(ref.year or ""), "howpublished": ref.venue}
    body = ",\n".join(f"  {k} = {{{_field(v)}}}" for k, v in fields.items() if v)
    return f"@misc{{{ref.key},\n{body}\n}}"


def bib_entry(ref: Reference) -> str:
    m = next((m for m in ENTRY.finditer(ref.bibtex) if m.group(1).lower() not in NON_ENTRIES), None)
    if m is None or ref.bibtex.count("{") != ref.bibtex.count("}"):
        return fallback_entry(ref)
    depth, end = 0, len(ref.bibtex)
    for i in range(ref.bibtex.index("{", m.start()), len(ref.bibtex)):
        depth += {"{": 1, "}": -1}.get(ref.bibtex[i], 0)
        if depth == 0:
            end = i + 1
            break
    return ref.bibtex[m.start() : m.start(2)] + ref.key + ref.bibtex[m.end(2) : end]


_BIB_CHARS = {"–": "--", "—": "---", "“": "``", "”": "''", "‘": "`", "’": "'", "…": "...", "−": "-", "\u00a0": " "}


def bib_safe(text: str) -> str:
    """Characters pdflatex cannot typeset (from a source's Unicode) become "?", not a failed build."""
    return "".join(_BIB_CHARS.get(ch, ch if ord(ch) < 128 or ch.isalpha() and ord(ch) < 0x180 else "?") for ch in text)


def references_bib(refs: list[Reference]) -> str:
    seen: dict[str, str] = {}
    for ref in refs:
        seen.setdefault(ref.key, bib_safe(bib_entry(ref)))
    return "\n\n".join(seen.values()) + "\n"


def bib_keys(bib: str) -> set[str]:
    return {m.group(2) for m in ENTRY.finditer(bib) if m.group(1).lower() not in NON_ENTRIES}


def tex_cite_keys(tex: str) -> set[str]:
    return {k.strip() for m in TEX_CITE.finditer(tex) for k in m.group(1).split(",") if k.strip()}


def unresolved(tex: str, bib: str) -> list[str]:
    """Cited keys with no entry in the .bib, sorted."""
    return sorted(tex_cite_keys(tex) - bib_keys(bib))
