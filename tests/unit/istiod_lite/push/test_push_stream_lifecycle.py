"""Every delta-ADS stream is unregistered however grpc.aio ends it (regression: streams left registered).

grpc.aio drives a stream-stream handler written as an async generator from its own task: ``async for
response in handler(...): await send(response)``. When the peer goes away that task is cancelled; if it
was inside ``send`` the generator is never resumed (its ``finally`` waits for garbage collection), and a
cancel can also land while the generator is already cleaning up. These tests drive ``PushServer`` the
same way, with ``RpcContext`` standing in for grpc's ``ServicerContext`` (done callbacks run when the
RPC's task ends, as grpc's ``_add_callback_handler`` does), so each interleaving is reproduced exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from istiod_lite.push import PushServer
from meshcore.model.convert import ADDRESS_TYPE_URL, address_to_proto, resource_name
from meshcore.proto import discovery_pb2
from meshcore.testing import builders

WAIT = 5.0
_END = object()


class RpcContext:
    """The parts of ``grpc.aio.ServicerContext`` PushServer uses, with grpc's semantics."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.AbortError(f"{code}: {details}")


class Requests:
    """The request iterator grpc hands the handler: fed by the test; ``gone()`` ends it as a dead peer does."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def send(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._queue.put_nowait(request)

    def gone(self) -> None:
        self._queue.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (item := await self._queue.get()) is not _END:
            assert isinstance(item, discovery_pb2.DeltaDiscoveryRequest)
            yield item
        raise ConnectionResetError("peer gone")


class Rpc:
    """One RPC run the way grpc.aio runs it; keeps the handler's generator referenced, as grpc's frames may."""

    def __init__(self, server: PushServer, send: Callable[[discovery_pb2.DeltaDiscoveryResponse], Awaitable[None]]):
        self.context = RpcContext()
        self.requests = Requests()
        self.handler = server.DeltaAggregatedResources(self.requests, self.context)  # type: ignore[arg-type]
        self.task = asyncio.create_task(self._run(send))
        self.task.add_done_callback(self._done)

    async def _run(self, send: Callable[[discovery_pb2.DeltaDiscoveryResponse], Awaitable[None]]) -> None:
        async for response in self.handler:
            await send(response)

    def _done(self, _: asyncio.Task[None]) -> None:
        for callback in self.context.callbacks:
            callback(self.context)

    async def cancelled(self) -> None:
        """Cancel the RPC's task (the peer went away) and wait until it has ended."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def subscribe() -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL)
    request.node.id = "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local"
    return request


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


@pytest.fixture
async def server(registry: CollectorRegistry, logs: LogCapture) -> AsyncIterator[PushServer]:
    logger = structlog.wrap_logger(structlog.ReturnLogger(), processors=[logs])
    server = PushServer(registry, debounce=0.01, close_grace=WAIT, logger=logger)
    workload = builders.workload("pod-0", "10.0.0.1")
    server.set_resources(ADDRESS_TYPE_URL, {resource_name(workload): address_to_proto(workload)})
    yield server
    await server.close()


def assert_unregistered(server: PushServer, registry: CollectorRegistry) -> None:
    assert server.connected == 0
    assert server.syncz() == []
    assert registry.get_sample_value("pilot_xds") == 0


async def test_a_stream_cancelled_while_its_response_is_written_is_unregistered(server, registry) -> None:
    writing = asyncio.Event()
    never = asyncio.Event()

    async def stuck_send(_: discovery_pb2.DeltaDiscoveryResponse) -> None:
        writing.set()
        await never.wait()  # flow control that never opens: the generator stays suspended at its yield

    rpc = Rpc(server, stuck_send)
    rpc.requests.send(subscribe())
    await asyncio.wait_for(writing.wait(), WAIT)
    assert server.connected == 1

    await rpc.cancelled()

    assert_unregistered(server, registry)
    assert rpc.handler.ag_frame is not None  # the generator was never resumed, yet the stream is gone


@pytest.mark.parametrize("steps", range(12), ids=lambda k: f"a cancel {k} loop steps after the peer left")
async def test_a_cancel_landing_while_the_stream_ends_still_unregisters_it(server, registry, steps: int) -> None:
    sent = asyncio.Event()

    async def send(_: discovery_pb2.DeltaDiscoveryResponse) -> None:
        sent.set()

    rpc = Rpc(server, send)
    rpc.requests.send(subscribe())
    await asyncio.wait_for(sent.wait(), WAIT)

    # grpc reports a dead peer twice: the request iterator fails, and the RPC's task is cancelled. Which
    # the loop handles first, and how far the handler got in between, varies; try every step.
    rpc.requests.gone()
    for _ in range(steps):
        await asyncio.sleep(0)  # one loop iteration: a scheduling step, not a wait for readiness
    await rpc.cancelled()

    assert_unregistered(server, registry)


async def test_a_stream_whose_peer_left_ends_and_is_unregistered(server, registry) -> None:
    sent = asyncio.Event()

    async def send(_: discovery_pb2.DeltaDiscoveryResponse) -> None:
        sent.set()

    rpc = Rpc(server, send)
    rpc.requests.send(subscribe())
    await asyncio.wait_for(sent.wait(), WAIT)
    rpc.requests.gone()
    await asyncio.wait_for(rpc.task, WAIT)  # ends by itself, with OK

    assert_unregistered(server, registry)


async def test_close_after_streams_were_cancelled_finds_none_open(server, registry, logs) -> None:
    writing = asyncio.Event()
    never = asyncio.Event()

    async def stuck_send(_: discovery_pb2.DeltaDiscoveryResponse) -> None:
        writing.set()
        await never.wait()

    rpcs = [Rpc(server, stuck_send) for _ in range(3)]
    for rpc in rpcs:
        rpc.requests.send(subscribe())
    await asyncio.wait_for(writing.wait(), WAIT)
    for rpc in rpcs:
        await rpc.cancelled()

    await server.close()
    assert_unregistered(server, registry)
    assert [e for e in logs.entries if e["event"] == "xds streams still open after close"] == []
    assert len([e for e in logs.entries if e["event"] == "xds stream closed"]) == 3
