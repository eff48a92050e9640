"""Plugin -> node agent events over a unix socket: one JSON line each way per connection.

Protocol (ours; Istio's plugin POSTs /cmdadd over HTTP on the same kind of socket): the plugin connects
to ``cni_event_address`` (SOCK_STREAM, mode 0600: only root may drive pod capture), writes one
``PluginEvent`` as a JSON object and a newline, and reads one ``EventReply`` line; then both close. A
line is at most ``MAX_LINE`` bytes. The plugin side (``send_event``) is blocking, as the plugin is a
short-lived process; the agent side (``EventServer``) is asyncio. A malformed event, a handler that
raises or times out, or a client that stalls gets an error reply (when it can still be sent), is logged
and counted, and never stops the server. Must not: decide anything about pods (the agent's handler does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from ztunnel.cni.errors import AgentUnreachable, EventMalformed

log = structlog.get_logger("ztunnel.cni.events")

MAX_LINE = 64 * 1024
READ_TIMEOUT = 10.0  # for the client's one line; the handler's own work is bounded by handler_timeout


class PluginEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What the plugin tells the agent about one CNI call for a Kubernetes pod."""

    cmd: Literal["add", "del"]
    pod_namespace: str
    pod_name: str
    container_id: str
    # The pod sandbox's netns path (CNI_NETNS); required for "add", optional for "del".
    netns: str = ""
    ifname: str = ""
    # K8S_POD_UID when the runtime passes it ("" otherwise).
    pod_uid: str = ""
    pod_ips: tuple[str, ...] = ()
    # True: the plugin found the pod enrolled and waits for the capture's outcome; False: best effort.
    wait: bool = False


class EventReply(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's answer: ``ok`` or ``error``; ``captured`` says whether the pod is now redirected."""

    ok: bool
    error: str = ""
    captured: bool = False


EventHandler = Callable[[PluginEvent], Awaitable[EventReply]]

_event_decoder = msgspec.json.Decoder(PluginEvent)
_reply_decoder = msgspec.json.Decoder(EventReply)


def decode_event(line: bytes) -> PluginEvent:
    """One event line; ``EventMalformed`` for anything that is not a valid ``PluginEvent``."""
    try:
        event = _event_decoder.decode(line)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise EventMalformed("plugin event", str(e)) from None
    if not event.pod_namespace or not event.pod_name:
        raise EventMalformed("plugin event", "pod_namespace and pod_name are required")
    if event.cmd == "add" and not event.netns:
        raise EventMalformed("plugin event", "an add event needs the pod's netns path")
    return event


def encode_line(value: PluginEvent | EventReply) -> bytes:
    return msgspec.json.encode(value) + b"\n"


# -- plugin side -------------------------------------------------------------------------------------------


def send_event(path: str, event: PluginEvent, timeout: float) -> EventReply:
    """Send ``event`` to the agent at ``path`` and wait up to ``timeout`` seconds for its reply.

    Raises ``AgentUnreachable`` (no socket, refused, timed out, closed early) or ``EventMalformed``."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(encode_line(event))
            buf = bytearray()
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise AgentUnreachable(path, "the agent closed the connection without replying")
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise EventMalformed("agent reply", f"over {MAX_LINE} bytes")
    except TimeoutError:
        raise AgentUnreachable(path, f"no reply within {timeout:g}s") from None
    except FileNotFoundError:
        raise AgentUnreachable(path, "no such socket (is the node agent running?)") from None
    except OSError as e:
        raise AgentUnreachable(path, e.strerror or str(e)) from None
    line = bytes(buf[: buf.index(b"\n")])
    try:
        return _reply_decoder.decode(line)
    except msgspec.DecodeError as e:
        raise EventMalformed("agent reply", str(e)) from None


# -- agent side --------------------------------------------------------------------------------------------


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
