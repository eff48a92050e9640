"""Bidirectional byte relay between two ``ByteStream``s: the data path's hot loop.

Each direction copies until its source reports EOF, then half-closes its destination (``send_eof``)
while the other direction keeps running; ``relay`` returns when both are done. If either direction
fails, the other is cancelled and the first error is raised (a plain exception, not a group); the
caller owns both streams and closes them either way. Reads start at 16 KiB and double whenever a read
fills the buffer, up to 256 KiB (performance-anchors §4.3), so idle connections stay small and bulk
ones make few large calls. Per chunk the loop does one read, one write and an integer add: no logging,
no dicts. ``RelayCounters`` is updated live, so metrics can read it while the relay runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from meshcore.aio.streams import ByteStream

MIN_BUFFER = 16 * 1024
MAX_BUFFER = 256 * 1024


@dataclass(slots=True)
class RelayCounters:
    """Bytes delivered so far in each direction (``a`` and ``b`` as passed to ``relay``)."""

    a_to_b: int = 0
    b_to_a: int = 0


async def relay(a: ByteStream, b: ByteStream, counters: RelayCounters | None = None) -> tuple[int, int]:
    """Copy a->b and b->a until both directions reach EOF; returns ``(bytes a->b, bytes b->a)``."""
    counters = counters if counters is not None else RelayCounters()
    forward = asyncio.ensure_future(_copy(a, b, counters, forward=True))
    backward = asyncio.ensure_future(_copy(b, a, counters, forward=False))
    tasks = (forward, backward)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # Cancelled from outside, or one direction failed: stop the other before returning.
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return counters.a_to_b, counters.b_to_a


async def _copy(src: ByteStream, dst: ByteStream, counters: RelayCounters, *, forward: bool) -> None:
    size = MIN_BUFFER
    while True:
        data = await src.receive_some(size)
        if not data:
            break
        await dst.send_all(data)
        n = len(data)
        if forward:
            counters.a_to_b += n
        else:
            counters.b_to_a += n
        if n == size and size < MAX_BUFFER:
            size = min(size * 2, MAX_BUFFER)
    await dst.send_eof()
