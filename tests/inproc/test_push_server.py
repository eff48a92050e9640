"""PushServer on a real grpc.aio server (127.0.0.1, insecure), driven by raw delta-ADS client streams."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from istiod_lite.push import PushServer, StreamLimits
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    address_to_proto,
    authorization_to_proto,
    resource_name,
)
from meshcore.proto import discovery_pb2, discovery_pb2_grpc, waypoint_pb2, workload_pb2
from meshcore.testing import builders

WAIT = 5.0


def pod(i: int, ip_last: int | None = None) -> tuple[str, workload_pb2.Address]:
    model = builders.workload(f"pod-{i}", f"10.0.{i // 250}.{ip_last if ip_last is not None else i % 250 + 1}")
    return resource_name(model), address_to_proto(model)


def pods(n: int) -> dict[str, workload_pb2.Address]:
    return dict(pod(i) for i in range(n))


class Proxy:
    """A hand-driven delta-ADS client stream: write requests, read responses from a queue."""

    def __init__(self, target: str, node_id: str, options: list[tuple[str, int]] | None = None) -> None:
        self.node_id = node_id
        self.paused = asyncio.Event()  # clear it to stop reading responses off the wire
        self.paused.set()
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._call = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel).DeltaAggregatedResources()
        self._responses: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | BaseException | None] = (
            asyncio.Queue()
        )
        self._pump = asyncio.create_task(self._read())
        self._sent_node = False

    async def _read(self) -> None:
        try:
            while True:
                await self.paused.wait()
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                await self._responses.put(response)
            await self._responses.put(None)  # stream ended with OK
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            await self._responses.put(exc)

    async def send(
        self,
        type_url: str = ADDRESS_TYPE_URL,
        *,
        sub: Iterable[str] = (),
        unsub: Iterable[str] = (),
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        nack: str | None = None,
        node: bool | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(sub),
            resource_names_unsubscribe=list(unsub),
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        if node if node is not None else not self._sent_node:
            request.node.id = self.node_id
            request.node.metadata.update({"NODE_NAME": "node-1"})
            self._sent_node = True
        if nack is not None:
            request.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request.error_detail.message = nack
        await self._call.write(request)

    async def recv(self) -> discovery_pb2.DeltaDiscoveryResponse:
        item = await asyncio.wait_for(self._responses.get(), WAIT)
        if not isinstance(item, discovery_pb2.DeltaDiscoveryResponse):
            raise AssertionError(f"expected a response, stream ended with {item!r}")
        return item

    async def recv_ack(self) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await self.recv()
        await self.send(response.type_url, nonce=response.nonce)
        return response

    async def ended(self) -> BaseException | None:
        """How the stream ended: None for OK, else the error."""
        item = await asyncio.wait_for(self._responses.get(), WAIT)
        assert not isinstance(item, discovery_pb2.DeltaDiscoveryResponse), f"unexpected response {item}"
        return item

    def nothing_queued(self) -> bool:
        return self._responses.empty()

    async def close(self) -> None:
        self._call.cancel()
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        await self._channel.close()


@dataclass
class Harness:
    server: PushServer
    registry: CollectorRegistry
    logs: LogCapture
    target: str
    proxies: list[Proxy]

    def proxy(self, name: str) -> Proxy:
        p = Proxy(self.target, f"ztunnel~10.0.0.1~{name}.istio-system~istio-system.svc.cluster.local")
        self.proxies.append(p)
        return p

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def synced(self, streams: int = 0) -> None:
        async with asyncio.timeout(WAIT):
            await self.server.wait_synced(streams=streams)


L7_TYPE_URL = "type.googleapis.com/ambientmesh.waypoint.v1.L7Authorization"


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    registry = CollectorRegistry()
    logs = LogCapture()
    server = PushServer(
        registry,
        debounce=0.05,
        logger=structlog.wrap_logger(structlog.ReturnLogger(), processors=[logs]),
        **getattr(request, "param", {}),
    )
    grpc_server = grpc.aio.server()
    discovery_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    h = Harness(server, registry, logs, f"127.0.0.1:{port}", [])
    try:
        yield h
    finally:
        for p in h.proxies:
            await p.close()
        await server.close()
        await grpc_server.stop(None)


async def connect(h: Harness, name: str, **kw: object) -> tuple[Proxy, discovery_pb2.DeltaDiscoveryResponse]:
    """Open a wildcard Address subscription, receive and ACK the first response."""
    p = h.proxy(name)
    await p.send(**kw)  # type: ignore[arg-type]
    return p, await p.recv_ack()


async def test_full_state_on_connect(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(3))
    authz = builders.policy("allow-a")
    harness.server.set_resources(AUTHORIZATION_TYPE_URL, {resource_name(authz): authorization_to_proto(authz)})
    p = harness.proxy("zt-1")
    await p.send(ADDRESS_TYPE_URL)
    await p.send(AUTHORIZATION_TYPE_URL)
    addresses = await p.recv_ack()
    policies = await p.recv_ack()

    assert addresses.type_url == ADDRESS_TYPE_URL and addresses.nonce
    assert sorted(r.name for r in addresses.resources) == sorted(pods(3))
    for r in addresses.resources:
        assert r.resource.type_url == ADDRESS_TYPE_URL
        decoded = workload_pb2.Address()
        assert r.resource.Unpack(decoded) and decoded == pods(3)[r.name]
        assert r.version == hashlib.blake2b(r.resource.value, digest_size=8).hexdigest()
    assert addresses.system_version_info
    assert policies.type_url == AUTHORIZATION_TYPE_URL
    assert [r.name for r in policies.resources] == ["default/allow-a"]
    assert policies.nonce != addresses.nonce
    await harness.synced(streams=1)
    assert harness.metric("pilot_xds") == 1


async def test_one_change_is_pushed_alone_to_every_proxy(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(20))
    a, _ = await connect(harness, "zt-a")
    b, _ = await connect(harness, "zt-b")
    await harness.synced(streams=2)
    pushed_before = harness.metric("istiod_lite_xds_resources_pushed_total", type="wds")

    name, _ = pod(7)
    _, changed = pod(7, ip_last=200)
    harness.server.set_resources(ADDRESS_TYPE_URL, {name: changed})

    for proxy in (a, b):
        response = await proxy.recv_ack()
        assert [r.name for r in response.resources] == [name]
        assert not response.removed_resources
    await harness.synced()
    assert harness.metric("istiod_lite_xds_resources_pushed_total", type="wds") - pushed_before == 2
    assert harness.metric("pilot_xds_push_time_count", type="wds") == 2
    assert a.nothing_queued() and b.nothing_queued()


async def test_identical_content_is_not_pushed(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(2))
    p, _ = await connect(harness, "zt-1")
    pushes = harness.metric("pilot_xds_pushes_total", type="wds")
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(2))
    harness.server.set_resources(ADDRESS_TYPE_URL, {}, removed=["no-such-workload"])
    await harness.synced()
    assert harness.metric("pilot_xds_pushes_total", type="wds") == pushes
    assert p.nothing_queued()


async def test_a_burst_of_changes_is_pushed_once(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(50))
    p, _ = await connect(harness, "zt-1")
    await harness.synced(streams=1)
    pushes = harness.metric("pilot_xds_pushes_total", type="wds")

    for i in range(50):
        name, changed = pod(i, ip_last=251 - i % 5)
        harness.server.set_resources(ADDRESS_TYPE_URL, {name: changed})
        await asyncio.sleep(0)  # let the loop run between changes, as registry diffs would

    response = await p.recv_ack()
    assert len(response.resources) == 50
    await harness.synced()
    assert harness.metric("pilot_xds_pushes_total", type="wds") - pushes == 1
    assert p.nothing_queued()


async def test_removal_is_pushed(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(3))
    p, _ = await connect(harness, "zt-1")
    gone, _ = pod(1)
    harness.server.set_resources(ADDRESS_TYPE_URL, {}, removed=[gone])
    response = await p.recv_ack()
    assert list(response.removed_resources) == [gone] and not response.resources
    assert gone not in harness.server.resource_versions(ADDRESS_TYPE_URL)


async def test_nack_is_recorded_logged_and_later_changes_still_arrive(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(2))
    p = harness.proxy("zt-1")
    await p.send()
    first = await p.recv()
    await p.send(nonce=first.nonce, nack="workload Kubernetes//Pod/default/pod-0: bad address")
    await harness.synced()

    assert harness.metric("pilot_total_xds_rejects_total", type="wds") == 1
    [warning] = [e for e in harness.logs.entries if e["event"] == "proxy rejected xds response"]
    assert warning["log_level"] == "warning"
    assert warning["node_id"] == p.node_id
    assert warning["type_url"] == ADDRESS_TYPE_URL
    assert warning["reason"] == "workload Kubernetes//Pod/default/pod-0: bad address"
    [nack] = harness.server.syncz()[0]["types"][ADDRESS_TYPE_URL]["nacks"]
    assert (nack["nonce"], nack["message"]) == (first.nonce, warning["reason"])

    name, changed = pod(1, ip_last=99)
    harness.server.set_resources(ADDRESS_TYPE_URL, {name: changed})
    later = await p.recv_ack()
    assert [r.name for r in later.resources] == [name]
    await harness.synced()
    assert harness.server.syncz()[0]["types"][ADDRESS_TYPE_URL]["status"] == "SYNCED"


async def test_reconnect_with_initial_versions_gets_only_what_changed(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(10))
    first, response = await connect(harness, "zt-1")
    held = {r.name: r.version for r in response.resources}
    await first.close()

    changed_name, changed = pod(3, ip_last=200)
    removed_name, _ = pod(4)
    added_name, added = pod(42)
    harness.server.set_resources(ADDRESS_TYPE_URL, {changed_name: changed, added_name: added}, removed=[removed_name])

    again, response = await connect(harness, "zt-1", initial=held)
    assert sorted(r.name for r in response.resources) == sorted([changed_name, added_name])
    assert list(response.removed_resources) == [removed_name]


async def test_explicit_subscriptions_get_only_their_names(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(5))
    wanted, _ = pod(2)
    p = harness.proxy("waypoint-1")
    await p.send(sub=["*"], unsub=["*"])  # ztunnel's on-demand opening
    opening = await p.recv_ack()
    assert not opening.resources and not opening.removed_resources
    await p.send(sub=[wanted, "default/missing.example"])
    response = await p.recv_ack()
    assert [r.name for r in response.resources] == [wanted]
    assert list(response.removed_resources) == ["default/missing.example"]

    other, other_changed = pod(3, ip_last=77)
    mine, mine_changed = pod(2, ip_last=78)
    harness.server.set_resources(ADDRESS_TYPE_URL, {other: other_changed, mine: mine_changed})
    pushed = await p.recv_ack()
    assert [r.name for r in pushed.resources] == [mine]


async def test_a_malformed_request_ends_that_stream_only(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(3))
    good, _ = await connect(harness, "zt-good")
    bad, _ = await connect(harness, "zt-bad")
    await bad.send(nonce="never-sent-42")

    error = await bad.ended()
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "never sent" in (error.details() or "")
    assert harness.metric("istiod_lite_xds_invalid_requests_total", reason="UnknownNonceError") == 1

    name, changed = pod(0, ip_last=123)
    harness.server.set_resources(ADDRESS_TYPE_URL, {name: changed})
    assert [r.name for r in (await good.recv_ack()).resources] == [name]
    await harness.synced()
    assert harness.server.connected == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node": False}, "node.id"),
        ({"type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}, "not served"),
    ],
    ids=["a first request without node ends the stream", "an unknown type url ends the stream"],
)
async def test_bad_first_requests_end_the_stream(harness: Harness, kwargs: dict, message: str) -> None:
    p = harness.proxy("zt-1")
    await p.send(**kwargs)
    error = await p.ended()
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (error.details() or "")


async def test_syncz_describes_each_proxy(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(4))
    p, response = await connect(harness, "zt-1")
    await harness.synced(streams=1)

    [entry] = harness.server.syncz()
    assert entry["node_id"] == p.node_id
    assert entry["metadata"] == {"NODE_NAME": "node-1"}
    assert entry["connected_since"].endswith("+00:00")
    view = entry["types"][ADDRESS_TYPE_URL]
    assert view["wildcard"] is True and view["names"] == []
    assert view["resources_sent"] == 4 and view["responses_sent"] == 1
    assert view["last_nonce_sent"] == view["last_acked_nonce"] == response.nonce
    assert view["last_acked_version"] == response.system_version_info
    assert view["status"] == "SYNCED" and view["nacks"] == []
    assert AUTHORIZATION_TYPE_URL not in entry["types"]


async def test_close_ends_streams_cleanly(harness: Harness) -> None:
    p, _ = await connect(harness, "zt-1")
    await harness.server.close()
    assert await p.ended() is None
    assert harness.server.connected == 0
    assert harness.metric("pilot_xds") == 0


def big_address(i: int, size: int) -> workload_pb2.Address:
    address = workload_pb2.Address()
    address.workload.uid = "Kubernetes//Pod/default/big"
    address.workload.name = "big"
    address.workload.namespace = "default"
    address.workload.canonical_name = f"{i}-" + "x" * size
    return address


async def test_a_slow_proxy_does_not_delay_others_and_gets_coalesced_changes(harness: Harness) -> None:
    size = 1 << 20
    harness.server.set_resources(ADDRESS_TYPE_URL, {"big": big_address(0, size)})
    options = [("grpc.max_receive_message_length", 8 * size)]
    slow = Proxy(harness.target, "ztunnel~10.0.0.9~slow.istio-system~istio-system.svc.cluster.local", options)
    harness.proxies.append(slow)
    slow.paused.clear()  # reads nothing from the wire until told
    await slow.send()
    fast = Proxy(harness.target, "ztunnel~10.0.0.8~fast.istio-system~istio-system.svc.cluster.local", options)
    harness.proxies.append(fast)
    await fast.send()
    await fast.recv_ack()

    changes = 20
    for i in range(1, changes + 1):
        harness.server.set_resources(ADDRESS_TYPE_URL, {"big": big_address(i, size)})
        response = await fast.recv_ack()  # never waits for the slow proxy
        assert _last_value([response]).workload.canonical_name.startswith(f"{i}-")
    slow.paused.set()
    received = [await slow.recv_ack()]
    latest = big_address(changes, size)
    while _last_value(received) != latest:
        received.append(await slow.recv_ack())
    assert len(received) < changes  # pending changes coalesced while it was slow


def _last_value(received: list[discovery_pb2.DeltaDiscoveryResponse]) -> workload_pb2.Address:
    address = workload_pb2.Address()
    received[-1].resources[0].resource.Unpack(address)
    return address


@pytest.mark.parametrize(
    "harness", [{"type_urls": (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_TYPE_URL), "metric_types": {L7_TYPE_URL: "l7"}}],
    indirect=True,
    ids=["a server constructed with a third type url"],
)
async def test_a_type_url_passed_to_the_constructor_is_served(harness: Harness) -> None:
    policy = waypoint_pb2.L7Authorization(name="deny-admin", namespace="default")
    harness.server.set_resources(L7_TYPE_URL, {"default/deny-admin": policy})
    p = harness.proxy("waypoint-1")
    await p.send(L7_TYPE_URL)
    response = await p.recv_ack()

    assert response.type_url == L7_TYPE_URL
    [resource] = response.resources
    decoded = waypoint_pb2.L7Authorization()
    assert resource.resource.Unpack(decoded) and decoded == policy
    assert harness.metric("pilot_xds_pushes_total", type="l7") == 1


async def test_the_default_server_does_not_serve_other_type_urls(harness: Harness) -> None:
    with pytest.raises(ValueError, match="serves only"):
        harness.server.set_resources(L7_TYPE_URL, {"default/x": waypoint_pb2.L7Authorization(name="x")})


@pytest.mark.parametrize(
    "harness", [{"limits": StreamLimits(max_response_bytes=2000)}], indirect=True, ids=["a 2000 byte reply budget"]
)
async def test_a_reply_larger_than_the_budget_is_sent_in_several_responses(harness: Harness) -> None:
    everything = pods(40)
    harness.server.set_resources(ADDRESS_TYPE_URL, everything)
    p = harness.proxy("zt-1")
    await p.send(sub=[*everything, *(f"default/missing-{i}.example" for i in range(30))])
    received: dict[str, workload_pb2.Address] = {}
    removed: set[str] = set()
    responses = 0
    while len(received) < len(everything) or len(removed) < 30:
        response = await p.recv_ack()
        responses += 1
        entries = len(response.resources) + len(response.removed_resources)
        size = sum(r.ByteSize() for r in response.resources) + sum(len(n) for n in response.removed_resources)
        assert entries == 1 or size <= 2000, f"response {responses} carries {size} bytes in {entries} entries"
        for r in response.resources:
            assert r.name not in received
            received[r.name] = workload_pb2.Address()
            r.resource.Unpack(received[r.name])
        removed.update(response.removed_resources)
        assert responses <= 100, "the split never finishes"
    assert received == everything
    assert removed == {f"default/missing-{i}.example" for i in range(30)}
    assert responses > 1
    await harness.synced(streams=1)
    assert p.nothing_queued()


@pytest.mark.parametrize(
    "harness", [{"limits": StreamLimits(max_response_bytes=10)}], indirect=True, ids=["a budget below one resource"]
)
async def test_a_resource_larger_than_the_budget_is_still_sent_alone(harness: Harness) -> None:
    harness.server.set_resources(ADDRESS_TYPE_URL, pods(3))
    p = harness.proxy("zt-1")
    await p.send()
    names = [[r.name for r in (await p.recv_ack()).resources] for _ in range(3)]
    assert sorted(n for [n] in names) == sorted(pods(3))
