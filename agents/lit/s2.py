"""Semantic Scholar through the ``semanticscholar`` package's async client.

The package builds URLs, pages results and parses papers; its requester is
swapped for one that raises on every non-200 answer, because the stock one
turns 502/503 into an empty result (indistinguishable from "no papers") and
retries 429 for minutes. Retries here are bounded by attempts *and* seconds
(tenacity), honour Retry-After, and end in SourceUnavailable/RateLimited so
the chain moves on to the next source. Every call goes through the
process's circuit breaker for the API's address (``bus.retry.breaker_for``):
after two unanswered calls (refused, no DNS, timed out) the source fails at
once for a cool-down, so a machine without internet pays for the outage once,
not once per query of every novelty check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from semanticscholar import AsyncSemanticScholar
from semanticscholar.ApiRequester import ApiRequester

from agents.lit.bibtex import reference_from_metadata
from agents.lit.errors import PaperNotFound, RateLimited, SourceUnavailable
from bus.retry import CircuitOpen, RetryPolicy, breaker_for
from bus.schema import Reference

T = TypeVar("T")
FIELDS = ["paperId", "title", "abstract", "authors", "year", "venue", "journal", "externalIds", "publicationTypes"]


class _TooManyRequests(Exception):
    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__("HTTP 429 Too Many Requests")


class _ServerError(Exception):
    pass


class _NotFound(Exception):
    pass


class _Refused(Exception):
    """A 4xx other than 429: retrying will not help."""


_RETRYABLE = (_TooManyRequests, _ServerError, httpx.TimeoutException)


class _StrictRequester(ApiRequester):
    async def get_data_async(self, url: str, parameters: str, headers: dict[str, str], payload: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.request(
                "POST" if payload else "GET", url, params=parameters.lstrip("&"), headers=headers, json=payload
            )
        if r.status_code == 200:
            return r.json()
        if r.status_code == 429:
            after = r.headers.get("retry-after", "")
            raise _TooManyRequests(float(after) if after.replace(".", "", 1).isdigit() else None)
        if r.status_code == 404:
            raise _NotFound(paper_id_of(url))
        if r.status_code >= 500:
            raise _ServerError(f"HTTP {r.status_code}")
        raise _Refused(f"HTTP {r.status_code}: {r.text[:120]}")


def paper_id_of(url: str) -> str:
    return url.rsplit("/paper/", 1)[-1].split("/")[0]


def _safe_query(query: str) -> str:
    # The package pastes the query into the query string unencoded.
    return re.sub(r"[^\w\s\-]", " ", query).strip()


def paper_reference(data: dict[str, Any]) -> Reference | None:
    """A Reference from one S2 paper object; None when it lacks a title."""
    title = (data.get("title") or "").strip()
    if not title:
        return None
    authors = [a["name"] for a in data.get("authors") or [] if isinstance(a, dict) and a.get("name")]
    year = data.get("year") if isinstance(data.get("year"), int) else None
    venue = data.get("venue") or (data.get("journal") or {}).get("name") or ""
    ids = data.get("externalIds") or {}
    extra = {}
    if ids.get("DOI"):
        extra["doi"] = str(ids["DOI"])
    if ids.get("ArXiv"):
        extra.update(eprint=str(ids["ArXiv"]), archiveprefix="arXiv")
    types = data.get("publicationTypes") or []
    kind = "inproceedings" if "Conference" in types else ""
    return reference_from_metadata(
        title, authors, year, venue, source="semantic_scholar", abstract=data.get("abstract") or "", entry_type=kind,
        extra=extra, paper_id=data.get("paperId"),
    )


class SemanticScholarSource:
    name = "semantic_scholar"

    def __init__(
        self,
        api_key: str | None = None,
        api_url: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 4,
        budget_s: float = 30.0,
        base_wait_s: float = 1.0,
        max_wait_s: float = 10.0,
        cooldown_s: float = 60.0,
    ) -> None:
        self.client = AsyncSemanticScholar(
            timeout=timeout_s, api_key=api_key or os.environ.get("S2_API_KEY") or None, api_url=api_url, retry=False
        )
        self.client._requester = _StrictRequester(timeout_s, retry=False)
        self.attempts = attempts
        self.retry = RetryPolicy(attempts, budget_s, base_wait_s, max_wait_s, event="lit_retry")
        self.breaker = breaker_for(self.client.api_url.rstrip("/"), cooldown_s=cooldown_s)

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.retry.run(fn, _RETRYABLE, breaker=self.breaker)
        except CircuitOpen as e:
            raise SourceUnavailable(f"semantic scholar unreachable: {e}") from None
        except _NotFound as e:
            raise PaperNotFound(f"semantic scholar has no paper {e}") from None
        except _TooManyRequests:
            raise RateLimited(f"semantic scholar rate-limited {what} after {self.attempts} attempts") from None
        except (_ServerError, _Refused) as e:
            raise SourceUnavailable(f"semantic scholar {what}: {e}") from None
        except httpx.TimeoutException:
            raise SourceUnavailable(f"semantic scholar {what}: timed out") from None
        except httpx.HTTPError as e:
            raise SourceUnavailable(f"semantic scholar unreachable: {type(e).__name__}: {e}") from None

    async def search(self, query: str, limit: int) -> list[Reference]:
        q = _safe_query(query)
        if not q:
            return []
        results = await self._call("search", lambda: self.client.search_paper(q, fields=FIELDS, limit=min(max(limit, 1), 100)))
        refs = [paper_reference(p.raw_data) for p in results.items[:limit]]
        return [r for r in refs if r]

    async def paper(self, paper_id: str) -> Reference | None:
        """One paper's details (a S2 id, ``DOI:...``, ``ARXIV:...``)."""
        try:
            paper = await self._call("paper", lambda: self.client.get_paper(paper_id, fields=FIELDS))
        except PaperNotFound:
            return None
        return paper_reference(paper.raw_data)

    async def references(self, paper_id: str, limit: int = 20) -> list[Reference]:
        """What a paper cites."""
        page = await self._call("references", lambda: self.client.get_paper_references(paper_id, fields=FIELDS, limit=limit))
        refs = [paper_reference(item.paper.raw_data) for item in page.items[:limit] if item.paper]
        return [r for r in refs if r]

    async def citations(self, paper_id: str, limit: int = 20) -> list[Reference]:
        """Who cites a paper: later work on the same question."""
        page = await self._call("citations", lambda: self.client.get_paper_citations(paper_id, fields=FIELDS, limit=limit))
        refs = [paper_reference(item.paper.raw_data) for item in page.items[:limit] if item.paper]
        return [r for r in refs if r]

    async def cache_scope(self) -> str:
        return self.name
