"""Inbound plaintext (15006): connections from clients outside the mesh, authorized with no identity.

The phases are ``inbound.serve_inbound``'s, unchanged; this front only accepts TCP and says where each
connection was meant to go. That is the one thing the two modes differ in, so it is a parameter
(``PlaintextDestination``): in-pod mode reads the original destination the kernel redirected
(SO_ORIGINAL_DST); dedicated mode has no redirection, so ``fixed_port`` sends what arrives on
``<workload ip>:15006`` to ``<workload ip>:<INBOUND_PLAINTEXT_TARGET_PORT>``. A refused connection is
reset (plaintext has no status to answer with). The listener owns its connection tasks
(``TcpListener``): ``drain`` waits for them until a deadline, ``aclose`` cancels what is left.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterable

import structlog

from meshcore.aio.listener import TcpListener
from meshcore.aio.streams import ByteStream, TcpStream
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

    def __init__(self, stream: TcpStream) -> None:
        self._stream = stream

    async def accept(self, headers: Iterable[tuple[str, str]]) -> ByteStream:
        return self._stream

    async def reject(self, status: int) -> None:
        self._stream.abort()  # an RST: the only refusal plain TCP has


class PlaintextListener(TcpListener):
    """Serves one workload's plaintext inbound on a listening socket from the proxy's factory."""

    def __init__(
        self,
        inputs: ProxyInputs,
        served: Workload,
        sockets: SocketFactory,
        listener: socket.socket,
        destination: PlaintextDestination,
    ) -> None:
        super().__init__(listener)
        self._inputs = inputs
        self._served = served
        self._sockets = sockets
        self._destination = destination

    async def _serve(self, stream: TcpStream) -> Awaitable[object] | None:
        peer = stream.get_extra_info("peername")
        local = stream.get_extra_info("sockname")
        request = InboundRequest(
            src=SockAddr(str(peer[0]), int(peer[1])),
            dst=self._destination(stream.get_extra_info("socket"), self._served),
            identity=None,
            hbone=False,
            local=SockAddr(str(local[0]), int(local[1])),
        )
        # Handed back for the listener to await: once relaying, the connection carries on without a task.
        return serve_inbound(self._inputs, self._served, self._sockets, request, _PlainAnswer(stream))

    def _log_failure(self) -> None:
        log.exception("plaintext inbound connection failed", workload=self._served.uid)
