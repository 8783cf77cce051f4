"""Which sources a lab uses, from config or ``LAB_LIT_SOURCES``.

By default the lab asks Semantic Scholar, then OpenAlex, then the user's
library and the template's bibliography. A web source that cannot be reached
fails fast (no DNS, refused) and its circuit breaker keeps it skipped for a
cool-down, so an offline machine works from the local ones at almost no cost.
``LAB_LIT_SOURCES=local,template`` (what the test suite sets) never leaves
the machine.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from agents.base import ArtifactStore
from agents.lit.errors import SourceUnavailable
from agents.lit.index import FtsIndex, default_lab_home, library_path
from agents.lit.sources import LocalLibrarySource, Source, template_source
from bus.settings import settings

DEFAULT_SOURCES = ("semantic_scholar", "openalex", "local", "template")
LOCAL_SOURCES = ("local", "template")
KNOWN = ("semantic_scholar", "openalex", "local", "template")
_ALIASES = {"s2": "semantic_scholar", "semanticscholar": "semantic_scholar", "library": "local"}


def source_names(value: str | list[str] | tuple[str, ...] | None = None) -> tuple[list[str], list[str]]:
    """(known names in order, unknown names); ``None`` reads LAB_LIT_SOURCES."""
    if value is None:
        value = settings().lit_sources or list(DEFAULT_SOURCES)
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    unknown: list[str] = []
    for item in items:
        name = _ALIASES.get(item.strip().lower(), item.strip().lower())
        if not name:
            continue
        (names if name in KNOWN else unknown).append(name)
    return list(dict.fromkeys(names)), unknown


async def open_sources(
    names: list[str],
    *,
    lab_home: Path | None,
    artifacts: ArtifactStore | None,
    template_object: str,
    web: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[Source], dict[str, str]]:
    """The sources to ask, and why any named one could not be opened."""
    web = web or {}
    sources: list[Source] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "semantic_scholar":
            from agents.lit.s2 import SemanticScholarSource

            opts = {"api_url": os.environ.get("S2_API_URL") or None, **web.get(name, {})}
            sources.append(SemanticScholarSource(**opts))
        elif name == "openalex":
            from agents.lit.openalex import OpenAlexSource

            sources.append(OpenAlexSource(**web.get(name, {})))
        elif name == "local":
            try:
                sources.append(LocalLibrarySource(FtsIndex(library_path(lab_home or default_lab_home()))))
            except (sqlite3.Error, OSError) as e:  # an unreadable library must not stop the check; skipped[] is logged
                skipped[name] = f"local library unavailable: {type(e).__name__}: {e}"
        elif name == "template":
            if not template_object or artifacts is None:
                skipped[name] = "no template bundle given"
                continue
            try:
                sources.append(await template_source(artifacts, template_object))
            except SourceUnavailable as e:
                skipped[name] = str(e)
    return sources, skipped


def close_sources(sources: list[Source]) -> None:
    for source in sources:
        index = getattr(source, "index", None)
        if isinstance(index, FtsIndex):
            index.close()
