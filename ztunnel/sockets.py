"""Where ztunnel's sockets come from: the ``SocketFactory`` seam between dedicated and in-pod mode.

Every listener and every outbound socket the proxy makes comes from a factory, so the data path never
knows which network namespace it runs in. ``DedicatedSocketFactory`` makes plain sockets in ztunnel's
own namespace (dedicated mode: listeners bound to the workload IPs, upstream sockets bound to the
source workload's IP when it is local, so the peer sees the workload's address as in-pod mode does).
In-pod mode supplies a factory that creates each socket inside the pod's namespace with SO_MARK 0x539
(``meshcore.aio.netns.socket_in_netns``); nothing else changes. Factories return non-blocking sockets
and never connect them: dialling and accepting are the caller's (asyncio) business. A factory may also
offer ``for_original_source(client_ip)`` (in-pod mode: the inbound dial to the app keeps the client's
address); ``upstream_sockets`` picks it when present, so dedicated mode dials exactly as before.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Protocol

import structlog

log = structlog.get_logger("ztunnel.sockets")

DEFAULT_BACKLOG = 1024
# Linux: pick the source port at connect() rather than bind(), so many connections from one source IP
# do not exhaust the ephemeral ports per destination (the constant is missing from Python 3.11).
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class SocketFactory(Protocol):
    """Makes the sockets of one proxy (ztunnel's ``SocketFactory``)."""

    def listen(self, host: str, port: int, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
        """A TCP socket bound to ``host:port`` and listening; raises ``OSError`` when it cannot bind."""
        ...

    def new_socket(self, family: int, *, source_ip: str | None = None) -> socket.socket:
        """An unconnected TCP socket for dialling, bound to ``source_ip`` when given and possible."""
        ...


class DedicatedSocketFactory:
    """Plain sockets in ztunnel's own network namespace."""

    def __init__(self, *, bind_source: bool = True) -> None:
        # Bind outbound sockets to the source workload's IP (when it is an address of this host).
        self._bind_source = bind_source
        self._unbindable: set[str] = set()  # source IPs that failed to bind: warned once, not retried

    def listen(self, host: str, port: int, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        sock.setblocking(False)
        return sock

    def new_socket(self, family: int, *, source_ip: str | None = None) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        same_family = bool(source_ip) and (":" in str(source_ip)) == (family == socket.AF_INET6)
        if self._bind_source and source_ip and same_family and source_ip not in self._unbindable:
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source_ip, 0))
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
                    sock.close()
                    raise
                # Not an address of this host (e.g. a workload IP routed elsewhere): dial from the
                # default address instead; peers then see ztunnel's IP as the source.
                self._unbindable.add(source_ip)
                log.warning(
                    "cannot dial from the workload's address; using the host's default source",
                    source_ip=source_ip,
                    error=exc.strerror,
                )
                sock.close()
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
        return sock


def upstream_sockets(sockets: SocketFactory, client_ip: str) -> SocketFactory:
    """The factory for an inbound connection's dial to the app: ``sockets.for_original_source(client_ip)``
    when the factory offers it (ztunnel's original-source mode), else ``sockets`` itself."""
    original_source = getattr(sockets, "for_original_source", None)
    return original_source(client_ip) if original_source is not None else sockets
