"""Reading a user's library: BibTeX (bibtexparser 2) and CSL-JSON into References.

A file that cannot be read at all raises LibraryError; a malformed entry in a
readable file becomes a Problem (its 1-based line and why) and is skipped, so
the rest of the library still gets indexed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bibtexparser.entrypoint import parse_string
from bibtexparser.model import DuplicateBlockKeyBlock, Entry

from agents.lit.bibtex import clean_key, format_entry, make_key, reference_from_metadata, safe_fields
from agents.lit.errors import LibraryError
from agents.lit.text import plain
from bus.schema import Reference

# bibtexparser logs each failed block itself; we report them as Problems with
# their line, so its own messages would only say the same thing twice.
logging.getLogger("bibtexparser").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Parsed:
    refs: list[Reference] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _year(value: str) -> int | None:
    m = re.search(r"\d{4}", value)
    return int(m.group()) if m else None


def _authors(value: str) -> list[str]:
    return [plain(a) for a in re.split(r"\s+and\s+", value.strip()) if a.strip()]


def _reference(entry: Entry, source: str) -> Reference:
    fields = {f.key.lower(): str(f.value).strip() for f in entry.fields}
    title = plain(fields.get("title", ""))
    if not title:
        raise ValueError(f"entry {entry.key!r} has no title")
    authors = _authors(fields.get("author", fields.get("editor", "")))
    year = _year(fields.get("year", fields.get("date", "")))
    key = clean_key(entry.key) if entry.key.strip() else make_key(authors, year, title)
    venue = plain(fields.get("journal") or fields.get("booktitle") or fields.get("publisher") or fields.get("howpublished", ""))
    return Reference(
        key=key,
        title=title,
        authors=authors,
        year=year,
        venue=venue,
        abstract=plain(fields.get("abstract", "")),
        # Never the raw fields: a template's or a user's library is not trusted TeX (\\input, \\openin, ^^5c ...).
        bibtex=format_entry(entry.entry_type.lower(), key, safe_fields(fields)),
        source=source,
        paper_id=fields.get("doi") or None,
    )


def parse_bibtex(text: str, source: str = "local") -> Parsed:
    out = Parsed()
    library = parse_string(text)
    for block in library.failed_blocks:
        line = (block.start_line or 0) + 1
        if isinstance(block, DuplicateBlockKeyBlock):
            out.problems.append(Problem(line, f"duplicate key {block.key!r} in this file (the first one is kept)"))
        else:
            raw = (block.raw or "").strip()
            head = raw.splitlines()[0][:60] if raw else ""
            out.problems.append(Problem(line, f"malformed entry, skipped: {head}"))
    for entry in library.entries:
        try:
            out.refs.append(_reference(entry, source))
        except ValueError as e:
            out.problems.append(Problem((entry.start_line or 0) + 1, str(e)))
    out.problems.sort(key=lambda p: p.line)
    return out


def _csl_reference(item: Any, source: str) -> Reference:
    if not isinstance(item, dict):
        raise ValueError("not a CSL-JSON object")
    title = plain(str(item.get("title", "")))
    if not title:
        raise ValueError(f"item {item.get('id', '?')!r} has no title")
    authors = []
    for a in item.get("author", []) or []:
        if isinstance(a, dict):
            name = a.get("literal") or ", ".join(p for p in (a.get("family", ""), a.get("given", "")) if p)
            if name:
                authors.append(str(name))
    parts = (item.get("issued") or {}).get("date-parts") or [[None]]
    year = parts[0][0] if parts and parts[0] and isinstance(parts[0][0], int) else _year(str(parts))
    venue = str(item.get("container-title") or item.get("publisher") or "")
    kind = {"article-journal": "article", "paper-conference": "inproceedings", "book": "book", "chapter": "incollection"}
    extra = {"doi": str(item["DOI"])} if item.get("DOI") else {}
    return reference_from_metadata(
        title, authors, year, venue, source=source, abstract=plain(str(item.get("abstract", ""))),
        entry_type=kind.get(str(item.get("type")), ""), extra=extra, paper_id=extra.get("doi"),
        key=clean_key(str(item["id"])) if item.get("id") else None,
    )


def parse_csl_json(text: str, source: str = "local") -> Parsed:
    """CSL-JSON (a list of items, as Zotero exports it); each item's line is where it starts."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        raise LibraryError("CSL-JSON must be a list of items")
    out = Parsed()
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            out.problems.append(Problem(line, f"invalid JSON: {e.msg}; the rest of the file is skipped"))
            break
        try:
            out.refs.append(_csl_reference(item, source))
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            out.problems.append(Problem(line, str(e)))
    return out


def read_library_file(path: Path, source: str = "local") -> Parsed:
    """BibTeX or CSL-JSON by extension (``.json`` is CSL-JSON, anything else BibTeX)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LibraryError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LibraryError(f"{path}: is a directory, not a library file") from None
    except UnicodeDecodeError:
        raise LibraryError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise LibraryError(f"{path}: {e.strerror}") from None
    if path.suffix.lower() == ".json":
        return parse_csl_json(text, source)
    parsed = parse_bibtex(text, source)
    if not parsed.refs and not parsed.problems and "@" not in text:
        raise LibraryError(f"{path}: no BibTeX entries found")
    return parsed
