"""OpenAlex through ``pyalex``: a second open scholarly index behind Semantic Scholar.

pyalex is synchronous (requests) and has no request timeout, so each call
runs in a thread under ``asyncio.wait_for``; retries use the same bounded
policy as Semantic Scholar, so rate limits end in SourceUnavailable and the
chain moves on. Calls go through the process's circuit breaker for the API's
address (``bus.retry.breaker_for``), so an unreachable OpenAlex is skipped at
once after two unanswered calls, for a cool-down.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyalex
import requests

from agents.lit.bibtex import reference_from_metadata
from agents.lit.errors import RateLimited, SourceUnavailable
from bus.retry import CircuitOpen, RetryPolicy, breaker_for
from bus.schema import Reference


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class _TimedOut(_Retryable, TimeoutError):
    """No answer within ``timeout_s``: retried, and counted by the circuit breaker."""


def work_reference(work: Any) -> Reference | None:
    title = (work.get("title") or work.get("display_name") or "").strip()
    if not title:
        return None
    authors = [
        a["author"]["display_name"]
        for a in work.get("authorships") or []
        if isinstance(a, dict) and (a.get("author") or {}).get("display_name")
    ]
    year = work.get("publication_year") if isinstance(work.get("publication_year"), int) else None
    venue = (((work.get("primary_location") or {}).get("source")) or {}).get("display_name") or ""
    doi = (work.get("doi") or "").removeprefix("https://doi.org/")
    try:
        abstract = work["abstract"] or "" if work.get("abstract_inverted_index") else ""
    except (KeyError, TypeError, AttributeError):
        abstract = ""
    kind = "inproceedings" if work.get("type") == "proceedings-article" else ""
    return reference_from_metadata(
        title, authors, year, venue, source="openalex", abstract=abstract, entry_type=kind,
        extra={"doi": doi} if doi else None, paper_id=work.get("id"),
    )


OPENALEX = "https://api.openalex.org"


def _works(base: str) -> type[pyalex.Works]:
    """pyalex.Works aimed at ``base`` (pyalex 0.21 builds URLs on a fixed host)."""

    class Works(pyalex.Works):  # the class name is the URL path pyalex requests
        @property
        def url(self) -> str:
            full: str = super().url
            return base + full.removeprefix(OPENALEX)

    return Works


class OpenAlexSource:
    name = "openalex"

    def __init__(
        self,
        api_url: str | None = None,
        email: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        budget_s: float = 20.0,
        base_wait_s: float = 1.0,
        max_wait_s: float = 8.0,
        cooldown_s: float = 60.0,
    ) -> None:
        base = (api_url or OPENALEX).rstrip("/")
        self.works = _works(base)
        self.breaker = breaker_for(base, cooldown_s=cooldown_s)
        # pyalex's configuration is module-global; the literature agent is its only user.
        if email:
            pyalex.config.email = email
        pyalex.config.max_retries = 0  # retried here, within a budget
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(attempts, budget_s, base_wait_s, max_wait_s, event="lit_retry")

    def _get(self, query: str, limit: int) -> list[Any]:
        try:
            return list(self.works().search(query).get(per_page=min(max(limit, 1), 200)))
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status == 429 or status >= 500:
                after = e.response.headers.get("Retry-After", "") if e.response is not None else ""
                raise _Retryable(f"HTTP {status}", float(after) if after.isdigit() else None) from None
            raise SourceUnavailable(f"openalex: HTTP {status}") from None

    async def _once(self, query: str, limit: int) -> list[Any]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._get, query, limit), self.timeout_s)
        except TimeoutError:
            raise _TimedOut("timed out") from None

    async def search(self, query: str, limit: int) -> list[Reference]:
        if not query.strip():
            return []
        try:
            works = await self.retry.run(lambda: self._once(query, limit), (_Retryable,), breaker=self.breaker)
        except CircuitOpen as e:
            raise SourceUnavailable(f"openalex unreachable: {e}") from None
        except _Retryable as e:
            cls = RateLimited if "429" in str(e) else SourceUnavailable
            raise cls(f"openalex: {e} after {self.retry.attempts} attempts") from None
        except requests.RequestException as e:
            raise SourceUnavailable(f"openalex unreachable: {type(e).__name__}") from None
        refs = [work_reference(w) for w in works[:limit]]
        return [r for r in refs if r]

    async def cache_scope(self) -> str:
        return self.name
