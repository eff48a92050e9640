"""The waypoint's ``UpstreamPool``: upstream connections are HBONE tunnels to the endpoint's ztunnel.

``acquire(endpoint)`` hands out a tunnel to an ``HboneEndpoint`` (CONNECT to the endpoint's pod
IP:target port over a pooled mTLS connection to its HBONE address, presenting the waypoint's own
certificate and accepting only the identities the endpoint may carry), reusing an idle tunnel of the
same endpoint when the HTTP engine released one as reusable (HTTP/1.1 keep-alive upstream). The HBONE
connections underneath are shared by every endpoint on the same pod (``HbonePool``, up to 100 tunnels
each), so a new request costs a stream, not a TLS handshake. Idle tunnels are capped per endpoint; the
rest are closed. ``aclose`` closes every idle tunnel (the pool is closed by its owner).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from meshcore.aio.hbone_conn import HboneStream
from meshcore.aio.pool import HbonePool, PoolKey
from meshcore.aio.streams import ByteStream
from meshcore.identity import SpiffeId
from waypoint.decide import HboneEndpoint

MAX_IDLE_PER_ENDPOINT = 32


class HboneUpstreamPool:
    """Implements ``waypoint.l7.model.UpstreamPool`` over an ``HbonePool`` (see the module docstring)."""

    def __init__(
        self,
        pool: HbonePool,
        identity: SpiffeId,
        *,
        headers: Iterable[tuple[str, str]] = (),
        max_idle: int = MAX_IDLE_PER_ENDPOINT,
    ) -> None:
        self._pool = pool
        self._identity = identity
        self._headers = tuple(headers)
        self._max_idle = max_idle
        self._idle: dict[Hashable, list[HboneStream]] = {}
        self.opened = 0
        self.reused = 0

    async def acquire(self, endpoint: Hashable) -> ByteStream:
        if not isinstance(endpoint, HboneEndpoint):
            raise TypeError(f"the waypoint's upstreams are HboneEndpoints, got {type(endpoint).__name__}")
        idle = self._idle.get(endpoint)
        while idle:
            stream = idle.pop()
            if not stream.finished:
                self.reused += 1
                return stream
        key = PoolKey(self._identity, frozenset(endpoint.identities), (endpoint.hbone.ip, endpoint.hbone.port))
        stream = await self._pool.open_tunnel(key, str(endpoint.authority), self._headers)
        self.opened += 1
        return stream

    def release(self, endpoint: Hashable, stream: ByteStream, *, reusable: bool) -> None:
        if reusable and isinstance(stream, HboneStream) and not stream.finished:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) < self._max_idle:
                idle.append(stream)
                return
        close = getattr(stream, "close", None)
        if callable(close):
            close()

    @property
    def idle(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for stream in streams:
                stream.close()
