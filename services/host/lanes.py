"""Per-project lanes on a bounded pool: an agent handles projects concurrently, each project in order.

A role's state is one document per project (``<role>.<project>``), written
with compare-and-set together with the outputs, so handlers of *different*
projects never touch the same state and may run at once; two messages of the
*same* project must not (the second would see stale state and conflict). So
every project gets a FIFO lane with at most one message in hand, and the
lanes share ``limit`` slots. Slots are taken through an asyncio semaphore,
whose waiters are served first come, first served: a lane that just finished
a message queues behind the others, so a busy project cannot starve a quiet
one.

Stopping is two steps. ``stop_starting`` lets the messages in hand finish and
starts no new one; ``close`` then gives back (NAKs) what is still queued. The
host calls ``close`` only once its fetch loops have ended: a message NAKed
while this replica still has a pull request open is redelivered at once to
that request, i.e. to the replica that is going away, and then waits out the
ack wait while its successor runs the project's later messages first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bus.consumer import give_back, keep_alive


class Lanes:
    """Messages keyed by project, handled ``limit`` projects at a time and one at a time per project."""

    def __init__(self, limit: int, handle: Callable[[Any], Awaitable[None]]):
        if limit < 1:
            raise ValueError(f"concurrency must be at least 1, got {limit}")
        self.limit = limit
        self.handle = handle
        self.slots = asyncio.Semaphore(limit)
        self.queues: dict[str, deque[tuple[Any, asyncio.Task[None]]]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.held = 0  # messages queued or in hand: the fetch loop stops fetching when this is high
        self.stopping = False
        self.in_hand = 0  # lanes with a message being handled right now
        self._changed = asyncio.Event()

    def submit(self, key: str, msg: Any) -> None:
        """Queue ``msg`` on its project's lane; it is kept alive (in-progress acks) while it waits."""
        self.queues.setdefault(key, deque()).append((msg, asyncio.create_task(keep_alive(msg))))
        self.held += 1
        if key not in self.workers and not self.stopping:  # once stopping, ``close`` gives it back
            self.workers[key] = asyncio.create_task(self._run(key), name=f"lane-{key}")

    async def room(self, most: int) -> int:
        """Wait until fewer than ``most`` messages are held; return how many more may be fetched."""
        while self.held >= most and not self.stopping:
            self._changed.clear()
            await self._changed.wait()
        return max(0, most - self.held)

    async def _run(self, key: str) -> None:
        queue = self.queues[key]
        try:
            while queue and not self.stopping:
                msg, beat = queue[0]
                async with self.slots:
                    if self.stopping:
                        break  # left in the queue: ``close`` gives it back
                    self.in_hand += 1
                    try:
                        await self.handle(msg)
                    finally:
                        self.in_hand -= 1
                        beat.cancel()
                        queue.popleft()
                        self._release()
        finally:
            self.workers.pop(key, None)
            if not queue:
                self.queues.pop(key, None)

    def _release(self) -> None:
        self.held -= 1
        self._changed.set()

    def stop_starting(self) -> None:
        """Start no new message; the ones in hand go on, the queued ones stay queued (``close`` gives them back)."""
        self.stopping = True
        self._changed.set()

    async def close(self) -> None:
        """Wait for the messages in hand to finish, then give back every queued one, for another replica (or our successor).

        Call it once nothing fetches for these lanes any more (see the module docstring).
        """
        self.stop_starting()
        workers = list(self.workers.values())
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        for key in list(self.queues):
            queue = self.queues.pop(key)
            while queue:
                msg, beat = queue.popleft()
                beat.cancel()
                self._release()
                await give_back(msg)  # the connection may be gone: then the ack wait brings it back
