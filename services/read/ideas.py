"""The idea archive as the CLI and the web view read it: what every project tried on a template and what came of it."""

from __future__ import annotations

from typing import Any

from bus.client import Bus
from bus.schema import ArchiveRecord


async def archive_records(bus: Bus, template: str | None) -> list[ArchiveRecord]:
    """The template's records (every template's with None), oldest first; none when the lab has no archive bucket yet."""
    from bus.errors import NotFound
    from bus.store import IdeaArchive

    try:
        archive = await IdeaArchive.open(bus)
    except NotFound:  # no archive bucket yet
        return []
    return await archive.records(template)


def tried(r: ArchiveRecord) -> str:
    """What an archived idea changed, in one line: its knob values and its code change."""
    o = r.outcome
    parts = [f"{k}={v}" for k, v in o.changes.items()]
    if o.code is not None:
        parts.append(f"code: {o.code.variant or o.code.summary}")
    return ", ".join(parts) or "(no change)"


def as_rows(records: list[ArchiveRecord]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in records]
