"""``HboneClient``: one outbound HBONE connection (TCP, mTLS, HTTP/2) carrying many tunnels.

``connect`` dials, completes the TLS handshake without SNI (ztunnel sends none), checks ALPN ``h2`` and
runs the caller's ``verify`` hook on the server's leaf certificate *before* any CONNECT is sent: a
server whose identity is not expected is disconnected and ``PeerNotTrusted`` raised. ``open_tunnel``
sends a CONNECT and returns an ``HboneStream`` once the server answered 200 (ztunnel's server answers
only after its upstream connected), else raises ``TunnelRefused(status)``. The stream slot is taken
synchronously, before the first await, so a pool can count on ``available_streams`` immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterable

from meshcore.aio.hbone_conn import HboneDriver, HboneStream, adopt_streams
from meshcore.hbone import (
    CLIENT_SETTINGS,
    HboneClientConn,
    HboneConnectionError,
    HboneSettings,
    PeerNotTrusted,
    TunnelAccepted,
    TunnelRefused,
    TunnelRejected,
)
from meshcore.identity import SpiffeId

CONNECT_TIMEOUT = 10.0  # ztunnel's TCP connect timeout
HANDSHAKE_TIMEOUT = 10.0
ALPN_H2 = "h2"

VerifyPeer = Callable[[bytes | None], SpiffeId]
"""Given the peer's DER leaf certificate, return its identity or raise (e.g. ``meshcore.tls.verify_peer``
with the expected identities bound in)."""


class HboneClient(HboneDriver):
    """Client side of one HBONE connection. Build with ``connect`` (mTLS) or ``from_streams``."""

    conn: HboneClientConn

    def __init__(self, conn: HboneClientConn, *, peer_identity: SpiffeId | None = None) -> None:
        super().__init__(conn, peer_identity=peer_identity)
        self._opening: dict[int, asyncio.Future[None]] = {}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        verify: VerifyPeer,
        settings: HboneSettings = CLIENT_SETTINGS,
        sock: socket.socket | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> HboneClient:
        """Dial ``host:port``, handshake, verify the server, start HTTP/2.

        ``sock``: an unconnected TCP socket to dial from (made in a pod's network namespace, marked
        with SO_MARK, bound to a source IP...); it is connected to ``host:port`` here and owned by the
        client from then on. Raises ``HboneConnectionError`` when the server cannot be reached or the
        handshake fails, and ``PeerNotTrusted`` when its certificate carries no expected identity.
        """
        where = f"{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                if sock is None:
                    sock = await _dial(host, port)
                else:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (host, port))
        except TimeoutError:
            _close(sock)
            raise HboneConnectionError(f"TCP connect to HBONE server {where} timed out") from None
        except OSError as exc:
            _close(sock)
            raise HboneConnectionError(f"TCP connect to HBONE server {where} failed: {exc}") from exc
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(HboneClientConn(settings, now=loop.time()))
        try:
            async with asyncio.timeout(handshake_timeout + 1):
                transport, _ = await loop.create_connection(
                    lambda: client, sock=sock, ssl=ssl_context, server_hostname="",  # no SNI, as ztunnel
                    ssl_handshake_timeout=handshake_timeout,
                )
        except TimeoutError:
            _close(sock)
            raise HboneConnectionError(f"TLS handshake with HBONE server {where} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            _close(sock)
            raise HboneConnectionError(f"TLS handshake with HBONE server {where} failed: {exc}") from exc
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN_H2:
                raise PeerNotTrusted("the server did not negotiate ALPN h2")
            client.peer_identity = verify(ssl_object.getpeercert(binary_form=True))
        except Exception as exc:
            transport.abort()
            raise PeerNotTrusted(f"HBONE server at {where} is not trusted: {exc}") from exc
        client.start()
        return client

    @classmethod
    def from_streams(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer_identity: SpiffeId,
        settings: HboneSettings = CLIENT_SETTINGS,
    ) -> HboneClient:
        """Start HTTP/2 over an already secured (or, in tests, plaintext) stream pair; the client takes
        over its transport (the pair is not to be used afterwards)."""
        loop = asyncio.get_running_loop()
        client = cls(HboneClientConn(settings, now=loop.time()), peer_identity=peer_identity)
        adopt_streams(client, reader, writer)
        client.start()
        return client

    @property
    def available_streams(self) -> int:
        """Tunnels this connection can still open (the peer's stream limit minus open ones)."""
        return 0 if self.closed else self.conn.available_streams

    @property
    def max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return self.conn.max_streams

    async def open_tunnel(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> HboneStream:
        """CONNECT to ``authority`` (``ip:port``); returns the stream once the server answered 200.

        Raises ``TunnelRefused`` for any other status, ``StreamLimitReached`` / ``ConnectionDrained``
        when this connection cannot take another tunnel, ``HboneConnectionError`` if it dies meanwhile.
        Cancelling the call resets the tunnel.
        """
        self._check_usable()
        headers = tuple(headers)
        stream_id = self.conn.open_tunnel(authority, headers)
        stream = HboneStream(self, stream_id, authority=authority, request_headers=headers)
        self._streams[stream_id] = stream
        answered: asyncio.Future[None] = self.loop.create_future()
        self._opening[stream_id] = answered
        self.flush()
        self._notify()
        try:
            await answered
        except BaseException:
            await stream.aclose()
            raise
        finally:
            self._opening.pop(stream_id, None)
        return stream

    def _on_tunnel_answered(self, event: TunnelAccepted | TunnelRejected) -> None:
        answered = self._opening.get(event.stream_id)
        stream = self._streams.get(event.stream_id)
        if answered is None or stream is None or answered.done():
            return
        if isinstance(event, TunnelAccepted):
            stream.response_headers = event.headers
            answered.set_result(None)
        else:
            stream.response_headers = event.headers
            stream._fail(TunnelRefused(event.status, stream.authority))  # fails ``answered`` too

    def _on_stream_failed(self, stream_id: int, error: BaseException) -> None:
        answered = self._opening.get(stream_id)
        if answered is not None and not answered.done():
            answered.set_exception(error)


async def _dial(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to ``host:port`` (an IP literal)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()
