"""FakeClock: wall-clock time and sleeping that only move when a test says so.

Components that take ``clock`` (returning an aware UTC datetime) and ``sleep`` (an ``async (seconds)``
function) can be driven through hours of certificate lifetime in microseconds of real time:
``advance()`` moves time and wakes, in deadline order, every sleeper that is due; ``jump()`` moves
time without waking anyone (a wall-clock step, or a suspend the event loop's timers did not see).
Tests wait for a component to go to sleep with ``wait_for_sleepers`` (an awaited event, not a poll).
Single event loop only. Times are for logic, not for TLS: certificates issued at a fake time are only
valid for real handshakes when the fake time is close to the real one (the default start is "now").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta


class FakeClock:
    """See the module docstring. ``now()`` and ``sleep()`` are the two functions to inject."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start if start is not None else datetime.now(UTC).replace(microsecond=0)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._start = start
        self._now = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._added = asyncio.Event()

    def now(self) -> datetime:
        """The current fake time (aware UTC)."""
        return self._now

    def monotonic(self) -> float:
        """Seconds since the clock was created (for components that take a float clock)."""
        return (self._now - self._start).total_seconds()

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced by ``seconds`` (yields once for ``seconds <= 0``)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + timedelta(seconds=seconds), next(self._seq), fut))
        self._added.set()
        self._added = asyncio.Event()
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()  # the sleeper was cancelled: drop it from the pending count

    def advance(self, by: float | timedelta) -> None:
        """Move time forward and wake every sleeper whose deadline has come, earliest first."""
        delta = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if delta < timedelta(0):
            raise ValueError("time only moves forward")
        self._now += delta
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance_to_next(self) -> timedelta:
        """Advance exactly to the earliest pending sleeper's deadline; returns how far time moved."""
        deadline = self.next_deadline()
        if deadline is None:
            raise RuntimeError("no task is sleeping on this clock")
        delta = max(deadline - self._now, timedelta(0))
        self.advance(delta)
        return delta

    def jump(self, by: float | timedelta) -> None:
        """Move time without waking anyone (see the module docstring); negative steps are allowed."""
        delta = by if isinstance(by, timedelta) else timedelta(seconds=by)
        self._now += delta

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock now."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> datetime | None:
        """The earliest pending sleeper's wake-up time, or None when nobody sleeps."""
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    async def wait_for_sleepers(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait (real time, at most ``timeout`` seconds) until at least ``count`` tasks sleep on this clock."""
        async with asyncio.timeout(timeout):
            while self.sleepers < count:
                await self._added.wait()
