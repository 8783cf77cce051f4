"""references.bib from the request's references, and a check that every \\cite resolves.

Every entry is rebuilt here from the reference's plain metadata (key, title,
authors, year, venue, DOI, URL), never copied from ``Reference.bibtex``: that
text comes from templates and users' libraries, and a field of raw TeX there
(``\\input``, ``\\openin``, ``\\catcode``, ``^^5c``) is code pdflatex would run.
Each value is escaped for TeX (backslash, braces, ``$ & % # _ ^ ~``, ...),
control characters are dropped, and the key keeps only ``[A-Za-z0-9:_-]``.
A DOI or URL is kept only when it is made of characters that mean nothing to
TeX (plainnat prints them with ``\\url``-like commands that take their
argument verbatim, so escaping would print the backslashes); else it is left out.

The entry key is ``Reference.key``, because that is the key the sections cite.
A separate check of the finished .tex against the .bib runs before pdflatex,
so a missing key is a readable error instead of a "?" in the PDF.
"""

from __future__ import annotations

import re

from bus.schema import Reference

ENTRY = re.compile(r"@(\w+)\s*\{\s*([^,\s]*)\s*,")
TEX_CITE = re.compile(r"\\(?:no)?cite[a-zA-Z]*\*?(?:\[[^\]]*\])*\{([^}]*)\}")
NON_ENTRIES = {"comment", "string", "preamble"}
# The entry types kept from a reference's own BibTeX, and the field its venue goes in.
VENUE_FIELD = {"article": "journal", "inproceedings": "booktitle", "incollection": "booktitle", "book": "publisher",
               "techreport": "institution", "phdthesis": "school", "misc": "howpublished"}
_KEY_DROP = re.compile(r"[^A-Za-z0-9:_-]")
_CONTROL = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]")
_DOI = re.compile(r"^10\.\d{4,9}/[A-Za-z0-9._;()/:<>+\[\]-]+$")
_URL = re.compile(r"^https?://[A-Za-z0-9._~:/?\[\]@!&'()*+,;=-]+$")
_RAW_FIELD = r"(?i)\b{}\s*=\s*[{{\"]\s*([^{{}}\"\s]+)\s*[}}\"]"
_TEX_CHARS = {
    "\\": r"\textbackslash{}", "{": r"\textbraceleft{}", "}": r"\textbraceright{}", "$": r"\$", "&": r"\&", "%": r"\%",
    "#": r"\#", "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def strip_controls(text: str) -> str:
    """Text without control characters (C0 but newline and tab, DEL, C1)."""
    return _CONTROL.sub("", text)


def safe_key(key: str) -> str:
    """A key with only ``[A-Za-z0-9:_-]``: nothing in it can close the entry or the \\cite it is pasted into."""
    return _KEY_DROP.sub("", key) or "ref"


def tex_value(text: str) -> str:
    """Plain text as a BibTeX value that is text and nothing else in TeX: one line, every special character escaped."""
    text = re.sub(r"\s+", " ", strip_controls(text)).strip()
    return bib_safe("".join(_TEX_CHARS.get(ch, ch) for ch in text))


def _checked(raw: str, name: str, pattern: re.Pattern[str]) -> str:
    m = re.search(_RAW_FIELD.format(name), raw)
    value = m.group(1) if m else ""
    return value if pattern.match(value) else ""


def bib_entry(ref: Reference) -> str:
    """The reference's entry, rebuilt from its metadata; its raw BibTeX gives at most the entry type, a DOI and a URL (checked)."""
    head = next((m for m in ENTRY.finditer(ref.bibtex) if m.group(1).lower() not in NON_ENTRIES), None)
    kind = head.group(1).lower() if head else ""
    if kind not in VENUE_FIELD or (kind != "misc" and not ref.venue):
        kind = "article" if ref.venue else "misc"
    doi = _checked(ref.bibtex, "doi", _DOI) or (ref.paper_id if ref.paper_id and _DOI.match(ref.paper_id) else "")
    fields = {
        "title": "{" + tex_value(ref.title) + "}",  # braced again: bibtex must not change its case
        "author": " and ".join(tex_value(a) for a in ref.authors if tex_value(a)),
        "year": str(ref.year) if ref.year else "",
        VENUE_FIELD[kind]: tex_value(ref.venue),
        "doi": doi,
        "url": _checked(ref.bibtex, "url", _URL),
    }
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items() if v)
    return f"@{kind}{{{safe_key(ref.key)},\n{body}\n}}"


_BIB_CHARS = {"–": "--", "—": "---", "“": "``", "”": "''", "‘": "`", "’": "'", "…": "...", "−": "-", "\u00a0": " "}


def bib_safe(text: str) -> str:
    """Characters pdflatex cannot typeset (from a source's Unicode) become "?", not a failed build."""
    return "".join(_BIB_CHARS.get(ch, ch if ord(ch) < 128 or ch.isalpha() and ord(ch) < 0x180 else "?") for ch in text)


def references_bib(refs: list[Reference]) -> str:
    seen: dict[str, str] = {}
    for ref in refs:
        seen.setdefault(safe_key(ref.key), bib_entry(ref))
    return "\n\n".join(seen.values()) + "\n"


def bib_keys(bib: str) -> set[str]:
    return {m.group(2) for m in ENTRY.finditer(bib) if m.group(1).lower() not in NON_ENTRIES}


def tex_cite_keys(tex: str) -> set[str]:
    return {k.strip() for m in TEX_CITE.finditer(tex) for k in m.group(1).split(",") if k.strip()}


def unresolved(tex: str, bib: str) -> list[str]:
    """Cited keys with no entry in the .bib, sorted."""
    return sorted(tex_cite_keys(tex) - bib_keys(bib))
