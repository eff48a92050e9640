"""The in-pod outbound listener (15001): the pod's own TCP, redirected here by its nftables rules.

For each accepted connection: read where the app was going (SO_ORIGINAL_DST; the accepted socket's
local address is 127.0.0.1:15001 after REDIRECT), refuse a self-call (``capture_destination``, pure: a
destination on one of ztunnel's ports that is this pod, loopback, or the listener itself because the
connection was not redirected at all), take the source workload as the *current* snapshot has this pod
(none: refused as ``UnknownSource``, never proxied under another identity), then hand over to
``serve_outbound``, dedicated mode's core, unchanged: routing, HBONE through the pod's pool, passthrough,
metrics and the access log. The app has no protocol to be told "refused" in, so every refusal is a reset.
The listener owns its connection tasks (``TcpListener``): ``drain`` waits for them until a deadline,
``aclose`` cancels.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection

import structlog

from meshcore.aio.listener import TcpListener
from meshcore.aio.streams import TcpStream
from meshcore.model import Workload
from ztunnel.inpod.sockets import read_original_dst
from ztunnel.proxy.errors import SelfCall, UnknownSource
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.outbound import OutboundFailure, Upstream, refuse_outbound, serve_outbound
from ztunnel.proxy.routing import ILLEGAL_PORTS, SockAddr

log = structlog.get_logger("ztunnel.inpod.outbound")

SourceWorkload = Callable[[], Workload | None]
"""This pod's workload in the latest snapshot, or None while xDS does not know it."""


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def capture_destination(
    original: SockAddr | None,
    local: SockAddr,
    pod_ips: Collection[str],
    own_ports: Collection[int] = ILLEGAL_PORTS,
) -> SockAddr:
    """Where a connection accepted on 15001 was going (pure).

    ``original`` is SO_ORIGINAL_DST (None: not redirected), ``local`` the accepted socket's address.
    Raises ``SelfCall`` when that is one of ztunnel's own ports on this pod, on loopback, or the listener
    itself (an app that dialled 15001 directly): serving it would loop back into ztunnel."""
    if original is None or original == local:
        raise SelfCall(str(local), "the connection was not redirected: it dialled ztunnel's outbound port itself")
    if original.port in own_ports and (_is_loopback(original.ip) or original.ip in pod_ips):
        raise SelfCall(str(original), f"port {original.port} is one of ztunnel's own listeners in this pod")
    return original


class _CaptureFront:
    """A captured app is told nothing on success (its bytes just flow) and gets a reset on failure."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TcpStream) -> None:
        self._stream = stream

    async def connected(self, upstream: Upstream) -> bytes:
        return b""

    async def failed(self, failure: OutboundFailure) -> None:
        self._stream.abort()


class OutboundCaptureListener(TcpListener):
    """Serves one pod's redirected outbound connections on a listening socket from its factory."""

    def __init__(
        self,
        inputs: ProxyInputs,
        listener: socket.socket,
        source: SourceWorkload,
        *,
        own_ports: Collection[int] = ILLEGAL_PORTS,
    ) -> None:
        super().__init__(listener)
        self._inputs = inputs
        self._source = source
        self._own_ports = frozenset(own_ports)

    def _log_failure(self) -> None:
        log.exception("captured outbound connection failed")

    async def _serve(self, stream: TcpStream) -> Awaitable[object] | None:
        inputs = self._inputs
        peer = stream.get_extra_info("peername")
        name = stream.get_extra_info("sockname")
        client = SockAddr(str(peer[0]), int(peer[1]))
        local = SockAddr(str(name[0]), int(name[1]))
        original = read_original_dst(stream.get_extra_info("socket"))
        src = self._source()
        try:
            dst = capture_destination(original, local, src.addresses if src else (), self._own_ports)
            if src is None:
                raise UnknownSource(client.ip)
        except (SelfCall, UnknownSource) as exc:
            await refuse_outbound(inputs, exc, stream, client, original or local, _CaptureFront(stream))
            return None
        # Handed back for the listener to await: once relaying, the connection carries on without a task.
        return serve_outbound(inputs, src, stream, client, local, dst, _CaptureFront(stream))
