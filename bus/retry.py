"""Retries, backoff delays and circuit breakers: one way to wait on a flaky service, for every caller.

Why one module: a lab project waits on models, web sources, NATS redeliveries
and its own agent processes. When each wrote its own loop, the waits
multiplied: an endpoint that accepts requests and never answers cost a
timeout × retries × every step, and a project against it ran for many
minutes without saying why. Here:

- ``RetryPolicy``: bounded by attempts *and* seconds, exponential waits that
  honour a ``retry_after`` attribute on the error (a parsed Retry-After),
  each retry logged with structlog.
- ``backoff_delay``: the same exponential delay as a pure function, for
  callers that only need a number (a NATS nak delay, a process restart).
- ``poll``: call again at a fixed interval until the answer is yes (a free
  slot in the lab's ledger), bounded by a timeout or not.
- ``CircuitBreaker`` (one per endpoint, from ``breaker_for``): after N
  consecutive timeouts or connection failures it opens, and calls fail at
  once with ``CircuitOpen`` for a cool-down; then one trial call goes
  through (half-open) and its outcome closes or re-opens it. So a dead
  endpoint costs about N timeouts per process, not N per call.

Time is injectable (``clock``, ``sleep``) so tests control it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_result, wait_fixed

from bus.errors import LabBusError

T = TypeVar("T")
log = structlog.get_logger("retry")

Clock = Callable[[], float]
Retryable = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def backoff_delay(attempt: int, *, base_s: float = 1.0, max_s: float = 30.0, jitter: float = 0.0) -> float:
    """Seconds to wait before try ``attempt + 1``: ``base_s`` doubled per attempt (1-based), capped at ``max_s``.

    ``jitter`` spreads the wait by ± that fraction, so many clients that failed
    together (engineers against one restarted API server) do not retry in step.
    """
    wait = float(min(max_s, base_s * 2 ** max(attempt - 1, 0)))
    return wait * random.uniform(1 - jitter, 1 + jitter) if jitter else wait


def cancel_requested() -> bool:
    """Whether someone asked the running task to stop, even if the cancel was swallowed on its way.

    Python 3.11's ``asyncio.wait_for`` loses a cancel that meets the answer it waits for, and nats-py turns some
    into its own errors: a loop that logs each failure and goes on would then never end. The task's count of
    cancel requests survives both, so such a loop asks this before going round again.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], *, again_s: float = 2.0) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``again_s`` those that swallowed it."""
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=again_s)
        for t in pending:
            log.warning("a task went on after its cancel; cancelling it again", task=t.get_name())
            t.cancel()
    for t in tasks:
        error = None if t.cancelled() else t.exception()
        if error is not None:
            log.debug("task ended with an error at shutdown", task=t.get_name(), error=describe(error))


def describe(error: BaseException) -> str:
    """One short line for a log or a reason."""
    if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
        return "timed out"
    return str(error) or type(error).__name__


# ---------------------------------------------------------------------------- circuit breaker


class CircuitOpen(LabBusError):
    """An endpoint's breaker is open: the call was not made (it would most likely have timed out too)."""

    def __init__(self, endpoint: str, failures: int, kind: str, retry_in_s: float) -> None:
        self.endpoint = endpoint
        self.failures = failures
        self.retry_in_s = retry_in_s
        super().__init__(f"{endpoint} is not answering ({failures} {kind} in a row); failing fast for {retry_in_s:.0f} s")


def is_unanswered(error: BaseException) -> bool:
    """Timeouts and failed connections: what says the endpoint is not there (an HTTP error says it is)."""
    return isinstance(error, (TimeoutError, ConnectionError)) or any(
        n in type(error).__name__ for n in ("Timeout", "ConnectError", "ConnectionError")
    )


@dataclass
class CircuitBreaker:
    """Counts consecutive unanswered calls to one endpoint; at ``threshold`` it opens for ``cooldown_s``.

    Any answer, even an HTTP error, closes it again: the endpoint is there.
    Once the cool-down is over, one caller's call is the trial (half-open);
    the others keep failing fast until it ends.
    """

    endpoint: str
    threshold: int = 2
    cooldown_s: float = 60.0
    clock: Clock = time.monotonic
    trips: Callable[[BaseException], bool] = is_unanswered
    failures: int = field(default=0, init=False)
    _timeouts_only: bool = field(default=True, init=False, repr=False)
    _opened_at: float | None = field(default=None, init=False, repr=False)
    _trial: bool = field(default=False, init=False, repr=False)  # the half-open trial call is in flight
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.cooldown_s < 0:
            raise ValueError(f"circuit breaker for {self.endpoint}: threshold >= 1 and cooldown_s >= 0 expected")

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self._opened_at is None:
            return "closed"
        return "open" if self.clock() - self._opened_at < self.cooldown_s or self._trial else "half_open"

    def error(self) -> CircuitOpen:
        left = max(0.0, self.cooldown_s - (self.clock() - (self._opened_at or self.clock())))
        return CircuitOpen(self.endpoint, self.failures, "timeouts" if self._timeouts_only else "failed calls", left)

    def acquire(self) -> bool:
        """Whether a call may go out now (True: it is the half-open trial); raises ``CircuitOpen`` if not."""
        with self._lock:
            state = self.state
            if state == "open":
                raise self.error()
            if state == "half_open":
                self._trial = True
                return True
            return False

    def record(self, error: BaseException | None, trial: bool = False) -> None:
        """The outcome of a call ``acquire`` let through; ``error`` None is an answer."""
        with self._lock:
            if trial:
                self._trial = False
            if error is None or not self.trips(error):
                self.failures, self._timeouts_only, self._opened_at = 0, True, None
                return
            self.failures += 1
            self._timeouts_only = self._timeouts_only and describe(error) == "timed out"
            if self.failures >= self.threshold or trial:
                self._opened_at = self.clock()
                log.warning("circuit_open", endpoint=self.endpoint, failures=self.failures, cooldown_s=self.cooldown_s)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` through the breaker: ``CircuitOpen`` at once while it is open."""
        trial = self.acquire()
        try:
            result = await fn()
        except Exception as e:
            self.record(e, trial)
            raise
        except BaseException:  # cancelled: no verdict on the endpoint, but free the trial slot
            if trial:
                with self._lock:
                    self._trial = False
            raise
        self.record(None, trial)
        return result


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(endpoint: str, *, threshold: int = 2, cooldown_s: float = 60.0, clock: Clock = time.monotonic) -> CircuitBreaker:
    """The process's breaker for ``endpoint`` (e.g. a base URL), made on first use.

    Process-wide on purpose: every step and role in one process that calls the
    same endpoint learns from the others' timeouts. The first caller's
    settings make it.
    """
    with _registry_lock:
        breaker = _breakers.get(endpoint)
        if breaker is None:
            breaker = _breakers[endpoint] = CircuitBreaker(endpoint, threshold, cooldown_s, clock)
        return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests)."""
    with _registry_lock:
        _breakers.clear()


# ---------------------------------------------------------------------------- retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``attempts`` tries and, if ``budget_s`` is set, no wait that ends past it.

    A caller that waits on the result (a novelty check, a step of a project)
    must cost a known, small amount of time before it falls back or fails.
    ``attempts`` None bounds the tries by ``budget_s`` alone (a service that
    must come up within a minute); waits grow exponentially, or by
    ``base_wait_s`` per try with ``linear`` (many writers contending for one
    key, where a doubling wait would leave the loser far behind).
    """

    attempts: int | None = 4
    budget_s: float | None = 30.0
    base_wait_s: float = 1.0
    max_wait_s: float = 10.0
    jitter: float = 0.0  # ± this fraction of each wait (see backoff_delay)
    linear: bool = False
    event: str = "retry"  # the structlog event of each retry
    level: str | None = "warning"  # its level; None: not logged (retrying is the normal course: compare-and-set contention)
    describe: Callable[[BaseException], str] = describe
    clock: Clock = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def wait_s(self, attempt: int, error: BaseException | None = None) -> float:
        """The wait after try ``attempt``: exponential (or linear), at least the error's ``retry_after``, capped."""
        if self.linear:
            wait = min(self.max_wait_s, self.base_wait_s * max(attempt, 1))
        else:
            wait = backoff_delay(attempt, base_s=self.base_wait_s, max_s=self.max_wait_s, jitter=self.jitter)
        after = getattr(error, "retry_after", None)
        if after:
            wait = max(wait, float(after))
        return min(wait, self.max_wait_s)

    async def run(self, fn: Callable[[], Awaitable[T]], retryable: Retryable, breaker: CircuitBreaker | None = None) -> T:
        """``fn()``, retried on ``retryable`` (types or a predicate); the last error is re-raised when the budget is spent.

        With a ``breaker`` each try goes through it; ``CircuitOpen`` is never
        retried, and once the breaker has opened there is no wait before it.
        """
        call = (lambda: breaker.call(fn)) if breaker is not None else fn
        async for attempt in AsyncRetrying(sleep=self.sleep, reraise=True, **self._controls(retryable, breaker)):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises

    def run_blocking(self, fn: Callable[[], T], retryable: Retryable, sleep: Callable[[float], None] = time.sleep) -> T:
        """``run`` for a plain function, in a thread that may block (no breaker: breakers are for async endpoints)."""
        for attempt in Retrying(sleep=sleep, reraise=True, **self._controls(retryable, None)):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover - Retrying returns or raises

    def _controls(self, retryable: Retryable, breaker: CircuitBreaker | None) -> dict[str, Any]:
        """tenacity's stop, wait, retry and before_sleep for this policy, its clock starting now."""
        is_retryable = _matcher(retryable)
        start = self.clock()

        def wait(state: RetryCallState) -> float:
            if breaker is not None and breaker.state == "open":
                return 0.0
            return self.wait_s(state.attempt_number, _error(state))

        def stop(state: RetryCallState) -> bool:
            if self.attempts is not None and state.attempt_number >= self.attempts:
                return True
            if self.budget_s is None or (breaker is not None and breaker.state == "open"):
                return False
            return self.clock() - start + wait(state) > self.budget_s

        def retry(state: RetryCallState) -> bool:
            error = _error(state)
            return error is not None and not isinstance(error, CircuitOpen) and bool(is_retryable(error))

        def before_sleep(state: RetryCallState) -> None:
            error = _error(state)
            if self.level is not None:
                getattr(log, self.level)(self.event, attempt=state.attempt_number, after=self.describe(error) if error else "")

        return {"stop": stop, "wait": wait, "retry": retry, "before_sleep": before_sleep}


async def poll(
    fn: Callable[[], Awaitable[T]],
    *,
    every_s: float,
    timeout_s: float | None = None,
    on_wait: Callable[[int], None] | None = None,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``fn()`` again every ``every_s`` until its answer is truthy; the last answer once ``timeout_s`` has passed.

    ``timeout_s`` None waits as long as it takes (the caller's lease or deadline bounds it).
    ``on_wait(n)`` runs before each wait, after the ``n``th no (e.g. to say once why it waits).
    An error from ``fn`` is not a no: it ends the wait and is raised.
    """
    start = clock()

    def stop(state: RetryCallState) -> bool:
        return timeout_s is not None and clock() - start >= timeout_s

    def before_sleep(state: RetryCallState) -> None:
        if on_wait is not None:
            on_wait(state.attempt_number)

    def last(state: RetryCallState) -> T:
        assert state.outcome is not None  # called only after a try
        answer: T = state.outcome.result()
        return answer

    retrying = AsyncRetrying(
        retry=retry_if_result(lambda answer: not answer), stop=stop, wait=wait_fixed(every_s), sleep=sleep,
        before_sleep=before_sleep, retry_error_callback=last, reraise=True,
    )
    async def call() -> T:  # a coroutine function: tenacity would not await what a plain lambda returns
        return await fn()

    answer: T = await retrying(call)
    return answer


def _matcher(retryable: Retryable) -> Callable[[BaseException], bool]:
    if isinstance(retryable, tuple):
        kinds = retryable
        return lambda e: isinstance(e, kinds)
    return retryable


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None
