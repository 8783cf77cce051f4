"""Reading the conversation stream from the start, and following it live (for `lab logs` and `lab run`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from bus import subjects
from bus.client import Bus
from bus.errors import nats_errors
from bus.schema import Envelope, decode


@dataclass
class Entry:
    subject: str
    seq: int
    data: bytes
    envelope: Envelope | None  # None when the bytes are not a valid envelope
    error: str = ""


async def read(
    bus: Bus, subject: str = "lab.convo.>", stream: str = subjects.CONVO_STREAM, follow: bool = False, idle: float = 1.0
) -> AsyncIterator[Entry]:
    """Every message on ``subject`` from the first; with ``follow``, keep waiting for new ones."""
    with nats_errors():  # what nats-py raises leaves bus/ as the lab's BusFailure
        try:
            info = await bus.js.stream_info(stream)
        except NotFoundError:
            return  # no such stream yet: nothing was said. A refusal or a lost server raises, never reads as an empty log
        if info.state.messages == 0 and not follow:
            return
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def cb(msg: Msg) -> None:
            await queue.put(msg)

        sub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL, cb=cb)
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=idle)
                except TimeoutError:
                    if follow:
                        continue
                    return
                try:
                    env: Envelope | None = decode(msg.data)
                    err = ""
                except ValidationError as e:  # bytes that are not an envelope are shown, not fatal
                    env, err = None, str(e).splitlines()[0]
                yield Entry(subject=msg.subject, seq=msg.metadata.sequence.stream, data=msg.data, envelope=env, error=err)
                if not follow and msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
