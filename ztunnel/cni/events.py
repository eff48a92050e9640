"""Plugin -> node agent events over a unix socket: the agent's side (``EventServer``).

The wire format (one ``PluginEvent`` JSON line in, one ``EventReply`` line out, at most ``MAX_LINE``
bytes each) and the plugin's blocking ``send_event`` live in ``wire``, which the plugin, a process per
pod, imports alone; they are re-exported here. The server is asyncio. A malformed event, a handler that
raises or times out, or a client that stalls gets an error reply (when it can still be sent), is logged
and counted, and never stops the server. Must not: decide anything about pods (the agent's handler does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from ztunnel.cni.errors import EventMalformed
from ztunnel.cni.wire import MAX_LINE as MAX_LINE
from ztunnel.cni.wire import EventReply as EventReply
from ztunnel.cni.wire import PluginEvent as PluginEvent
from ztunnel.cni.wire import decode_event as decode_event
from ztunnel.cni.wire import encode_line as encode_line
from ztunnel.cni.wire import send_event as send_event

log = structlog.get_logger("ztunnel.cni.events")

READ_TIMEOUT = 10.0  # for the client's one line; the handler's own work is bounded by handler_timeout

EventHandler = Callable[[PluginEvent], Awaitable[EventReply]]


def _remove_stale_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class EventServer:
    """Serves plugin events at ``path`` with ``handler`` (each bounded by ``handler_timeout``)."""

    def __init__(
        self,
        path: Path,
        handler: EventHandler,
        *,
        handler_timeout: float = 25.0,
        on_bad_event: Callable[[str], None] | None = None,
    ) -> None:
        self._path = path
        self._handler = handler
        self._handler_timeout = handler_timeout
        self._on_bad_event = on_bad_event
        self._server: asyncio.Server | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        """Listen (a stale socket file is replaced; anything else at the path is refused)."""
        self._path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_stale_socket(self._path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self._path))
            os.chmod(self._path, 0o600)  # before listen(): nobody can have connected yet
            sock.listen(64)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE + 1)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):
                _remove_stale_socket(self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader)
            writer.write(encode_line(reply))
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the plugin gave up; the work (if any) was done or will be retried by the agent
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> EventReply:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                line = await reader.readuntil(b"\n")
            event = decode_event(line.rstrip(b"\n"))
        except TimeoutError:
            problem = f"no complete event line within {READ_TIMEOUT:g}s"
            log.warning("bad plugin event", error=problem)
            return EventReply(ok=False, error=problem)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError, EventMalformed) as e:
            problem = str(e) if isinstance(e, EventMalformed) else f"malformed plugin event: {e}"
            log.warning("bad plugin event", error=problem)
            if self._on_bad_event is not None:
                self._on_bad_event(problem)
            return EventReply(ok=False, error=problem)
        try:
            async with asyncio.timeout(self._handler_timeout):
                return await self._handler(event)
        except TimeoutError:
            error = f"the node agent did not finish within {self._handler_timeout:g}s; it keeps trying"
        except Exception as e:  # a broken handler answers this event with an error, not the server
            log.exception("plugin event handler failed", pod=f"{event.pod_namespace}/{event.pod_name}")
            error = f"internal error: {e}"
        return EventReply(ok=False, error=error)
