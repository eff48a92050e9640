"""HbonePool: reuse, stream limits, idle eviction on a fake clock, and one dial per key under concurrency.

The fake ``connect`` builds real ``HboneClient``s over plaintext socketpairs to in-process servers, so
stream limits come from real SETTINGS frames.
"""

from __future__ import annotations

import asyncio

import pytest

from meshcore.aio.hbone_client import HboneClient
from meshcore.aio.hbone_server import TunnelRequest, serve_hbone
from meshcore.aio.pool import HbonePool, PoolKey, mtls_connector
from meshcore.hbone import HboneConnectionError, HboneSettings, PeerNotTrusted
from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.testing.pairs import hbone_socketpair
from meshcore.tls.contexts import client_context, server_context
from meshcore.tls.verify import verify_peer

SRC = SpiffeId("cluster.local", "default", "sleep")
DST = frozenset({SpiffeId("cluster.local", "default", "httpbin")})
KEY = PoolKey(SRC, DST, ("10.0.0.2", 15008))
OTHER_KEY = PoolKey(SRC, DST, ("10.0.0.3", 15008))


async def hold_open(request: TunnelRequest) -> None:
    """Accept and keep the tunnel until the client finishes it."""
    stream = await request.accept()
    while await stream.receive_some():
        pass
    await stream.send_eof()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Dialer:
    """A fake ``connect``: counts dials, can be gated or made to fail, keeps what it built to clean up."""

    def __init__(self, *, server_settings: HboneSettings | None = None) -> None:
        self.calls: list[PoolKey] = []
        self.gate: asyncio.Event | None = None
        self.fail_next: Exception | None = None
        self.server_settings = server_settings or HboneSettings()
        self.clients: list[HboneClient] = []
        self.servers: list[asyncio.Task[None]] = []

    async def __call__(self, key: PoolKey) -> HboneClient:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        client, server = await hbone_socketpair(hold_open, server_settings=self.server_settings)
        self.clients.append(client)
        self.servers.append(server)
        return client

    async def cleanup(self) -> None:
        for client in self.clients:
            await client.aclose()
        if self.servers:
            await asyncio.wait_for(asyncio.gather(*self.servers, return_exceptions=True), 5)


@pytest.fixture
async def dialer():
    d = Dialer()
    yield d
    await d.cleanup()


async def test_tunnels_for_the_same_key_share_one_connection(dialer):
    pool = HbonePool(dialer)
    first = await pool.open_tunnel(KEY, "10.0.0.2:80")
    second = await pool.open_tunnel(KEY, "10.0.0.2:81")
    stats = pool.stats()
    assert (len(dialer.calls), stats.connections, stats.streams, stats.handshakes) == (1, 1, 2, 1)
    assert first.stream_id != second.stream_id
    await pool.aclose()


async def test_different_keys_never_share_a_connection(dialer):
    pool = HbonePool(dialer)
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    await pool.open_tunnel(OTHER_KEY, "10.0.0.3:80")
    assert dialer.calls == [KEY, OTHER_KEY] and pool.stats().connections == 2
    await pool.aclose()


async def test_a_full_connection_makes_the_pool_dial_another(dialer):
    pool = HbonePool(dialer, max_streams=2)
    for port in range(3):
        await pool.open_tunnel(KEY, f"10.0.0.2:{80 + port}")
    assert len(dialer.calls) == 2
    assert [c.active_streams for c in dialer.clients] == [2, 1]
    await pool.aclose()


async def test_the_peers_smaller_stream_limit_wins_over_max_streams():
    dialer = Dialer(server_settings=HboneSettings(max_concurrent_streams=2))
    try:
        pool = HbonePool(dialer, max_streams=100)
        await pool.open_tunnel(KEY, "10.0.0.2:80")
        await pool.open_tunnel(KEY, "10.0.0.2:81")
        await pool.open_tunnel(KEY, "10.0.0.2:82")
        assert len(dialer.calls) == 2
        await pool.aclose()
    finally:
        await dialer.cleanup()


async def test_a_finished_tunnel_frees_its_slot_for_reuse(dialer):
    pool = HbonePool(dialer, max_streams=1)
    stream = await pool.open_tunnel(KEY, "10.0.0.2:80")
    await stream.aclose()
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    assert len(dialer.calls) == 1
    await pool.aclose()


async def test_idle_connections_are_evicted_after_the_idle_timeout_on_the_injected_clock(dialer):
    clock = FakeClock()
    pool = HbonePool(dialer, idle_timeout=300, clock=clock)
    stream = await pool.open_tunnel(KEY, "10.0.0.2:80")
    clock.now += 1000
    assert pool.evict_idle() == 0  # busy connections are never evicted
    await stream.aclose()  # idle from now on
    clock.now += 299
    assert pool.evict_idle() == 0
    clock.now += 1
    assert pool.evict_idle() == 1
    assert dialer.clients[0].closed and pool.stats().connections == 0 and pool.stats().evictions == 1
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    assert len(dialer.calls) == 2  # a fresh connection after eviction
    await pool.aclose()


async def test_use_before_the_timeout_restarts_the_idle_clock(dialer):
    clock = FakeClock()
    pool = HbonePool(dialer, idle_timeout=300, clock=clock)
    await (await pool.open_tunnel(KEY, "10.0.0.2:80")).aclose()
    clock.now += 200
    await (await pool.open_tunnel(KEY, "10.0.0.2:80")).aclose()
    clock.now += 200
    assert pool.evict_idle() == 0
    clock.now += 100
    assert pool.evict_idle() == 1
    await pool.aclose()


async def test_concurrent_first_use_dials_once(dialer):
    dialer.gate = asyncio.Event()
    pool = HbonePool(dialer)
    opens = [asyncio.create_task(pool.open_tunnel(KEY, f"10.0.0.2:{1000 + i}")) for i in range(20)]
    async with asyncio.timeout(5):
        while not dialer.calls:  # noqa: ASYNC110 (bounded poll)
            await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)  # give every caller the chance to (wrongly) dial too
    dialer.gate.set()
    streams = await asyncio.wait_for(asyncio.gather(*opens), 5)
    assert len(dialer.calls) == 1 and len({s.stream_id for s in streams}) == 20
    await pool.aclose()


async def test_more_waiters_than_one_connection_holds_spill_onto_one_more_dial(dialer):
    dialer.gate = asyncio.Event()
    pool = HbonePool(dialer, max_streams=5)
    opens = [asyncio.create_task(pool.open_tunnel(KEY, "10.0.0.2:80")) for _ in range(8)]
    await asyncio.sleep(0)
    dialer.gate.set()
    await asyncio.wait_for(asyncio.gather(*opens), 5)
    assert len(dialer.calls) == 2
    assert sorted(c.active_streams for c in dialer.clients) == [3, 5]
    await pool.aclose()


async def test_a_failed_dial_fails_every_waiter_and_is_not_cached(dialer):
    dialer.gate = asyncio.Event()
    dialer.fail_next = HboneConnectionError("connection refused")
    pool = HbonePool(dialer)
    opens = [asyncio.create_task(pool.open_tunnel(KEY, "10.0.0.2:80")) for _ in range(5)]
    await asyncio.sleep(0)
    dialer.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*opens, return_exceptions=True), 5)
    assert all(isinstance(r, HboneConnectionError) for r in results)
    assert len(dialer.calls) == 1 and pool.stats().dial_failures == 1
    await pool.open_tunnel(KEY, "10.0.0.2:80")  # the next use dials afresh and works
    assert len(dialer.calls) == 2 and pool.stats().handshakes == 1
    await pool.aclose()


async def test_a_cancelled_first_caller_does_not_cancel_the_dial_for_the_others(dialer):
    dialer.gate = asyncio.Event()
    pool = HbonePool(dialer)
    first = asyncio.create_task(pool.open_tunnel(KEY, "10.0.0.2:80"))
    second = asyncio.create_task(pool.open_tunnel(KEY, "10.0.0.2:80"))
    await asyncio.sleep(0)
    first.cancel()
    dialer.gate.set()
    stream = await asyncio.wait_for(second, 5)
    assert stream.stream_id == 1 and len(dialer.calls) == 1
    await pool.aclose()


async def test_a_closed_connection_is_replaced(dialer):
    pool = HbonePool(dialer)
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    await dialer.clients[0].aclose()
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    assert len(dialer.calls) == 2 and pool.stats().connections == 1
    await pool.aclose()


async def test_a_closed_pool_refuses_new_tunnels(dialer):
    pool = HbonePool(dialer)
    await pool.open_tunnel(KEY, "10.0.0.2:80")
    await pool.aclose()
    assert dialer.clients[0].closed
    with pytest.raises(HboneConnectionError, match="pool is closed"):
        await pool.open_tunnel(KEY, "10.0.0.2:80")


async def test_the_mtls_connector_pools_verified_connections_and_refuses_unexpected_servers():
    ca = FakeCa()
    server_id = SpiffeId("cluster.local", "default", "httpbin")
    server = await serve_hbone(
        "127.0.0.1", 0, server_context(ca.issue(server_id)),
        lambda der: verify_peer(der, trust_domain="cluster.local"), hold_open,
    )
    contexts = {}

    async def context_for(identity: SpiffeId):
        contexts.setdefault(identity, client_context(ca.issue(identity)))
        return contexts[identity]

    pool = HbonePool(mtls_connector(context_for))
    try:
        good = PoolKey(SRC, frozenset({server_id}), ("127.0.0.1", server.port))
        first = await pool.open_tunnel(good, "127.0.0.1:80")
        await pool.open_tunnel(good, "127.0.0.1:81")
        assert first.peer_identity == server_id and pool.stats().handshakes == 1
        impostor = PoolKey(SRC, frozenset({SpiffeId("cluster.local", "default", "reviews")}), good.dst_addr)
        with pytest.raises(PeerNotTrusted):
            await pool.open_tunnel(impostor, "127.0.0.1:80")
        assert pool.stats().dial_failures == 1 and pool.stats().connections == 1
    finally:
        await pool.aclose()
        await server.aclose()
