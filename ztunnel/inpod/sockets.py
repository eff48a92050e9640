"""``InpodSocketFactory``: every socket ztunnel makes for one pod, created inside that pod's network namespace.

Istio's ``InpodSocketFactory`` (ztunnel ``src/inpod/config.rs``) in Python: each socket is made by the
pod's ``NetnsHandle`` worker thread (the only thread that ever entered the pod netns; the event loop
thread never changes namespace) and keeps that namespace for life, so it may be used from the loop
afterwards. Every socket carries SO_MARK 0x539, which the pod's redirection rules let through uncaptured.
- ``listen``: 15001/15006/15008 on the wildcard, SO_REUSEPORT (a restarted ztunnel binds while the old one
  drains), IP_TRANSPARENT best effort (Istio's default; needs CAP_NET_ADMIN), backlog 128.
- ``new_socket``: outbound dials (HBONE to peers, passthrough) leave from the pod with the pod's address.
- ``for_original_source(client_ip)``: the inbound dial to the app binds the client's address with
  IP_TRANSPARENT + IP_FREEBIND, so the app sees its real peer (the pod's table-100 route brings the replies
  back to us); when the kernel refuses (no CAP_NET_ADMIN, other family) it dials unspoofed, warned once.
Failures to reach the namespace raise ``PodNetnsUnavailable`` (an ``OSError``), so the data path handles
them like any socket error. ``read_original_dst`` reads SO_ORIGINAL_DST off an accepted redirected socket.
Must not: block the loop for more than one hop to the worker, or create a socket in ztunnel's own netns.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable
from typing import Protocol, TypeVar

import structlog

from meshcore.aio.netns import INPOD_MARK, NetnsError, NetnsHandle, NetnsId, current_netns_id, in_netns
from ztunnel.inpod.errors import PodNetnsUnavailable
from ztunnel.proxy.routing import SockAddr
from ztunnel.sockets import SocketFactory

log = structlog.get_logger("ztunnel.inpod.sockets")

LISTEN_BACKLOG = 128  # Istio's in-pod listen backlog
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
# Missing from Python 3.11's socket module on some builds; values from linux/in.h and linux/in6.h.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_SOCKADDR_IN = struct.Struct("!2xH4s")  # family (host order, skipped), port, address
_SOCKADDR_IN6 = struct.Struct("!2xH4x16s")  # family, port, flowinfo (skipped), address
T = TypeVar("T")


class PodSockets(SocketFactory, Protocol):
    """What the manager needs from one pod's sockets: the factory, which netns it is, and a close."""

    @property
    def netns_id(self) -> object:
        """Equal for two handles of the same namespace (a re-sent AddWorkload is recognised by it)."""
        ...

    def for_original_source(self, client_ip: str) -> SocketFactory:
        """A factory whose dials leave from ``client_ip`` (source-preserving inbound)."""
        ...

    def close(self) -> None:
        """Release the namespace; sockets already made keep working."""
        ...


# ------------------------------------------------------------------------------ SO_ORIGINAL_DST (pure)


def parse_original_dst(raw: bytes) -> SockAddr:
    """The address in a ``struct sockaddr_in`` (16 bytes) or ``sockaddr_in6`` (28 bytes) as returned by
    getsockopt SO_ORIGINAL_DST; raises ``ValueError`` for anything else."""
    if len(raw) < 2:
        raise ValueError(f"original destination of {len(raw)} bytes is not a sockaddr")
    (family,) = struct.unpack_from("=H", raw)  # sa_family is in host byte order
    if family == socket.AF_INET and len(raw) >= _SOCKADDR_IN.size:
        port, addr = _SOCKADDR_IN.unpack_from(raw)
        return SockAddr(socket.inet_ntop(socket.AF_INET, addr), port)
    if family == socket.AF_INET6 and len(raw) >= _SOCKADDR_IN6.size:
        port, addr = _SOCKADDR_IN6.unpack_from(raw)
        ip = socket.inet_ntop(socket.AF_INET6, addr)
        mapped = ip.removeprefix("::ffff:")
        return SockAddr(mapped if mapped != ip and "." in mapped else ip, port)
    raise ValueError(f"original destination has address family {family} and {len(raw)} bytes")


class _HasSockopt(Protocol):
    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def read_original_dst(sock: _HasSockopt) -> SockAddr | None:
    """Where a connection accepted on a REDIRECT target was going before netfilter rewrote it; None when
    it was not redirected (the client dialled the listener itself) or the kernel has no record of it."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, _SOCKADDR_IN6.size)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size + 8)
        return parse_original_dst(raw)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------- jobs on the netns worker


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _new(family: int, mark: int) -> socket.socket:
    """A TCP socket in the calling thread's namespace, marked, non-blocking."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def _listener_job(host: str, port: int, backlog: int, mark: int, reuse_port: bool, transparent: bool) -> socket.socket:
    family = _family_of(host)
    sock = _new(family, mark)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # 0.0.0.0 gets its own listener
        if transparent:
            with contextlib.suppress(OSError):  # best effort, as Istio's default
                _set_transparent(sock, family)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _dialer_job(family: int, mark: int, source_ip: str | None) -> socket.socket:
    sock = _new(family, mark)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source_ip and _family_of(source_ip) == family:
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_ip, 0))
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
                raise
            # Not an address of the pod (an app bound elsewhere): the kernel picks the pod's own source.
            sock = _new(family, mark)
    return sock


def _transparent_dialer_job(family: int, mark: int, client_ip: str) -> socket.socket:
    sock = _new(family, mark)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _set_transparent(sock, family)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((client_ip, 0))
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------------------------------- factories


class InpodSocketFactory:
    """The sockets of one pod (see the module docstring). Owns the ``NetnsHandle``: ``close`` ends it."""

    def __init__(
        self,
        handle: NetnsHandle,
        *,
        pod: str | None = None,
        mark: int = INPOD_MARK,
        reuse_port: bool = True,
        transparent: bool = True,
    ) -> None:
        self._handle = handle
        self._pod = pod or handle.label
        self._mark = mark
        self._reuse_port = reuse_port
        self._transparent = transparent
        self._spoof_refused = False  # warned once when the kernel refuses original-source binds

    @property
    def netns_id(self) -> NetnsId:
        return self._handle.id

    @property
    def pod(self) -> str:
        return self._pod

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def _run(self, job: Callable[..., T], *args: object) -> T:
        try:
            return self._handle.run(job, *args)
        except NetnsError as exc:
            raise PodNetnsUnavailable(self._pod, str(exc)) from exc

    async def probe(self) -> None:
        """Enter the namespace now (on its worker) and check we landed in it; ``PodNetnsUnavailable`` if
        not. The AddWorkload is nacked with that message instead of failing on the first connection."""
        try:
            landed = await in_netns(self._handle, current_netns_id)
        except (NetnsError, OSError) as exc:
            raise PodNetnsUnavailable(self._pod, str(exc)) from exc
        if landed != self._handle.id:
            raise PodNetnsUnavailable(self._pod, f"worker is in {landed}, expected {self._handle.id}")

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        return self._run(_listener_job, host, port, backlog, self._mark, self._reuse_port, self._transparent)

    def new_socket(self, family: int, *, source_ip: str | None = None) -> socket.socket:
        return self._run(_dialer_job, family, self._mark, source_ip)

    def for_original_source(self, client_ip: str) -> SocketFactory:
        return _OriginalSource(self, client_ip)

    def _original_source_socket(self, family: int, client_ip: str) -> socket.socket:
        if self._transparent and not self._spoof_refused and _family_of(client_ip) == family:
            try:
                return self._run(_transparent_dialer_job, family, self._mark, client_ip)
            except PodNetnsUnavailable:
                raise
            except OSError as exc:
                self._spoof_refused = True
                log.warning(
                    "cannot keep the client's address toward the app (IP_TRANSPARENT refused); the app sees "
                    "the pod's own address instead", pod=self._pod, client=client_ip, error=exc.strerror or str(exc),
                )
        return self.new_socket(family)

    def close(self) -> None:
        """Stop the pod's netns worker and close its fd (sockets already made are unaffected)."""
        self._handle.close()


class _OriginalSource:
    """``InpodSocketFactory.for_original_source``: dials that leave from the client's address."""

    __slots__ = ("_client_ip", "_factory")

    def __init__(self, factory: InpodSocketFactory, client_ip: str) -> None:
        self._factory = factory
        self._client_ip = client_ip

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        return self._factory.listen(host, port, backlog=backlog)

    def new_socket(self, family: int, *, source_ip: str | None = None) -> socket.socket:
        return self._factory._original_source_socket(family, self._client_ip)
