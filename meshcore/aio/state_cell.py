"""StateCell: one writer publishes immutable snapshots, many readers take the current one or await changes.

The writer (the xDS client) calls ``publish(new)``; readers on the data path call ``current()`` once per
connection and never await it. Watchers (policy re-evaluation, readiness, tests) ``await changed(since)``;
reconcilers ``await follow(apply)``.
Invariants: the version strictly increases by one per publish; ``current()`` is always the snapshot of the
latest version; a waiter is never woken for a version it has already seen. Snapshots must be immutable:
the cell hands the same object to every reader. Single event loop only (no thread safety needed or given).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, NoReturn, TypeVar

T = TypeVar("T")


class StateCell(Generic[T]):
    """Holds the latest snapshot and its version; wakes awaiting readers on each ``publish``."""

    def __init__(self, initial: T) -> None:
        self._state = initial
        self._version = 0
        # Replaced on every publish; waiters hold the event that was current when they started waiting.
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def current(self) -> T:
        """The latest snapshot (no await; read once per connection)."""
        return self._state

    def publish(self, new: T) -> int:
        """Make ``new`` the current snapshot; returns its version and wakes every waiter."""
        self._state = new
        self._version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        return self._version

    async def changed(self, since_version: int) -> tuple[int, T]:
        """Wait until the version is above ``since_version``; returns ``(version, snapshot)``.

        Returns at once if a newer version is already published, so a watcher that was busy misses nothing
        but intermediate snapshots (it always sees the latest).
        """
        while self._version <= since_version:
            await self._changed.wait()
        return self._version, self._state

    async def follow(self, apply: Callable[[T], object]) -> NoReturn:
        """Call ``apply`` with the current snapshot, then with every newer one, until cancelled. For
        reconcilers: one busy in ``apply`` skips intermediate snapshots, never the latest."""
        version = self._version
        apply(self._state)
        while True:
            version, state = await self.changed(version)
            apply(state)

    async def wait_for(self, predicate: Callable[[T], bool], timeout: float) -> T:  # noqa: ASYNC109
        """The first snapshot (current or future) for which ``predicate`` holds; ``TimeoutError`` after
        ``timeout`` seconds. For readiness checks and tests."""
        async with asyncio.timeout(timeout):
            version, state = self._version, self._state
            while not predicate(state):
                version, state = await self.changed(version)
            return state
