"""In-memory HBONE pairs for tests: sans-IO client/server joined by a loop that moves bytes, and an
asyncio client/server pair over a plaintext socketpair (no TLS, for pool and shell tests).

``transfer(a, b)`` moves bytes both ways until both sides are quiet and returns each side's events,
like h11's ConnectionPair and aioquic's ``transfer``. Nothing here acknowledges data on its own: flow
control stays visible to the test. Test-only: never imported by production code.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from meshcore.aio.hbone_client import HboneClient
from meshcore.aio.hbone_server import HboneServerCounters, OnTunnel, serve_hbone_connection
from meshcore.hbone import (
    CLIENT_SETTINGS,
    SERVER_SETTINGS,
    DataReceived,
    HboneClientConn,
    HboneEvent,
    HboneServerConn,
    HboneSettings,
    TunnelAccepted,
    TunnelRequested,
    WindowOpened,
)
from meshcore.identity import SpiffeId

AnyConn = HboneClientConn | HboneServerConn


def transfer(a: AnyConn, b: AnyConn, *, max_rounds: int = 10_000) -> tuple[list[HboneEvent], list[HboneEvent]]:
    """Deliver queued bytes a->b and b->a until neither has more; returns (events of a, events of b)."""
    events_a: list[HboneEvent] = []
    events_b: list[HboneEvent] = []
    for _ in range(max_rounds):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return events_a, events_b
        if out_a:
            events_b += b.receive_data(out_a)
        if out_b:
            events_a += a.receive_data(out_b)
    raise AssertionError(f"the pair was still exchanging bytes after {max_rounds} rounds")


def hbone_pair(
    client_settings: HboneSettings = CLIENT_SETTINGS,
    server_settings: HboneSettings = SERVER_SETTINGS,
    *,
    now: float = 0.0,
) -> tuple[HboneClientConn, HboneServerConn]:
    """A client and a server that have exchanged prefaces and SETTINGS (and their ACKs)."""
    client = HboneClientConn(client_settings, now=now)
    server = HboneServerConn(server_settings, now=now)
    client_events, server_events = transfer(client, server)
    # The only thing the handshake may report is the initial window growth.
    unexpected = [e for e in client_events + server_events if e != WindowOpened(0)]
    assert not unexpected, unexpected
    return client, server


def open_accepted(
    client: HboneClientConn,
    server: HboneServerConn,
    authority: str = "10.0.0.2:8080",
    headers: Iterable[tuple[str, str]] = (),
) -> int:
    """Open a tunnel and have the server accept it; returns the stream id."""
    stream_id = client.open_tunnel(authority, headers)
    _, server_events = transfer(client, server)
    assert any(isinstance(e, TunnelRequested) and e.stream_id == stream_id for e in server_events), server_events
    server.accept(stream_id)
    client_events, _ = transfer(client, server)
    assert any(isinstance(e, TunnelAccepted) and e.stream_id == stream_id for e in client_events), client_events
    return stream_id


def received_bytes(events: Iterable[HboneEvent], stream_id: int) -> bytes:
    """The tunnel bytes carried by ``DataReceived`` events of ``stream_id``, joined."""
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id)


# --- asyncio pair over a socketpair (plaintext HTTP/2; the TLS part is tested separately) -----------

TEST_CLIENT_ID = SpiffeId("cluster.local", "default", "client")
TEST_SERVER_ID = SpiffeId("cluster.local", "default", "server")


async def hbone_socketpair(
    on_tunnel: OnTunnel,
    *,
    client_settings: HboneSettings = CLIENT_SETTINGS,
    server_settings: HboneSettings = SERVER_SETTINGS,
    server_counters: HboneServerCounters | None = None,
) -> tuple[HboneClient, asyncio.Task[None]]:
    """An ``HboneClient`` talking plaintext HTTP/2 to an HBONE server task over ``socket.socketpair``.

    Returns ``(client, server_task)``; ``await client.aclose()`` and await the task when done.
    """
    left, right = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=right)
    server_task = asyncio.create_task(
        serve_hbone_connection(
            server_reader,
            server_writer,
            peer_identity=TEST_CLIENT_ID,
            on_tunnel=on_tunnel,
            counters=server_counters if server_counters is not None else HboneServerCounters(),
            settings=server_settings,
        )
    )
    client_reader, client_writer = await asyncio.open_connection(sock=left)
    client = HboneClient.from_streams(
        client_reader, client_writer, peer_identity=TEST_SERVER_ID, settings=client_settings
    )
    return client, server_task
