"""Reading a Kubernetes watch response in tests: ``WatchStream(response)`` over an aiohttp response of
``?watch=1`` (the API server stand-in's or a real one's), one JSON event per line.

Every read has a deadline (``timeout``, 5 s by default), so a missing event fails the test instead of
hanging it; ``next`` fails too when the stream ended, ``ended`` tells whether it has.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class WatchStream:
    """Reads watch events line by line with a deadline per event."""

    def __init__(self, response: aiohttp.ClientResponse, timeout: float = 5.0) -> None:
        self.response = response
        self.timeout = timeout

    async def next(self) -> dict[str, Any]:
        """The next event (``{"type": ..., "object": ...}``); an AssertionError if the stream ended."""
        line = await asyncio.wait_for(self.response.content.readline(), timeout=self.timeout)
        assert line, "the watch stream ended"
        event: dict[str, Any] = json.loads(line)
        return event

    async def ended(self) -> bool:
        """Whether the server closed the stream (nothing more to read) within the deadline."""
        return await asyncio.wait_for(self.response.content.readline(), timeout=self.timeout) == b""
