"""TCP listeners that own the tasks serving their connections: start, close, drain(deadline), aclose.

``ConnectionTasks`` is the bookkeeping every listener needs: the set of per-connection tasks, waited for
until a deadline (a drain) or cancelled and awaited (a hard close). ``TrackedListener`` is the base of
the ``asyncio.start_server`` listeners on a socket made elsewhere (a proxy's socket factory, a pod's
network namespace): a subclass writes ``_serve(stream)`` for one connection; the base tracks its task,
resets the connection if ``_serve`` left it open, and keeps a bug or a cancel to that connection, never
the listener. ``TcpListener`` is the same with ``TcpStream`` connections (an ``asyncio.Protocol``, no
StreamReader: what the data path relays); ``TrackedListener`` hands out ``AsyncioByteStream``s for
subclasses that want ``readline`` and friends. Listeners that accept sockets themselves (the HBONE
server runs its own TLS handshake) use ``ConnectionTasks`` alone. Nothing here reads a byte or logs a
healthy connection: that is the subclass's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Coroutine
from typing import Any, Generic, TypeVar

import structlog

from meshcore.aio.streams import DEFAULT_READ, AsyncioByteStream, TcpStream

log = structlog.get_logger("meshcore.listener")

# The accept queue length (``listen(2)`` backlog). asyncio re-``listen()``s a socket handed to
# ``start_server`` with 100 unless told otherwise, which resets clients of a burst.
LISTEN_BACKLOG = 1024


class ConnectionTasks:
    """The tasks serving one listener's connections, and the futures of connections that carry on
    without a task (a relay spliced with callbacks: see ``_Listener._run``)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: asyncio.Task[None]) -> None:
        """Track ``task`` until ``discard`` (a handler that runs in a task someone else made)."""
        self._tasks.add(task)

    def discard(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task tracked until it is done."""
        task = asyncio.create_task(coro)
        self.track(task)
        return task

    def track(self, future: asyncio.Future[Any]) -> None:
        """Track ``future`` (a task, or a connection's relay) until it is done; ``cancel`` cancels it."""
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    async def wait(self, deadline: float) -> None:
        """Wait for every task until ``deadline`` (loop time); those still running keep running."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Cancel every task and wait until they have all ended."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
            await asyncio.sleep(0)  # a cancelled relay's done callbacks (its connection's close) run now


S = TypeVar("S", AsyncioByteStream, TcpStream)


class _Listener(Generic[S]):
    """Serves each connection accepted on ``listener`` with ``_serve``, in a task the listener owns.

    ``limit`` is the StreamReader buffer (and the largest ``readuntil``) of every accepted connection
    (``TrackedListener`` only); ``backlog`` the accept queue the socket listens with once started.
    """

    def __init__(
        self, listener: socket.socket, *, limit: int = DEFAULT_READ, backlog: int = LISTEN_BACKLOG
    ) -> None:
        self._listener = listener
        self._limit = limit
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._tasks = ConnectionTasks()
        name = listener.getsockname()
        self._address = (str(name[0]), int(name[1]))

    @property
    def address(self) -> tuple[str, int]:
        """Where the listener is bound (host, port)."""
        return self._address

    @property
    def active(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    async def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting (releasing the listening socket, started or not); connections carry on."""
        if self._server is not None:
            self._server.close()
        else:
            self._listener.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting and wait for live connections until ``deadline`` (loop time)."""
        self.close()
        await self._tasks.wait(deadline)

    async def aclose(self) -> None:
        """Stop accepting and end every connection now."""
        self.close()
        await self._tasks.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, stream: S) -> Awaitable[object] | None:
        """Serve one accepted connection; the base resets it afterwards if it is still open.

        May hand back the rest of its work as an awaitable (its last step, not yet awaited): the base
        awaits it in its own frame, so a long-lived connection keeps one coroutine less. If that step
        ends with a future (a relay that runs on callbacks, owning the connection from then on), the
        connection is left to it: the listener tracks the future (``drain`` waits for it, ``aclose``
        cancels it) and the task ends, so an idle connection costs no task and no frame."""
        raise NotImplementedError

    def _log_failure(self) -> None:
        """Log the bug that ended one connection; called in the ``except`` block, so with its traceback."""
        log.exception("listener connection failed", listener=self._address)

    async def _run(self, stream: S) -> None:
        handed_over = False
        try:
            rest = await self._serve(stream)
            if rest is not None:
                outcome = await rest
                if isinstance(outcome, asyncio.Future) and not outcome.done():
                    self._tasks.track(outcome)
                    handed_over = True
        except asyncio.CancelledError:
            # Only ``aclose`` cancels these tasks. End normally: Python 3.11's start_server callback
            # calls task.exception() on a finished handler, which raises for a cancelled one.
            pass
        except Exception:  # a bug must cost this connection only, never the listener
            self._log_failure()
        finally:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.discard(task)
            if not handed_over:
                stream.abort_if_open()


class TrackedListener(_Listener[AsyncioByteStream]):
    """A listener whose connections are ``AsyncioByteStream``s (StreamReader/StreamWriter)."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, sock=self._listener, limit=self._limit, backlog=self._backlog
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await self._run(AsyncioByteStream(reader, writer))


class TcpListener(_Listener[TcpStream]):
    """A listener whose connections are ``TcpStream``s (the data path's streams)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TcpStream(self._accepted), sock=self._listener, backlog=self._backlog
        )

    def _accepted(self, stream: TcpStream) -> None:
        task = self._tasks.spawn(self._run(stream))
        # Cancelled before it started (aclose right after an accept): the connection is still reset.
        task.add_done_callback(stream.abort_if_cancelled)
