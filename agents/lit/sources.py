"""Where references come from, behind one small protocol.

A source answers ``search(query, limit)`` with real entries or raises
SourceUnavailable; ``cache_scope()`` names what its answers depend on (the
service, or a library's fingerprint) so the result cache never serves an
answer from a library that has since changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml

from agents.base import ArtifactStore
from agents.lit.errors import SourceUnavailable
from agents.lit.index import FtsIndex
from agents.lit.library_files import Problem, parse_bibtex
from agents.templates import unbundle
from bus.schema import Reference


@runtime_checkable
class Source(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[Reference]: ...
    async def cache_scope(self) -> str: ...


class LocalLibrarySource:
    """The user's own library (``lab lit add``), an FTS5 file under the lab home."""

    name = "local"

    def __init__(self, index: FtsIndex) -> None:
        self.index = index

    async def search(self, query: str, limit: int) -> list[Reference]:
        hits = await asyncio.to_thread(self.index.search, query, limit)
        return [h.ref for h in hits]

    async def cache_scope(self) -> str:
        return f"local-{await asyncio.to_thread(self.index.fingerprint)}"


class TemplateLibrarySource:
    """The references.bib a template ships: the works its task is built on."""

    name = "template"

    def __init__(self, bib: str) -> None:
        self.digest = hashlib.sha256(bib.encode()).hexdigest()[:16]
        self.index = FtsIndex()
        parsed = parse_bibtex(bib, source=self.name)
        self.problems: list[Problem] = parsed.problems
        self.index.upsert(parsed.refs)

    async def search(self, query: str, limit: int) -> list[Reference]:
        return [h.ref for h in self.index.search(query, limit)]

    async def cache_scope(self) -> str:
        return f"template-{self.digest}"


def _read_bib(folder: Path) -> str:
    name = "references.bib"
    spec_file = folder / "template.yaml"
    if spec_file.is_file():
        spec = yaml.safe_load(spec_file.read_text()) or {}
        if isinstance(spec, dict) and isinstance(spec.get("references"), str):
            name = spec["references"]
    bib = (folder / name).resolve()
    if not bib.is_relative_to(folder.resolve()) or not bib.is_file():
        return ""
    return bib.read_text(encoding="utf-8", errors="replace")


async def template_source(artifacts: ArtifactStore, object_name: str) -> TemplateLibrarySource:
    """Fetch the template bundle and index its bibliography; SourceUnavailable when that fails."""
    try:
        data = await artifacts.get(object_name)
    except Exception as e:  # the store is another team's: any failure means "not available now"
        raise SourceUnavailable(f"template bundle {object_name!r}: {type(e).__name__}: {e}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="lab-template-") as tmp:
            unbundle(data, Path(tmp))
            bib = _read_bib(Path(tmp))
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as e:
        raise SourceUnavailable(f"template bundle {object_name!r} unreadable: {e}") from None
    return TemplateLibrarySource(bib)
