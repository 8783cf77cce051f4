"""The fallback chain: ask sources in order, cache each answer, note who answered.

Sources are asked in the configured order until ``limit`` distinct papers are
found; a source that is unreachable or rate-limited is skipped (and not asked
again during this check, so one outage costs one retry budget, not one per
query). Any other failure of a source is logged and treated as an empty
answer: a novelty check must finish even when a source misbehaves.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import structlog

from agents.base import Cache
from agents.lit.errors import SourceUnavailable
from agents.lit.sources import Source
from bus.schema import Reference

CACHE_PREFIX = "lit"


@dataclass
class Answer:
    query: str
    refs: list[Reference] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # sources that contributed, in order
    cache_hits: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # source -> why it gave nothing


def cache_key(scope: str, query: str, limit: int) -> str:
    """A NATS-KV-safe key from the source's scope and the normalised query."""
    norm = " ".join(query.lower().split())
    digest = hashlib.sha256(f"{limit}|{norm}".encode()).hexdigest()[:32]
    return f"{CACHE_PREFIX}.{re.sub(r'[^A-Za-z0-9_-]', '_', scope)}.{digest}"


def same_paper(a: Reference, b: Reference) -> bool:
    if a.paper_id and b.paper_id and a.paper_id == b.paper_id:
        return True
    return re.sub(r"[^a-z0-9]", "", a.title.lower()) == re.sub(r"[^a-z0-9]", "", b.title.lower())


class FallbackChain:
    def __init__(self, sources: list[Source], cache: Cache | None = None, log: Any = None) -> None:
        self.sources = sources
        self.cache = cache
        self.log = log or structlog.get_logger("lit.chain")
        self.down: dict[str, str] = {}

    async def _cached(self, key: str) -> list[Reference] | None:
        if self.cache is None:
            return None
        try:
            value = await self.cache.get(key)
            return None if value is None else [Reference.model_validate(r) for r in value["refs"]]
        except Exception as e:  # a broken cache entry or KV outage only costs a fresh lookup
            self.log.warning("lit_cache_unreadable", key=key, reason=f"{type(e).__name__}: {e}")
            return None

    async def _store(self, key: str, refs: list[Reference]) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.put(key, {"refs": [r.model_dump(mode="json") for r in refs]})
        except Exception as e:  # the cache only saves a lookup; the answer is already in hand
            self.log.warning("lit_cache_unwritable", key=key, reason=f"{type(e).__name__}: {e}")

    async def _ask(self, source: Source, query: str, limit: int, answer: Answer) -> list[Reference]:
        key = cache_key(await source.cache_scope(), query, limit)
        cached = await self._cached(key)
        if cached is not None:
            answer.cache_hits += 1
            self.log.info("lit_source_answered", source=source.name, query=query, n=len(cached), cached=True)
            return cached
        refs = await source.search(query, limit)
        self.log.info("lit_source_answered", source=source.name, query=query, n=len(refs), cached=False)
        await self._store(key, refs)
        return refs

    async def search(self, query: str, limit: int = 10) -> Answer:
        answer = Answer(query)
        for source in self.sources:
            if len(answer.refs) >= limit:
                break
            if source.name in self.down:
                answer.failures[source.name] = self.down[source.name]
                continue
            try:
                refs = await self._ask(source, query, limit, answer)
            except SourceUnavailable as e:
                self.down[source.name] = answer.failures[source.name] = str(e)
                self.log.warning("lit_source_unavailable", source=source.name, query=query, reason=str(e))
                continue
            except Exception as e:  # a source's bug becomes an empty answer, never a crashed agent
                answer.failures[source.name] = f"{type(e).__name__}: {e}"
                self.log.error("lit_source_failed", source=source.name, query=query, reason=answer.failures[source.name])
                continue
            new = [r for r in refs if not any(same_paper(r, old) for old in answer.refs)][: limit - len(answer.refs)]
            if new:
                answer.answered.append(source.name)
                answer.refs.extend(new)
        if not answer.refs:
            self.log.info("lit_query_empty", query=query, failures=answer.failures)
        return answer
