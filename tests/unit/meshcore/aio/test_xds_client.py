"""XdsClient against FakeXdsServer over loopback: delivery, NACK of a bad resource alone, reconnects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import APPLY_STEP, XdsClient
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.proto import discovery_pb2_grpc, workload_pb2
from meshcore.state import ProxyState, Rejection
from meshcore.testing import builders
from meshcore.testing.fake_xds import FakeXdsServer, RecordedRequest
from meshcore.xds import Backoff

NODE_ID = "ztunnel~127.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
WEB = builders.workload("web", "10.0.0.1")
DB = builders.workload("db", "10.0.0.2")
POLICY = builders.policy("allow-nothing")
LEGACY = workload_pb2.Address(
    workload=workload_pb2.Workload(uid="legacy", name="legacy", namespace="default", tunnel_protocol=2)
).SerializeToString()


@dataclass
class Mesh:
    server: FakeXdsServer
    client: XdsClient
    cell: StateCell[ProxyState]
    rejections: list[tuple[str, list[Rejection]]] = field(default_factory=list)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async with FakeXdsServer() as server:
        cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        rejections: list[tuple[str, list[Rejection]]] = []
        client = XdsClient(
            server.address,
            None,
            NODE_ID,
            {"NAME": "ztunnel-x", "NODE_NAME": "node-1"},
            cell,
            on_rejections=lambda t, r: rejections.append((t, r)),
            authorization="Bearer test-token",
            cluster_id="Kubernetes",
            backoff=Backoff(initial=0.005, maximum=0.05),
            rng=random.Random(1),
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(client.run())
            try:
                yield Mesh(server, client, cell, rejections)
            finally:
                client.close()
                async with asyncio.timeout(5):
                    await task


def is_ack(nonce: str) -> object:
    return lambda r: r.request.response_nonce == nonce and not r.request.HasField("error_detail")


async def test_client_receives_a_pushed_workload_within_a_second(mesh: Mesh) -> None:
    async with asyncio.timeout(1):
        await mesh.client.ready.wait()
        [nonce] = await mesh.server.push(ADDRESS_TYPE_URL, {WEB.uid: WEB})
        state = await mesh.cell.wait_for(lambda s: s.find_workload(WEB.uid) is not None, timeout=1)
        await mesh.server.wait_for_request(is_ack(nonce), timeout=1)  # type: ignore[arg-type]
    assert state.find_workload_by_addr("10.0.0.1") == WEB


async def test_initial_requests_carry_node_wildcard_and_call_metadata(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    for type_url in (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL):
        first = await mesh.server.wait_for_request(lambda r, t=type_url: r.request.type_url == t)
        assert first.request.node.id == NODE_ID
        assert list(first.request.resource_names_subscribe) == []
    md = mesh.server.stream_metadata[1]
    assert md["authorization"] == "Bearer test-token" and md["clusterid"] == "Kubernetes"


async def test_ready_only_after_every_type_had_its_first_response() -> None:
    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    async with FakeXdsServer() as server:
        client = XdsClient(server.address, None, NODE_ID, {}, cell, backoff=Backoff(initial=0.005, maximum=0.05))
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(client.run())
            try:
                await asyncio.wait_for(client.ready.wait(), 2)
                assert client.protocol.acked_types == {ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL}
            finally:
                client.close()
            await asyncio.wait_for(task, 5)


async def test_bad_resource_is_nacked_alone_while_the_others_apply(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    [nonce] = await mesh.server.push(ADDRESS_TYPE_URL, {WEB.uid: WEB, "legacy": LEGACY, DB.uid: DB})
    nack = await mesh.server.wait_for_request(lambda r: r.request.response_nonce == nonce)
    assert nack.request.HasField("error_detail")
    message = nack.request.error_detail.message
    assert "legacy" in message and "unsupported tunnel protocol" in message
    assert WEB.uid not in message and DB.uid not in message
    state = mesh.cell.current()
    assert state.find_workload(WEB.uid) == WEB and state.find_workload(DB.uid) == DB
    assert state.find_workload("legacy") is None
    assert [(t, [r.name for r in rs]) for t, rs in mesh.rejections] == [(ADDRESS_TYPE_URL, ["legacy"])]
    # the NACKed name is not reported as held, the good ones are
    assert set(mesh.client.protocol.versions(ADDRESS_TYPE_URL)) == {WEB.uid, DB.uid}


async def test_policies_and_removals_flow_through(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    await mesh.server.push(AUTHORIZATION_TYPE_URL, {POLICY.key: POLICY})
    await mesh.server.push(ADDRESS_TYPE_URL, {WEB.uid: WEB})
    await mesh.cell.wait_for(lambda s: POLICY.key in s.policies and WEB.uid in s.workloads, timeout=2)
    await mesh.server.push(ADDRESS_TYPE_URL, {}, removed=[WEB.uid])
    state = await mesh.cell.wait_for(lambda s: WEB.uid not in s.workloads, timeout=2)
    assert state.policies_for(DB) == (POLICY,)


async def test_reconnect_resends_versions_and_keeps_state(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    [nonce] = await mesh.server.push(ADDRESS_TYPE_URL, {WEB.uid: WEB})
    await mesh.server.wait_for_request(is_ack(nonce))  # type: ignore[arg-type]
    version_held = mesh.client.protocol.versions(ADDRESS_TYPE_URL)[WEB.uid]
    before = mesh.cell.current()

    assert mesh.server.kill_streams() == 1

    def reconnected_with_versions(r: RecordedRequest) -> bool:
        return r.stream == 2 and r.request.type_url == ADDRESS_TYPE_URL and not r.request.response_nonce

    again = await mesh.server.wait_for_request(reconnected_with_versions)
    assert dict(again.request.initial_resource_versions) == {WEB.uid: version_held}
    assert again.request.node.id == NODE_ID
    # the server had nothing new: its (empty) answer is ACKed and the snapshot is not even republished
    await mesh.server.wait_for_request(
        lambda r: r.stream == 2 and r.request.type_url == ADDRESS_TYPE_URL and r.request.response_nonce != ""
    )
    assert mesh.cell.current() is before and before.find_workload(WEB.uid) == WEB
    # and the new stream carries later pushes
    await mesh.server.push(ADDRESS_TYPE_URL, {DB.uid: DB})
    await mesh.cell.wait_for(lambda s: DB.uid in s.workloads and WEB.uid in s.workloads, timeout=2)
    assert mesh.client.connects == 2 and "UNAVAILABLE" in (mesh.client.last_disconnect_reason or "")


async def test_reconnect_applies_what_changed_while_disconnected(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    await mesh.server.push(ADDRESS_TYPE_URL, {WEB.uid: WEB})
    await mesh.cell.wait_for(lambda s: WEB.uid in s.workloads, timeout=2)
    mesh.server.kill_streams()
    await mesh.server.push(ADDRESS_TYPE_URL, {DB.uid: DB}, removed=[WEB.uid])
    state = await mesh.cell.wait_for(lambda s: WEB.uid not in s.workloads and DB.uid in s.workloads, timeout=2)
    assert state.find_workload_by_addr("10.0.0.1") is None
    assert mesh.client.connects == 2


async def test_close_stops_run_promptly_even_while_backing_off() -> None:
    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    # nothing listens on this port: the client keeps failing and backing off
    client = XdsClient("127.0.0.1:1", None, NODE_ID, {}, cell, backoff=Backoff(initial=5.0, maximum=5.0))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        async with asyncio.timeout(2):  # poll until the first attempt failed and the 5 s backoff began
            while client.last_disconnect_reason is None:  # noqa: ASYNC110 (bounded poll)
                await asyncio.sleep(0.005)
        client.close()
        await asyncio.wait_for(task, 1)
    assert not client.ready.is_set()


async def test_the_event_loop_keeps_running_while_a_big_push_is_applied(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    big = {w.uid: w for w in (builders.workload(f"w{i}", f"10.1.{i >> 8}.{i & 255}") for i in range(2000))}
    ticks_while_applying = 0
    done = asyncio.Event()

    async def ticker() -> None:  # runs whenever the loop gets a turn; counts turns taken mid-apply
        nonlocal ticks_while_applying
        while not done.is_set():
            await asyncio.sleep(0)
            if ADDRESS_TYPE_URL in mesh.client.protocol.unanswered:
                ticks_while_applying += 1

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        [nonce] = await mesh.server.push(ADDRESS_TYPE_URL, big)
        state = await mesh.cell.wait_for(lambda s: len(s.workloads) == 2000, timeout=10)
        await mesh.server.wait_for_request(is_ack(nonce), timeout=5)  # type: ignore[arg-type]
        done.set()
    assert state.find_workload_by_addr("10.1.7.207") == big["Kubernetes//Pod/default/w1999"]
    assert ticks_while_applying >= max(1, 2000 // APPLY_STEP - 1), "the apply must yield to the loop between steps"


async def test_close_during_a_big_apply_stops_it_without_publishing(mesh: Mesh) -> None:
    await asyncio.wait_for(mesh.client.ready.wait(), 2)
    before = mesh.cell.current()
    big = {w.uid: w for w in (builders.workload(f"w{i}", f"10.2.{i >> 8}.{i & 255}") for i in range(3000))}
    await mesh.server.push(ADDRESS_TYPE_URL, big)
    async with asyncio.timeout(5):  # poll until the client is mid-apply (it yields between steps)
        while ADDRESS_TYPE_URL not in mesh.client.protocol.unanswered:  # noqa: ASYNC110 (bounded poll)
            await asyncio.sleep(0)
    mesh.client.close()
    async with asyncio.timeout(2):
        while mesh.client.connected:  # noqa: ASYNC110 (bounded poll: run() ends once the stream is closed)
            await asyncio.sleep(0.005)
    assert mesh.cell.current() is before


async def test_a_credentials_function_is_asked_again_at_each_reconnect() -> None:
    """A renewed client certificate (or root) is used from the next connection attempt on: the first
    credentials trust the wrong root, so the handshake fails; the client reconnects with the next ones."""
    from meshcore.testing.fake_ca import FakeCa
    from meshcore.tls.contexts import channel_credentials, channel_options

    ca, wrong = FakeCa(), FakeCa()
    serving = ca.issue_with_sans([])  # a leaf for DNS no-uri-san.invalid
    fake = FakeXdsServer()
    server = grpc.aio.server()
    discovery_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(serving.key_pem.encode(), "".join(serving.chain_pem).encode())]),
    )
    await server.start()
    roots = [wrong.roots_pem, ca.roots_pem]
    calls: list[str] = []

    def credentials() -> grpc.ChannelCredentials:
        calls.append(roots[min(len(calls), 1)])
        return channel_credentials(calls[-1])

    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    client = XdsClient(f"127.0.0.1:{port}", credentials, NODE_ID, {}, cell,
                       channel_options=channel_options("no-uri-san.invalid"),
                       backoff=Backoff(initial=0.005, maximum=0.05), rng=random.Random(1))
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(client.run())
            try:
                await fake.push(ADDRESS_TYPE_URL, {WEB.uid: WEB})
                await fake.push(AUTHORIZATION_TYPE_URL, {})
                await asyncio.wait_for(client.ready.wait(), 10)
            finally:
                client.close()
    finally:
        await server.stop(None)
    assert calls[0] == wrong.roots_pem and calls[-1] == ca.roots_pem
