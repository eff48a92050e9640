"""FakeXdsServer: a real grpc.aio delta-ADS server on 127.0.0.1 that tests script by hand.

It keeps a store of resources per type URL. ``push`` updates the store and sends one response to every
stream subscribed to that type; a new stream's initial request gets the store's contents minus what its
``initial_resource_versions`` already hold (and removals for names it holds that the store lacks), like a
real control plane. Every request received is recorded with its stream number, so tests can assert ACKs,
NACKs (``error_detail``), nonces and reconnect versions; ``kill_streams`` aborts every open stream with
UNAVAILABLE to exercise reconnects. Insecure, loopback only, for tests; not a control plane.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2

from meshcore.model import Authorization, Service, Workload
from meshcore.model.convert import address_to_proto, authorization_to_proto
from meshcore.proto import discovery_pb2, discovery_pb2_grpc

Pushable = Workload | Service | Authorization | bytes

_KILL = "kill"
_CLIENT_DONE = "client-done"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    stream: int  # 1 for the first stream the server accepted, 2 for the next, ...
    request: discovery_pb2.DeltaDiscoveryRequest


@dataclass(eq=False)
class _Stream:
    number: int
    metadata: dict[str, str]
    subscribed: set[str] = field(default_factory=set)
    # Responses to write, or _KILL (abort the stream) / _CLIENT_DONE (the client half-closed).
    outbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | str] = field(default_factory=asyncio.Queue)


def _encode(value: Pushable) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Authorization):
        return authorization_to_proto(value).SerializeToString()
    return address_to_proto(value).SerializeToString()


class FakeXdsServer(discovery_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """``async with FakeXdsServer() as xds: ... xds.address ...``"""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._server: grpc.aio.Server | None = None
        self.port = 0
        # type_url -> name -> (version, body)
        self._store: dict[str, dict[str, tuple[str, bytes]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._stream_numbers = itertools.count(1)
        self._nonces = itertools.count(1)
        self._versions = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        # Call metadata (headers) of each stream, by stream number.
        self.stream_metadata: dict[int, dict[str, str]] = {}
        self._new_request = asyncio.Condition()

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        discovery_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"{self._host}:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> FakeXdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --------------------------------------------------------------------------------------- scripting

    async def push(
        self, type_url: str, resources: Mapping[str, Pushable], removed: Iterable[str] = ()
    ) -> list[str]:
        """Store ``resources`` (models are encoded; bytes are sent as given) and drop ``removed``, then send
        one response to each subscribed stream. Returns the nonces sent, one per stream."""
        store = self._store.setdefault(type_url, {})
        sent: dict[str, tuple[str, bytes]] = {}
        for name, value in resources.items():
            sent[name] = store[name] = (f"v{next(self._versions)}", _encode(value))
        gone = list(removed)
        for name in gone:
            store.pop(name, None)
        nonces = []
        for stream in list(self._streams.values()):
            if type_url in stream.subscribed:
                nonces.append(self._send(stream, type_url, sent, gone))
        return nonces

    def kill_streams(self) -> int:
        """Abort every open stream with UNAVAILABLE; returns how many there were."""
        for stream in self._streams.values():
            stream.outbox.put_nowait(_KILL)
        return len(self._streams)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0  # noqa: ASYNC109
    ) -> RecordedRequest:
        """The first recorded request (past or future) matching ``predicate``; TimeoutError after ``timeout``."""

        def first() -> RecordedRequest | None:
            return next((r for r in self.requests if predicate(r)), None)

        async with asyncio.timeout(timeout), self._new_request:
            await self._new_request.wait_for(lambda: first() is not None)
        found = first()
        assert found is not None
        return found

    # ------------------------------------------------------------------------------------------ serving

    def _send(
        self, stream: _Stream, type_url: str, resources: Mapping[str, tuple[str, bytes]], removed: Iterable[str]
    ) -> str:
        nonce = f"n{next(self._nonces)}"
        stream.outbox.put_nowait(
            discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url,
                nonce=nonce,
                resources=[
                    discovery_pb2.Resource(
                        name=name, version=version, resource=any_pb2.Any(type_url=type_url, value=body)
                    )
                    for name, (version, body) in resources.items()
                ],
                removed_resources=list(removed),
            )
        )
        return nonce

    async def _record(self, stream: _Stream, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        async with self._new_request:
            self.requests.append(RecordedRequest(stream.number, request))
            self._new_request.notify_all()
        type_url = request.type_url
        if not request.response_nonce and type_url not in stream.subscribed:
            # Initial request of a type on this stream: answer with what the client lacks.
            stream.subscribed.add(type_url)
            store = self._store.get(type_url, {})
            held = dict(request.initial_resource_versions)
            changed = {name: vb for name, vb in store.items() if held.get(name) != vb[0]}
            self._send(stream, type_url, changed, [name for name in held if name not in store])

    async def _read_requests(
        self, stream: _Stream, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]
    ) -> None:
        try:
            async for request in requests:
                await self._record(stream, request)
        finally:
            stream.outbox.put_nowait(_CLIENT_DONE)

    async def DeltaAggregatedResources(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse],
    ) -> None:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        stream = _Stream(next(self._stream_numbers), metadata)
        self.stream_metadata[stream.number] = metadata
        self._streams[stream.number] = stream
        reader = asyncio.create_task(self._read_requests(stream, request_iterator))
        try:
            while not isinstance(item := await stream.outbox.get(), str):
                await context.write(item)
        finally:
            del self._streams[stream.number]
            reader.cancel()
        if item == _KILL:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream killed by FakeXdsServer.kill_streams()")
