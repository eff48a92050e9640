"""Bounded waits for async tests: poll a predicate until it holds or a deadline passes (never sleep-and-hope).

``await eventually(lambda: store.get(ref), "the pod stored")`` returns the predicate's first truthy result;
past ``within`` seconds (loop time) it fails the test with ``timed out waiting for <what>``. Polls every
10 ms on the running loop, so the code under test keeps running between checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

DEADLINE_S = 10.0
POLL_S = 0.01


async def eventually(predicate: Callable[[], Any], what: str, within: float = DEADLINE_S) -> Any:
    """The first truthy result of ``predicate()``; an AssertionError naming ``what`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (result := predicate()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_S)
    return result
