"""What one handler's mind calls cost, counted per call into the message being handled.

An agent handles several projects at once, and one mind may serve them all:
diffing a mind's running total before and after a handler would charge one
project for another's concurrent calls. Instead each model call charges the
meter of the task that made it (a context variable: asyncio copies it into
every task the handler starts), and the host opens one meter per message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from bus.schema import Usage

_meter: ContextVar[Usage | None] = ContextVar("lab_mind_meter", default=None)


def charge(prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
    """Add one call's spend to the meter of the message being handled (none outside a handler)."""
    meter = _meter.get()
    if meter is not None:
        meter.prompt_tokens += prompt_tokens
        meter.completion_tokens += completion_tokens
        meter.cost_usd += cost_usd


@contextmanager
def metered() -> Iterator[Usage]:
    """A fresh meter for the calls made inside the block (and the tasks it starts)."""
    usage = Usage()
    token = _meter.set(usage)
    try:
        yield usage
    finally:
        _meter.reset(token)
