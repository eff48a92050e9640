"""Inbound plaintext (15006): connections from clients outside the mesh, authorized with no identity.

The phases are ``inbound.serve_inbound``'s, unchanged; this front only accepts TCP and says where each
connection was meant to go. That is the one thing the two modes differ in, so it is a parameter
(``PlaintextDestination``): in-pod mode reads the original destination the kernel redirected
(SO_ORIGINAL_DST); dedicated mode has no redirection, so ``fixed_port`` sends what arrives on
``<workload ip>:15006`` to ``<workload ip>:<INBOUND_PLAINTEXT_TARGET_PORT>``. A refused connection is
reset (plaintext has no status to answer with). The listener owns its connection tasks: ``drain``
waits for them until a deadline, ``aclose`` cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable

import structlog

from meshcore.aio.streams import AsyncioByteStream, ByteStream
from meshcore.model import Workload
from ztunnel.proxy.inbound import InboundRequest, serve_inbound
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.routing import SockAddr
from ztunnel.sockets import SocketFactory

log = structlog.get_logger("ztunnel.inbound_plaintext")

PlaintextDestination = Callable[[socket.socket, Workload], SockAddr]
"""Where an accepted plaintext connection was meant to go, given its socket and the served workload."""


def fixed_port(port: int) -> PlaintextDestination:
    """Dedicated mode: the address the client reached (the workload's), with ``port`` as the port."""

    def destination(sock: socket.socket, served: Workload) -> SockAddr:
        return SockAddr(str(sock.getsockname()[0]), port)

    return destination


class _PlainAnswer:
    __slots__ = ("_stream",)

    def __init__(self, stream: AsyncioByteStream) -> None:
        self._stream = stream

    async def accept(self, headers: Iterable[tuple[str, str]]) -> ByteStream:
        return self._stream

    async def reject(self, status: int) -> None:
        self._stream.abort()  # an RST: the only refusal plain TCP has


class PlaintextListener:
    """Serves one workload's plaintext inbound on a listening socket from the proxy's factory."""

    def __init__(
        self,
        inputs: ProxyInputs,
        served: Workload,
        sockets: SocketFactory,
        listener: socket.socket,
        destination: PlaintextDestination,
    ) -> None:
        self._inputs = inputs
        self._served = served
        self._sockets = sockets
        self._listener = listener
        self._destination = destination
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        name = self._listener.getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._listener)

    def close(self) -> None:
        """Stop accepting; connections carry on."""
        if self._server is not None:
            self._server.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting and wait for live connections until ``deadline`` (loop time)."""
        self.close()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Stop accepting and end every connection now."""
        self.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        stream = AsyncioByteStream(reader, writer)
        try:
            sock = writer.get_extra_info("socket")
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            request = InboundRequest(
                src=SockAddr(str(peer[0]), int(peer[1])),
                dst=self._destination(sock, self._served),
                identity=None,
                hbone=False,
                local=SockAddr(str(local[0]), int(local[1])),
            )
            await serve_inbound(self._inputs, self._served, self._sockets, request, _PlainAnswer(stream))
        except asyncio.CancelledError:
            # Only ``aclose`` cancels these tasks. End normally: Python 3.11's start_server callback
            # calls task.exception() on a finished handler, which raises for a cancelled one.
            stream.abort()
        except Exception:  # a bug must cost this connection only, never the listener
            log.exception("plaintext inbound connection failed", workload=self._served.uid)
            stream.abort()
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.transport.abort()
