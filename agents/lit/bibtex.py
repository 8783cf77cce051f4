"""BibTeX out, and the check that a paper cites only what its bibliography holds.

Keys are letters and digits only: any other character (``:``, ``-``, ``_``,
accents) is legal in some BibTeX dialects and breaks in others, and the writer
must be able to paste a key into ``\\cite{}`` without thinking.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from agents.lit.errors import UnresolvedCitation
from agents.lit.text import STOPWORDS, plain
from bus.schema import Reference

_LATEX_SPECIAL = re.compile(r"([&%$#_])")
_CONTROL = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_IDENTIFIERS = {"doi", "url", "eprint", "isbn", "issn", "arxivid"}
_IDENTIFIER = re.compile(r"[A-Za-z0-9._~:/?\[\]@!&'()*+,;=<>-]+")
_CITE = re.compile(
    r"\\(?:no)?(?:cite|citep|citet|citealp|citealt|citeauthor|citeyear|parencite|textcite|autocite|footcite)\*?"
    r"(?:\s*\[[^\]]*\]){0,2}\s*\{([^}]*)\}"
)
_ENTRY_KEY = re.compile(r"@(\w+)\s*[{(]\s*([^,\s]+)\s*,")
_NOT_ENTRIES = {"comment", "string", "preamble"}


def ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def clean_key(raw: str) -> str:
    """A citation key of letters and digits only (``kingma:2015-adam`` -> ``kingma2015adam``)."""
    key = re.sub(r"[^A-Za-z0-9]", "", ascii_fold(raw))
    if not key:
        return "ref"
    return key if key[0].isalpha() else f"ref{key}"


def _last_name(author: str) -> str:
    author = author.strip().strip("{}")
    if "," in author:
        return author.split(",", 1)[0]
    parts = author.split()
    return parts[-1] if parts else ""


def make_key(authors: list[str], year: int | None, title: str) -> str:
    """``<first author's last name><year><first content word of the title>``, as BibTeX tools do."""
    last = clean_key(_last_name(authors[0])).lower() if authors else "anon"
    words = [w for w in re.findall(r"[A-Za-z0-9]+", ascii_fold(title).lower()) if w not in STOPWORDS]
    return clean_key(f"{last}{year or ''}{words[0] if words else ''}")


def latex_escape(text: str) -> str:
    """Escape plain text (from an API, or a library field made plain) so BibTeX and LaTeX read it as text and nothing else.

    No backslash, brace or control character survives, and ``^`` cannot start ``^^5c`` (a backslash in TeX's ^^-notation).
    """
    text = _CONTROL.sub("", text).replace("\\", " ").replace("{", "").replace("}", "")
    text = _LATEX_SPECIAL.sub(r"\\\1", text).replace("^", r"\^{}").replace("~", r"\~{}")
    return re.sub(r"\s+", " ", text).strip()


def safe_fields(fields: dict[str, str]) -> dict[str, str]:
    """A library entry's fields as plain, escaped text; an identifier (DOI, URL, eprint) kept only when it holds no TeX."""
    out = {}
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name):
            continue
        if name in _IDENTIFIERS:
            value = value.strip()
            if _IDENTIFIER.fullmatch(value):
                out[name] = value
        else:
            out[name] = latex_escape(plain(value))
    return out


def format_entry(entry_type: str, key: str, fields: dict[str, str]) -> str:
    """One entry; ``fields`` hold values that are already valid LaTeX."""
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items() if value)
    return f"@{entry_type}{{{key},\n{body}\n}}"


def entry_from_metadata(
    key: str, title: str, authors: list[str], year: int | None, venue: str = "", entry_type: str = "", extra: dict[str, str] | None = None
) -> str:
    """BibTeX for metadata from an API (plain text, escaped here)."""
    kind = entry_type or ("article" if venue else "misc")
    venue_field = "booktitle" if kind == "inproceedings" else "journal" if kind == "article" else "howpublished"
    fields = {
        "title": latex_escape(title),
        "author": " and ".join(latex_escape(a) for a in authors),
        "year": str(year) if year else "",
        venue_field: latex_escape(venue),
    }
    fields.update({k: latex_escape(v) for k, v in (extra or {}).items()})
    return format_entry(kind, key, fields)


def reference_from_metadata(
    title: str,
    authors: list[str],
    year: int | None,
    venue: str,
    *,
    source: str,
    abstract: str = "",
    entry_type: str = "",
    extra: dict[str, str] | None = None,
    key: str | None = None,
    paper_id: str | None = None,
) -> Reference:
    """A Reference for metadata from an API or a CSL-JSON file: the key made as BibTeX tools do unless given, the BibTeX built here."""
    key = key or make_key(authors, year, title)
    return Reference(
        key=key,
        title=title,
        authors=authors,
        year=year,
        venue=venue,
        abstract=abstract,
        bibtex=entry_from_metadata(key, title, authors, year, venue, entry_type, extra),
        source=source,
        paper_id=paper_id,
    )


def rekey(ref: Reference, key: str) -> Reference:
    """The same reference under another key, its BibTeX rewritten to match."""
    bibtex = _ENTRY_KEY.sub(lambda m: f"@{m.group(1)}{{{key},", ref.bibtex, count=1)
    return ref.model_copy(update={"key": key, "bibtex": bibtex})


def unique_keys(refs: Iterable[Reference]) -> list[Reference]:
    """Give colliding keys a letter suffix (``smith2020a``, ``smith2020b``) so every \\cite is unambiguous."""
    out: list[Reference] = []
    taken: set[str] = set()
    for ref in refs:
        key = ref.key
        if key in taken:
            key = next(f"{ref.key}{chr(c)}" for c in range(ord("b"), ord("z") + 1) if f"{ref.key}{chr(c)}" not in taken)
            ref = rekey(ref, key)
        taken.add(key)
        out.append(ref)
    return out


def to_bibtex(refs: Iterable[Reference]) -> str:
    """A references.bib from found references; a key seen twice keeps its first entry."""
    seen: set[str] = set()
    entries = []
    for ref in refs:
        if ref.key in seen:
            continue
        seen.add(ref.key)
        entries.append(ref.bibtex.strip())
    return "\n\n".join(entries) + ("\n" if entries else "")


def cite_keys(latex: str) -> list[str]:
    """Every key cited in a LaTeX string, in order of first use (``\\nocite{*}`` excluded)."""
    keys: list[str] = []
    for group in _CITE.findall(latex):
        for key in group.split(","):
            key = key.strip()
            if key and key != "*" and key not in keys:
                keys.append(key)
    return keys


def bib_keys(bib: str) -> set[str]:
    return {key for kind, key in _ENTRY_KEY.findall(bib) if kind.lower() not in _NOT_ENTRIES}


def missing_citations(latex: str, bib: str) -> list[str]:
    defined = bib_keys(bib)
    return [key for key in cite_keys(latex) if key not in defined]


def check_citations(latex: str, bib: str) -> None:
    """Raise UnresolvedCitation when the LaTeX cites a key the bib lacks."""
    missing = missing_citations(latex, bib)
    if missing:
        raise UnresolvedCitation(missing)
