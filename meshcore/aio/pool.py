"""``HbonePool``: reuse HBONE connections so a new app connection costs a stream, not a TLS handshake.

Theory of operation (ztunnel ``src/proxy/pool.rs``):
- Connections are grouped by ``PoolKey`` (source identity, accepted destination identities, next-hop
  address, source IP): a connection is only reused for traffic that would have dialled the same peer
  with the same certificate checks.
- A connection takes at most ``min(max_streams, peer SETTINGS_MAX_CONCURRENT_STREAMS)`` tunnels; when
  every connection of a key is full, draining or closed, a new one is dialled.
- One dial per key at a time: concurrent callers await the same dial (no thundering herd). A failed
  dial fails everyone waiting on it and is not remembered, so the next call dials afresh.
- A connection with no tunnels for ``idle_timeout`` seconds (by the injected ``clock``) is closed.
  Eviction runs from a loop timer and from ``evict_idle()``, which tests call after moving a fake clock.
The pool owns its dial tasks and connections; ``aclose`` ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from meshcore.aio.hbone_client import HboneClient
from meshcore.aio.hbone_conn import HboneStream
from meshcore.hbone import CLIENT_SETTINGS, HboneConnectionError, HboneSettings, StreamLimitReached
from meshcore.identity import SpiffeId
from meshcore.tls.verify import verify_peer

MAX_STREAMS = 100  # POOL_MAX_STREAMS_PER_CONNECTION
IDLE_TIMEOUT = 300.0  # POOL_UNUSED_RELEASE_TIMEOUT


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Which connections are interchangeable."""

    src_identity: SpiffeId  # the certificate we present
    dst_identities: frozenset[SpiffeId]  # identities the server may present
    dst_addr: tuple[str, int]  # next hop: pod, waypoint or gateway, normally port 15008
    src_ip: str | None = None  # spoofed source address, when the socket binds one


@dataclass(frozen=True, slots=True)
class PoolStats:
    connections: int  # live pooled connections
    streams: int  # tunnels open on them
    handshakes: int  # successful dials so far
    dial_failures: int
    evictions: int  # connections closed for idleness


class _Entry:
    __slots__ = ("client", "idle_since")

    def __init__(self, client: HboneClient, now: float) -> None:
        self.client = client
        self.idle_since: float | None = now


class HbonePool:
    """Pooled HBONE connections; see the module docstring for the rules."""

    def __init__(
        self,
        connect: Callable[[PoolKey], Awaitable[HboneClient]],
        *,
        max_streams: int = MAX_STREAMS,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self._connect = connect
        self._max_streams = max_streams
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._entries: dict[PoolKey, list[_Entry]] = {}
        self._dials: dict[PoolKey, asyncio.Task[HboneClient]] = {}
        self._handshakes = 0
        self._dial_failures = 0
        self._evictions = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def open_tunnel(
        self, key: PoolKey, authority: str, headers: Iterable[tuple[str, str]] = ()
    ) -> HboneStream:
        """A tunnel to ``authority`` over a pooled connection for ``key`` (dialled when needed).

        Raises what dialling raises (``HboneConnectionError``, ``PeerNotTrusted``) and what
        ``HboneClient.open_tunnel`` raises (``TunnelRefused``...).
        """
        headers = tuple(headers)
        while True:
            if self._closed:
                raise HboneConnectionError("the HBONE pool is closed")
            entry = self._pick(key)
            if entry is not None:
                try:
                    return await entry.client.open_tunnel(authority, headers)
                except StreamLimitReached:
                    continue  # the peer lowered its limit after we looked: try elsewhere
            dial = self._dials.get(key)
            if dial is None:
                dial = self._start_dial(key)
            client = await asyncio.shield(dial)
            if client.max_streams < 1 or client.closed:
                raise HboneConnectionError(
                    f"new HBONE connection to {key.dst_addr[0]}:{key.dst_addr[1]} accepts no tunnels"
                )

    def stats(self) -> PoolStats:
        entries = [e for group in self._entries.values() for e in group if not e.client.closed]
        return PoolStats(
            connections=len(entries),
            streams=sum(e.client.active_streams for e in entries),
            handshakes=self._handshakes,
            dial_failures=self._dial_failures,
            evictions=self._evictions,
        )

    def evict_idle(self) -> int:
        """Close connections idle for ``idle_timeout`` and forget closed ones; returns how many closed."""
        now = self._clock()
        evicted = 0
        for key in list(self._entries):
            keep = []
            for entry in self._entries[key]:
                client = entry.client
                if client.closed:
                    continue
                if (
                    client.active_streams == 0
                    and entry.idle_since is not None
                    and now - entry.idle_since >= self._idle_timeout
                ):
                    client.close("idle in the pool")
                    evicted += 1
                    continue
                keep.append(entry)
            if keep:
                self._entries[key] = keep
            else:
                del self._entries[key]
        self._evictions += evicted
        self._schedule_eviction()
        return evicted

    async def aclose(self) -> None:
        """Close every connection and cancel dials in progress."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for dial in self._dials.values():
            dial.cancel()
        entries = [e for group in self._entries.values() for e in group]
        self._entries.clear()
        for entry in entries:
            await entry.client.aclose("pool closed")
        if self._dials:
            await asyncio.wait(list(self._dials.values()))

    # --- internals -------------------------------------------------------------------------------

    def _pick(self, key: PoolKey) -> _Entry | None:
        """The connection with the most tunnels that still has room (pack streams, let others idle)."""
        best: _Entry | None = None
        for entry in self._entries.get(key, ()):
            client = entry.client
            room = min(self._max_streams - client.active_streams, client.available_streams)
            if room > 0 and (best is None or client.active_streams > best.client.active_streams):
                best = entry
        return best

    def _start_dial(self, key: PoolKey) -> asyncio.Task[HboneClient]:
        task = asyncio.create_task(self._dial(key), name=f"hbone-dial-{key.dst_addr[0]}:{key.dst_addr[1]}")
        self._dials[key] = task
        # A failed dial must not be remembered, and its error must not be reported as never retrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _dial(self, key: PoolKey) -> HboneClient:
        try:
            client = await self._connect(key)
        except BaseException:
            self._dial_failures += 1
            raise
        finally:
            self._dials.pop(key, None)
        if self._closed:
            await client.aclose("pool closed")
            raise HboneConnectionError("the HBONE pool closed while dialling")
        self._handshakes += 1
        entry = _Entry(client, self._clock())
        self._entries.setdefault(key, []).append(entry)
        client.watch(lambda: self._on_change(entry))
        self._schedule_eviction()
        return client

    def _on_change(self, entry: _Entry) -> None:
        if entry.client.active_streams:
            entry.idle_since = None
        elif entry.idle_since is None:
            entry.idle_since = self._clock()
            if self._timer is None:  # a pending timer fires no later than this new deadline
                self._schedule_eviction()

    def _schedule_eviction(self) -> None:
        """Arm one loop timer for the earliest idle deadline (real time; ``evict_idle`` re-checks)."""
        if self._closed:
            return
        idle = [
            e.idle_since for group in self._entries.values() for e in group
            if e.idle_since is not None and not e.client.closed
        ]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if idle:
            delay = max(0.0, min(idle) + self._idle_timeout - self._clock())
            with contextlib.suppress(RuntimeError):  # no running loop: evict_idle() is called directly
                self._timer = asyncio.get_running_loop().call_later(delay + 0.01, self.evict_idle)


def mtls_connector(
    context_for: Callable[[SpiffeId], Awaitable[ssl.SSLContext]],
    *,
    socket_for: Callable[[PoolKey], socket.socket] | None = None,
    settings: HboneSettings = CLIENT_SETTINGS,
) -> Callable[[PoolKey], Awaitable[HboneClient]]:
    """The usual ``connect`` for ``HbonePool``: mTLS with the source identity's certificate
    (``context_for``, e.g. from the SecretManager), the server must present one of
    ``key.dst_identities`` (ztunnel's IdentityVerifier); ``socket_for`` makes the unconnected socket
    (pod netns, SO_MARK, source IP) when the default one will not do."""

    async def connect(key: PoolKey) -> HboneClient:
        expected = sorted(key.dst_identities)
        context = await context_for(key.src_identity)
        return await HboneClient.connect(
            key.dst_addr[0], key.dst_addr[1],
            ssl_context=context,
            verify=lambda der: verify_peer(der, expected=expected),
            settings=settings,
            sock=socket_for(key) if socket_for is not None else None,
        )

    return connect
