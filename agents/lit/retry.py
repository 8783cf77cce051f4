"""Bounded retries for web sources: by attempts *and* seconds, honouring Retry-After.

A novelty check waits on these calls, so a rate-limited service must cost a
known, small amount of time before the chain falls back to the next source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_after_delay

T = TypeVar("T")
log = structlog.get_logger("lit.retry")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    budget_s: float = 30.0
    base_wait_s: float = 1.0
    max_wait_s: float = 10.0

    def _wait(self, state: RetryCallState) -> float:
        wait = self.base_wait_s * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after:
            wait = max(wait, float(after))
        return min(wait, self.max_wait_s)

    @staticmethod
    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("lit_retry", attempt=state.attempt_number, reason=str(exc) or type(exc).__name__)

    async def run(self, fn: Callable[[], Awaitable[T]], retryable: tuple[type[BaseException], ...]) -> T:
        """``fn()``, retried on ``retryable``; the last exception is re-raised when the budget is spent."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.budget_s),
            wait=self._wait,
            retry=retry_if_exception_type(retryable),
            before_sleep=self._log,
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises
