"""bus/retry.py with time under the test's control: a fake clock that the policy's sleep advances."""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import LabBusError
from bus.retry import (
    CircuitBreaker,
    CircuitOpen,
    RetryPolicy,
    backoff_delay,
    breaker_for,
    cancel_and_wait,
    cancel_requested,
    poll,
    reset_breakers,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


def failing(times: int, error: BaseException, clock: Clock | None = None, takes_s: float = 0.0):
    calls: list[float] = []

    async def fn() -> str:
        calls.append(clock() if clock else 0.0)
        if clock:
            clock.now += takes_s
        if len(calls) <= times:
            raise error
        return "ok"

    return fn, calls


def policy(clock: Clock, **kw: object) -> RetryPolicy:
    return RetryPolicy(clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def test_backoff_delay_doubles_and_caps() -> None:
    assert [backoff_delay(n, base_s=2.0, max_s=30.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert backoff_delay(0, base_s=0.5) == 0.5


async def test_retries_with_exponential_waits_then_answers() -> None:
    clock = Clock()
    fn, calls = failing(3, Flaky(), clock)
    assert await policy(clock, attempts=4, base_wait_s=1.0, max_wait_s=10.0).run(fn, (Flaky,)) == "ok"
    assert len(calls) == 4 and clock.slept == [1.0, 2.0, 4.0]


async def test_attempts_run_out_and_the_last_error_is_raised() -> None:
    clock = Clock()
    fn, calls = failing(10, Flaky(), clock)
    with pytest.raises(Flaky):
        await policy(clock, attempts=3).run(fn, (Flaky,))
    assert len(calls) == 3


async def test_retry_after_is_honoured_but_capped() -> None:
    clock = Clock()
    fn, _ = failing(2, Flaky(retry_after=7), clock)
    await policy(clock, attempts=3, base_wait_s=1.0, max_wait_s=5.0, budget_s=None).run(fn, (Flaky,))
    assert clock.slept == [5.0, 5.0]


async def test_the_seconds_budget_stops_before_a_wait_that_would_end_past_it() -> None:
    clock = Clock()
    fn, calls = failing(10, Flaky(), clock, takes_s=3.0)
    with pytest.raises(Flaky):
        await policy(clock, attempts=10, budget_s=10.0, base_wait_s=1.0, max_wait_s=8.0).run(fn, (Flaky,))
    # 3 s call, 1 s wait, 3 s call, 2 s wait (9 s in), 3 s call: a 4 s wait would end at 16 s > 10 s, so no 4th try.
    assert len(calls) == 3 and clock.slept == [1.0, 2.0] and clock.now - 1000.0 == 12.0


async def test_other_errors_and_a_predicate() -> None:
    clock = Clock()
    fn, calls = failing(1, ValueError("no"), clock)
    with pytest.raises(ValueError):
        await policy(clock).run(fn, (Flaky,))
    assert len(calls) == 1
    fn, calls = failing(1, ValueError("yes"), clock)
    assert await policy(clock).run(fn, lambda e: "yes" in str(e)) == "ok"


def test_breaker_opens_after_consecutive_timeouts_and_says_why() -> None:
    clock = Clock()
    b = CircuitBreaker("http://model:8000/v1", threshold=2, cooldown_s=60, clock=clock)
    assert b.acquire() is False
    b.record(TimeoutError())
    assert b.state == "closed"
    b.record(TimeoutError())
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as e:
        b.acquire()
    assert isinstance(e.value, LabBusError)
    assert str(e.value) == "http://model:8000/v1 is not answering (2 timeouts in a row); failing fast for 60 s"
    clock.now += 45
    with pytest.raises(CircuitOpen, match="failing fast for 15 s"):
        b.acquire()


def test_an_answer_resets_the_count_and_an_http_error_is_an_answer() -> None:
    b = CircuitBreaker("e", threshold=2, clock=Clock())
    b.record(TimeoutError())
    b.record(None)
    b.record(TimeoutError())
    b.record(ValueError("HTTP 500"))  # the endpoint is there; it answered badly
    b.record(ConnectionRefusedError())
    assert b.state == "closed" and b.failures == 1


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    clock = Clock()
    b = CircuitBreaker("e", threshold=2, cooldown_s=60, clock=clock)
    b.record(ConnectionRefusedError())
    b.record(TimeoutError())
    clock.now += 60
    assert b.state == "half_open"
    assert b.acquire() is True  # the trial
    with pytest.raises(CircuitOpen, match="2 failed calls in a row"):
        b.acquire()  # everyone else still fails fast while it is out
    b.record(TimeoutError(), trial=True)
    assert b.state == "open"  # one more failure re-opens at once, for a fresh cool-down
    clock.now += 59
    assert b.state == "open"
    clock.now += 1
    assert b.acquire() is True
    b.record(None, trial=True)
    assert b.state == "closed" and b.failures == 0


async def test_policy_with_breaker_fails_fast_without_retrying_the_open_breaker() -> None:
    clock = Clock()
    b = CircuitBreaker("e", threshold=2, cooldown_s=60, clock=clock)
    fn, calls = failing(100, TimeoutError(), clock, takes_s=1.0)
    p = policy(clock, attempts=5, base_wait_s=1.0, budget_s=None)
    with pytest.raises(CircuitOpen):
        await p.run(fn, (TimeoutError,), breaker=b)
    assert len(calls) == 2 and clock.slept == [1.0, 0.0]  # no backoff once it has opened
    with pytest.raises(CircuitOpen):  # the next caller does not reach the endpoint at all
        await p.run(fn, (TimeoutError,), breaker=b)
    assert len(calls) == 2


async def test_a_cancelled_trial_frees_the_half_open_slot() -> None:
    clock = Clock()
    b = CircuitBreaker("e", threshold=1, cooldown_s=1, clock=clock)
    b.record(TimeoutError())
    clock.now += 1

    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(b.call(hang), 0.05)
    assert b.state == "half_open"


def test_the_registry_shares_one_breaker_per_endpoint() -> None:
    reset_breakers()
    a = breaker_for("http://a/v1", threshold=3)
    assert breaker_for("http://a/v1") is a and a.threshold == 3
    assert breaker_for("http://b/v1") is not a
    reset_breakers()
    assert breaker_for("http://a/v1") is not a


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("e", threshold=0)


# ---------------------------------------------------------------- the shapes the bus's own retries take


async def test_linear_waits_grow_by_the_base_and_cap_for_contention() -> None:
    """The slot ledger's compare-and-set retries: 10 ms more each try, at most 0.2 s, and no seconds budget."""
    clock = Clock()
    fn, calls = failing(25, Flaky(), clock)
    assert await policy(clock, attempts=200, budget_s=None, base_wait_s=0.01, max_wait_s=0.2, linear=True).run(fn, (Flaky,)) == "ok"
    assert len(calls) == 26
    assert clock.slept[:3] == pytest.approx([0.01, 0.02, 0.03]) and clock.slept[19:] == pytest.approx([0.2] * 6)


async def test_without_an_attempt_limit_the_budget_alone_bounds_the_tries() -> None:
    """JetStream not ready yet: asked again every 0.3 s until the budget is spent, then the last error."""
    clock = Clock()
    fn, calls = failing(1000, Flaky(), clock)
    with pytest.raises(Flaky):
        await policy(clock, attempts=None, budget_s=3.0, base_wait_s=0.3, max_wait_s=0.3).run(fn, (Flaky,))
    assert len(calls) == 11 and set(clock.slept) == {0.3}


def test_a_blocking_caller_retries_the_same_way() -> None:
    slept: list[float] = []
    tries = iter([OSError("not written yet"), ValueError("half written"), None])

    def read() -> str:
        error = next(tries)
        if error is not None:
            raise error
        return "link"

    p = RetryPolicy(attempts=None, budget_s=20.0, base_wait_s=0.2, max_wait_s=0.2, level=None)
    assert p.run_blocking(read, (OSError, ValueError), sleep=slept.append) == "link"
    assert slept == [0.2, 0.2]
    with pytest.raises(KeyError):  # not retryable: raised at once
        p.run_blocking(lambda: {}["x"], (OSError,), sleep=slept.append)


async def test_poll_asks_again_until_yes_and_says_why_it_waits() -> None:
    clock = Clock()
    answers = iter([False, False, True])
    waits: list[int] = []

    async def free() -> bool:
        return next(answers)

    assert await poll(lambda: free(), every_s=1.0, on_wait=waits.append, clock=clock, sleep=clock.sleep) is True
    assert waits == [1, 2] and clock.slept == [1.0, 1.0]


async def test_poll_gives_the_last_answer_at_its_timeout_and_raises_an_error() -> None:
    clock = Clock()
    calls: list[float] = []

    async def never() -> int:
        calls.append(clock())
        return 0

    assert await poll(never, every_s=0.5, timeout_s=2.0, clock=clock, sleep=clock.sleep) == 0
    assert len(calls) == 5 and clock.now - 1000.0 == 2.0

    async def broken() -> bool:
        raise Flaky()

    with pytest.raises(Flaky):
        await poll(broken, every_s=0.5, clock=clock, sleep=clock.sleep)


async def test_a_loop_whose_cancel_a_library_turned_into_an_error_ends_instead_of_going_round() -> None:
    """nats-py and 3.11's wait_for can turn a cancel into another error or lose it; the loop must still end."""
    rounds = 0

    async def flaky_call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("stalled") from None  # what a library makes of the cancel

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await flaky_call()
            except Exception as e:
                if cancel_requested():
                    raise asyncio.CancelledError from e

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 1


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_its_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise

    async def plain() -> None:
        await asyncio.sleep(10)

    async def failing() -> None:
        raise ValueError("ended badly")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(plain()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks, again_s=0.05), 5)
    assert all(t.done() for t in tasks) and swallowed == 3
    assert tasks[0].cancelled() and tasks[1].cancelled() and isinstance(tasks[2].exception(), ValueError)
