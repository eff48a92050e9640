"""Bidirectional byte relay between two ``ByteStream``s: the data path's hot loop.

Each direction copies until its source reports EOF, then half-closes its destination (``send_eof``)
while the other direction keeps running; ``relay`` returns when both are done. If either direction
fails, the other stops and the first error is raised (a plain exception, not a group); the caller owns
both streams and closes them either way. ``RelayCounters`` is updated live, so metrics can read it while
the relay runs.

Two ways to do it, same contract:
- **splice** (both streams are ``PipeEnd``s: ``TcpStream``, ``HboneStream``): no task and no read call.
  Each received chunk is handed by the source's callback straight to the other side's ``pipe_write``;
  a congested sink (full socket buffer, closed HBONE window) makes its pipe pause the source, and
  ``writable()`` resumes it. The relay itself only awaits one future. Per chunk: one call chain, an
  integer add, no logging, no dicts, no copies.
- **copy** (any other ``ByteStream``): two tasks of ``receive_some``/``send_all``; reads start at 16 KiB
  and double whenever a read fills the buffer, up to 256 KiB (performance-anchors §4.3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from meshcore.aio.streams import ByteStream, PipeEnd

MIN_BUFFER = 16 * 1024
MAX_BUFFER = 256 * 1024


@dataclass(slots=True)
class RelayCounters:
    """Bytes delivered so far in each direction (``a`` and ``b`` as passed to ``relay``)."""

    a_to_b: int = 0
    b_to_a: int = 0


async def relay(a: ByteStream, b: ByteStream, counters: RelayCounters | None = None) -> tuple[int, int]:
    """Copy a->b and b->a until both directions reach EOF; returns ``(bytes a->b, bytes b->a)``."""
    return await start_relay(a, b, counters)


def start_relay(
    a: ByteStream, b: ByteStream, counters: RelayCounters | None = None
) -> Awaitable[tuple[int, int]]:
    """``relay`` started now, as an awaitable: for two ``PipeEnd``s a future (cancel it to stop the
    splice), else a coroutine. For callers that keep many idle relays: awaiting a future directly
    spares the coroutine frame ``relay`` would keep per connection."""
    counters = counters if counters is not None else RelayCounters()
    if isinstance(a, PipeEnd) and isinstance(b, PipeEnd):
        return _Splice(a, b, counters).done
    return _copy_both(a, b, counters)


async def _copy_both(a: ByteStream, b: ByteStream, counters: RelayCounters) -> tuple[int, int]:
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


# --- splice ----------------------------------------------------------------------------------------


class _Splice:
    """Both directions of one relay: ``done`` resolves when both flushed their EOF, fails at the first
    error; however it ends (cancelled included), both streams leave the splice."""

    __slots__ = ("a", "b", "counters", "done", "open", "over")

    def __init__(self, a: PipeEnd, b: PipeEnd, counters: RelayCounters) -> None:
        self.a = a
        self.b = b
        self.counters = counters
        self.done: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.open = 2  # directions still running
        self.over = False  # done, failed or cancelled (``done.done()`` as a plain attribute)
        self.done.add_done_callback(self._ended)
        a_to_b = _Pipe(a, b, self, forward=True)
        b_to_a = _Pipe(b, a, self, forward=False)
        b.pipe_in(a_to_b)
        a.pipe_in(b_to_a)
        a.pipe_out(a_to_b)  # may deliver buffered bytes, an EOF or an error right away
        b.pipe_out(b_to_a)

    def finish_one(self) -> None:
        self.open -= 1
        if not self.open and not self.done.done():
            self.over = True
            self.done.set_result((self.counters.a_to_b, self.counters.b_to_a))

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.over = True
            self.done.set_exception(error)

    def _ended(self, done: asyncio.Future[tuple[int, int]]) -> None:
        self.over = True
        self.a.unpipe()
        self.b.unpipe()
        if not done.cancelled():
            done.exception()  # retrieved: an error that lost the race with a cancel is not reported later


class _Pipe:
    """One direction: ``src`` calls ``data``/``eof``/``fail``, ``dst`` calls ``writable``/``flushed``."""

    __slots__ = ("dst", "ended", "forward", "paused", "splice", "src")

    def __init__(self, src: PipeEnd, dst: PipeEnd, splice: _Splice, *, forward: bool) -> None:
        self.src = src
        self.dst = dst
        self.splice = splice
        self.forward = forward
        self.paused = False
        self.ended = False  # EOF passed on to the sink

    def data(self, chunk: bytes | memoryview) -> None:
        splice = self.splice
        if splice.over:
            return  # failed: the relay is unwinding
        try:
            more = self.dst.pipe_write(chunk)
        except Exception as exc:  # noqa: BLE001 - the sink broke (or a bug): this relay ends with it
            splice.fail(exc)
            return
        if self.forward:
            splice.counters.a_to_b += len(chunk)
        else:
            splice.counters.b_to_a += len(chunk)
        if not more and not self.paused:
            self.paused = True
            self.src.pipe_pause()

    def eof(self) -> None:
        if self.ended or self.splice.over:
            return
        self.ended = True
        try:
            now = self.dst.pipe_eof()
        except Exception as exc:  # noqa: BLE001 - as in ``data``
            self.splice.fail(exc)
            return
        if now:
            self.splice.finish_one()

    def flushed(self) -> None:
        self.splice.finish_one()

    def fail(self, error: BaseException) -> None:
        self.splice.fail(error)

    def writable(self) -> None:
        if self.paused and not self.splice.over:
            self.paused = False
            self.src.pipe_resume()
