"""Durable pull consumers with the settings every role shares.

NATS defaults are unsafe for us: AckWait 30 s and unlimited MaxDeliver would
retry a poison message forever. We bound both and keep long handlers alive
with in-progress acks instead of long ack waits. Backoff between attempts is
the delay of each NAK (growing with the delivery count, see the host): with
the consumer's own BackOff list set, nats-server 2.15 overrides NAK delays
with it (a 0.1 s NAK came back after 5 s, the next not within 20 s), so we
do not set one. A crashed handler's message comes back after the ack wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.js import api
from nats.js.client import JetStreamContext

from bus.client import Bus
from bus.errors import translated

ACK_WAIT_S = 10.0
MAX_DELIVER = 5
HEARTBEAT_S = 3.0


def consumer_config(durable: str, filter_subject: str) -> api.ConsumerConfig:
    """One filter, so nats-py creates it through ``CONSUMER.CREATE.<stream>.<durable>.<filter>`` (see bus.permissions)."""
    return api.ConsumerConfig(
        durable_name=durable,
        name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ACK_WAIT_S,
        max_deliver=MAX_DELIVER,
        max_ack_pending=64,
        filter_subject=filter_subject,
    )


@translated
async def pull(bus: Bus, stream: str, durable: str, filter_subject: str) -> Any:
    """Bind to (creating if absent) a durable pull consumer.

    A durable left by an older lab with several filters (``filter_subjects``) is updated to its one
    filter in place: it keeps its position in the stream.
    """
    try:
        info = await bus.js.consumer_info(stream, durable)
        stale = info.config.filter_subject != filter_subject or bool(info.config.filter_subjects)
    except nats.js.errors.NotFoundError:
        stale = True
    if stale:
        try:
            await bus.js.add_consumer(stream, config=consumer_config(durable, filter_subject))
        except nats.js.errors.BadRequestError:
            pass  # another instance created it first
    return await bus.js.pull_subscribe_bind(durable=durable, stream=stream)


async def messages(
    sub: Any, stop: asyncio.Event, wait: float = 1.0, room: Callable[[], Awaitable[int]] | None = None
) -> AsyncIterator[Any]:
    """Yield messages until ``stop`` is set; fetching stops first, so in-flight work can finish.

    ``room`` says how many more messages the caller can hold (waiting until it can hold one);
    without it, one message at a time.
    """
    while not stop.is_set():
        n = await room() if room is not None else 1
        if n < 1 or stop.is_set():
            continue
        try:
            batch = await sub.fetch(n, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except nats.errors.ConnectionClosedError:
            return
        except (nats.errors.Error, nats.js.errors.Error):
            # A cluster moving the consumer's leader answers a pull with 409/503 (or nothing) for a moment;
            # a loop that died here would leave the role deaf with its heartbeat still beating.
            await asyncio.sleep(wait)
            continue
        for msg in batch:
            yield msg


async def release(sub: Any) -> int:
    """End a pull subscription whose fetch loop is over: unsubscribe, then give back what reached it unread.

    A pull request can outlive the fetch that sent it by a moment (nats-py sends ``expires`` with its first
    request), and what the server delivers to it waits in the subscription's queue, which nothing reads any
    more: held there, a message would come back only after the ack wait. Unsubscribing first means the server
    drops what is still waiting of our requests, so a message given back here does not come back to us. It also
    spares the connection's drain its wait for that queue (nats-py waits for it until ``drain_timeout``).
    Returns how many messages were given back.
    """
    try:
        await sub.unsubscribe()
    except (nats.errors.Error, ValueError):
        pass  # the connection is gone: the ack wait brings back what it held
    queue = sub._sub._pending_queue  # nats-py's buffer of delivered, unfetched messages (what ``pending_msgs`` counts)
    given = 0
    while not queue.empty():
        msg = queue.get_nowait()
        queue.task_done()
        if JetStreamContext.is_status_msg(msg):
            continue  # a 408/404 answer to an expired request, not a message
        await give_back(msg)
        given += 1
    return given


async def keep_alive(msg: Any, every: float = HEARTBEAT_S) -> None:
    """Tell the server we are still working on ``msg`` until cancelled."""
    try:
        while True:
            await asyncio.sleep(every)
            await msg.in_progress()
    except asyncio.CancelledError:
        pass
    except (nats.errors.Error, OSError):
        pass  # the connection is gone or the message already acked: the ack wait redelivers it if need be


async def give_back(msg: Any) -> None:
    """NAK ``msg`` so it is delivered again now; a connection already gone is no error (the ack wait brings it back)."""
    try:
        await msg.nak()
    except (nats.errors.Error, OSError):
        pass
