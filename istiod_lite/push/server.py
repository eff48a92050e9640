"""istiod_lite's delta ADS server: holds the serialized resources and pushes changes to every stream.

``PushServer`` is the gRPC servicer of ``AggregatedDiscoveryService/DeltaAggregatedResources``. The app
calls ``set_resources`` after each registry diff (on the event loop's thread); changes are debounced
(``debounce.Debouncer``) and then handed to each stream, which gets only the names it subscribes to: one
pod change pushes one resource.

Invariants:
- Every resource is serialized once, deterministically; its version is the first 16 hex digits of the
  BLAKE2b hash of those bytes. Equal bytes keep their version across istiod restarts, so a reconnecting
  proxy's ``initial_resource_versions`` really saves the resend, and setting identical content is a no-op.
- Each stream has its own writer (the handler's async generator) and its own pending set, keyed by name.
  A slow proxy only delays itself; its pending changes coalesce (latest content wins per name).
- A request we cannot follow (including bytes that are not a DeltaDiscoveryRequest, and requests past a
  ``StreamLimits`` limit) ends that stream alone with INVALID_ARGUMENT, counted in
  ``istiod_lite_xds_invalid_requests_total{reason}`` and logged. A NACK is recorded, counted and logged;
  later changes still flow.
- Every stream that was registered is unregistered exactly once, however it ends (OK, abort, client
  cancel, reset, peer gone, server stop). grpc.aio runs the handler as an async generator that it may
  stop resuming (cancelled while it writes a response) and may cancel again while the generator cleans
  up, so unregistering is synchronous (no ``await`` before it) and hooked to the RPC's done callback as
  well as the generator's ``finally``; whichever runs first wins, the other is a no-op.
- One response carries at most ``StreamLimits.max_response_bytes`` of resources and removed names (at
  least one entry); the rest follows in the next responses of the same stream.
- Per-stream protocol decisions live in ``state.py``; this module only does I/O, timers and metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from istiod_lite.push.debounce import Debouncer
from istiod_lite.push.errors import (
    EmptyResourceNameError,
    InvalidRequestError,
    MessageTypeMismatchError,
    UndecodableRequestError,
    UnservedTypeError,
)
from istiod_lite.push.state import ConnectionState, StreamLimits, TypeSubscription
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.proto import discovery_pb2, discovery_pb2_grpc

TYPE_URL_PREFIX = "type.googleapis.com/"
SERVED_TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
# Istio's short names for the `type` label of pilot_* metrics (pilot/pkg/model GetMetricType).
METRIC_TYPES = {ADDRESS_TYPE_URL: "wds", AUTHORIZATION_TYPE_URL: "wads"}
# Istio's buckets for pilot_xds_push_time and pilot_xds_send_time.
_PUSH_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)


@dataclass(slots=True)
class _Stored:
    """One resource as it goes on the wire, built once."""

    version: str
    resource: discovery_pb2.Resource
    size: int  # encoded size of ``resource``, for istiod_lite_xds_bytes_pushed_total


@dataclass(slots=True)
class _Work:
    """What a stream still has to consider for one type."""

    full: bool = False
    respond: bool = False
    names: dict[str, float | None] = field(default_factory=dict)  # name -> monotonic time the change was set


@dataclass(slots=True)
class _Stream:
    state: ConnectionState
    log: Any
    reader: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    work: dict[str, _Work] = field(default_factory=dict)
    failure: InvalidRequestError | None = None
    ended: bool = False

    def work_for(self, type_url: str) -> _Work:
        work = self.work.get(type_url)
        if work is None:
            work = self.work[type_url] = _Work()
        return work


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge("pilot_xds", "Number of proxies connected over xDS.", registry=registry)
        self.pushes = Counter("pilot_xds_pushes", "xDS responses sent, by type.", ["type"], registry=registry)
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Seconds from a change being set to the response carrying it being sent.",
            ["type"],
            buckets=_PUSH_BUCKETS,
            registry=registry,
        )
        self.send_time = Histogram(
            "pilot_xds_send_time", "Seconds spent writing one xDS response.", buckets=_PUSH_BUCKETS, registry=registry
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects", "xDS responses NACKed by proxies, by type.", ["type"], registry=registry
        )
        self.resources_pushed = Counter(
            "istiod_lite_xds_resources_pushed",
            "Resources and removals carried by xDS responses, by type.",
            ["type"],
            registry=registry,
        )
        self.bytes_pushed = Counter(
            "istiod_lite_xds_bytes_pushed",
            "Encoded bytes of resources (and removed names) carried by xDS responses, by type.",
            ["type"],
            registry=registry,
        )
        self.invalid_requests = Counter(
            "istiod_lite_xds_invalid_requests",
            "xDS streams ended because a request could not be followed, by reason.",
            ["reason"],
            registry=registry,
        )


class PushServer(discovery_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Delta ADS for ztunnels and waypoints. Register with ``add_AggregatedDiscoveryServiceServicer_to_server``.

    ``type_urls`` is the set of served type URLs (default: Address and Authorization); a proxy subscribing
    to any other ends its stream with INVALID_ARGUMENT. ``metric_types`` gives served types their short
    ``type`` label on pilot_* metrics (Istio's ``wds``/``wads`` are built in; others use the full URL).

    Must be used from one event loop: ``set_resources``, the gRPC handlers and ``close`` share state
    without locks.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        debounce: float = 0.1,
        logger: Any = None,
        *,
        debounce_max: float = 1.0,
        type_urls: Iterable[str] = SERVED_TYPES,
        metric_types: Mapping[str, str] | None = None,
        close_grace: float = 5.0,
        limits: StreamLimits | None = None,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self.close_grace = close_grace
        self.limits = limits if limits is not None else StreamLimits()
        self._on_call = on_call  # told each stream's peer (istiod_lite.ca.service.TlsAccounting.call_seen)
        self._metrics = _Metrics(registry)
        self._log = logger if logger is not None else structlog.get_logger("istiod_lite.push")
        self._debouncer = Debouncer(debounce, max(debounce, debounce_max))
        self._types = tuple(dict.fromkeys(type_urls))
        if not self._types:
            raise ValueError("PushServer needs at least one type URL to serve")
        self._metric_types = {**METRIC_TYPES, **(metric_types or {})}
        self._stored: dict[str, dict[str, _Stored]] = {t: {} for t in self._types}
        self._versions: dict[str, dict[str, str]] = {t: {} for t in self._types}
        self._pending: dict[str, dict[str, float]] = {}  # type -> name -> when first set in this burst
        self._generation = 0
        self._streams: dict[str, _Stream] = {}
        self._readers: set[asyncio.Task[None]] = set()  # cancelled on unregister; close() waits for them
        self._conn_ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._progress = asyncio.Event()
        self._closing = False

    # -- resources -------------------------------------------------------------------------------------

    def set_resources(self, type_url: str, changed: Mapping[str, Message], removed: Iterable[str] = ()) -> None:
        """Replace ``changed`` (name -> message) and delete ``removed`` names of ``type_url``.

        All-or-nothing: a wrong message type or an empty name raises ``PushUsageError`` before anything is
        stored. Unchanged content and removals of unknown names are ignored.
        """
        stored = self._stored.get(type_url)
        if stored is None:
            raise UnservedTypeError(type_url, self._types)
        full_name = type_url.removeprefix(TYPE_URL_PREFIX)
        encoded: list[tuple[str, bytes]] = []
        for name, message in changed.items():
            if not name:
                raise EmptyResourceNameError(type_url)
            if message.DESCRIPTOR.full_name != full_name:
                raise MessageTypeMismatchError(type_url, name, message.DESCRIPTOR.full_name)
            encoded.append((name, message.SerializeToString(deterministic=True)))
        versions = self._versions[type_url]
        touched: list[str] = []
        for name, data in encoded:
            version = hashlib.blake2b(data, digest_size=8).hexdigest()
            if versions.get(name) == version:
                continue
            resource = discovery_pb2.Resource(
                name=name, version=version, resource=any_pb2.Any(type_url=type_url, value=data)
            )
            stored[name] = _Stored(version, resource, resource.ByteSize())
            versions[name] = version
            touched.append(name)
        for name in removed:
            if stored.pop(name, None) is not None:
                del versions[name]
                touched.append(name)
        if not touched:
            return
        self._generation += 1
        if not self._streams:
            return  # nobody to tell; a stream that connects later gets the full state
        now = time.monotonic()
        pending = self._pending.setdefault(type_url, {})
        for name in touched:
            pending.setdefault(name, now)
        self._debouncer.record(now)
        self._arm_timer()

    def resource_versions(self, type_url: str) -> Mapping[str, str]:
        """Name -> version of every resource of ``type_url`` (read-only view, for debug endpoints)."""
        return self._versions[type_url]

    def _arm_timer(self) -> None:
        if self._timer is not None or self._closing:
            return
        deadline = self._debouncer.deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._debouncer.due(time.monotonic()):
            self._flush()
        else:
            self._arm_timer()  # more changes arrived: wait for the quiet period (or the max delay)

    def _flush(self) -> None:
        """Hand the burst to every stream subscribed to any of its names."""
        self._debouncer.reset()
        pending, self._pending = self._pending, {}
        for stream in self._streams.values():
            woken = False
            for type_url, changes in pending.items():
                sub = stream.state.subscriptions.get(type_url)
                if sub is None:
                    continue
                mine = [n for n in changes if sub.subscribes(n) or n in sub.known]
                if not mine:
                    continue
                names = stream.work_for(type_url).names
                for name in mine:
                    names.setdefault(name, changes[name])
                woken = True
            if woken:
                stream.wake.set()
        self._progress.set()

    # -- the gRPC method -------------------------------------------------------------------------------

    async def DeltaAggregatedResources(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "istiod_lite is shutting down; reconnect elsewhere")
        stream = self._register(request_iterator, context)
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.failure is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(stream.failure))
                if stream.ended or self._closing:
                    return
                while (built := self._next_response(stream)) is not None:
                    response, type_url, oldest_change, count, size = built
                    started = time.monotonic()
                    yield response
                    sent = time.monotonic()
                    label = self._metric_types.get(type_url, type_url)
                    self._metrics.send_time.observe(sent - started)
                    self._metrics.pushes.labels(label).inc()
                    self._metrics.resources_pushed.labels(label).inc(count)
                    self._metrics.bytes_pushed.labels(label).inc(size)
                    if oldest_change is not None:
                        self._metrics.push_time.labels(label).observe(sent - oldest_change)
                self._progress.set()
        finally:
            self._unregister(stream)  # synchronous on purpose: see the module doc

    def _register(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> _Stream:
        conn_id = str(next(self._conn_ids))
        state = ConnectionState(
            conn_id, secrets.token_hex(4), self._types, time.time(), peer=context.peer(), limits=self.limits
        )
        stream = _Stream(state, self._log.bind(conn_id=conn_id, peer=state.peer))
        if self._on_call is not None:
            self._on_call(state.peer)
        reader = asyncio.create_task(self._read(stream, request_iterator), name=f"xds-read-{conn_id}")
        stream.reader = reader
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        self._streams[conn_id] = stream
        self._metrics.connected.inc()
        # Runs when grpc's task for this RPC ends, whether or not the generator is ever resumed.
        context.add_done_callback(lambda _context: self._unregister(stream))
        return stream

    def _unregister(self, stream: _Stream) -> None:
        """Forget ``stream``: idempotent, synchronous (safe from a done callback and from ``finally``)."""
        conn_id = stream.state.conn_id
        if self._streams.get(conn_id) is not stream:
            return
        del self._streams[conn_id]
        self._metrics.connected.dec()
        if stream.reader is not None:
            stream.reader.cancel()
        self._progress.set()
        stream.log.info("xds stream closed", node_id=stream.state.node_id)

    async def _read(self, stream: _Stream, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
                if stream.failure is not None:
                    return
        except asyncio.CancelledError:
            raise
        except DecodeError as exc:  # grpc's deserializer: the peer sent bytes that are not our message
            self._reject(stream, UndecodableRequestError(str(exc)), type_url="")
        except Exception as exc:  # the peer went away mid-read: end this stream only
            stream.log.debug("xds stream read ended", error=repr(exc))
        finally:
            stream.ended = True
            stream.wake.set()

    def _reject(self, stream: _Stream, error: InvalidRequestError, type_url: str) -> None:
        """End ``stream`` with INVALID_ARGUMENT carrying ``error``'s message; count and log it once."""
        stream.failure = error
        self._metrics.invalid_requests.labels(type(error).__name__).inc()
        stream.log.warning(
            "xds request rejected, ending stream",
            node_id=stream.state.node_id,
            type_url=type_url,
            reason=type(error).__name__,
            error=str(error),
        )

    def _on_request(self, stream: _Stream, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        state = stream.state
        had_node = bool(state.node_id)
        try:
            outcome = state.receive(request, time.time())
        except InvalidRequestError as exc:
            self._reject(stream, exc, request.type_url)
            return
        if not had_node:
            stream.log = stream.log.bind(node_id=state.node_id)
            stream.log.info("xds stream opened")
        type_url = outcome.type_url
        if outcome.first:
            sub = state.subscriptions[type_url]
            stream.log.info(
                "xds subscribed",
                type_url=type_url,
                wildcard=sub.wildcard,
                names=len(sub.names),
                initial_versions=len(request.initial_resource_versions),
            )
        if outcome.nack is not None:
            self._metrics.rejects.labels(self._metric_types.get(type_url, type_url)).inc()
            stream.log.warning(
                "proxy rejected xds response",
                type_url=type_url,
                nonce=outcome.nack.nonce,
                version=outcome.nack.version,
                code=outcome.nack.code,
                reason=outcome.nack.message,
            )
        if outcome.full or outcome.dirty or outcome.respond:
            work = stream.work_for(type_url)
            work.full = work.full or outcome.full
            work.respond = work.respond or outcome.respond
            for name in outcome.dirty:
                work.names.setdefault(name, None)
            stream.wake.set()
        if outcome.acked or outcome.nack is not None:
            self._progress.set()

    def _next_response(
        self, stream: _Stream
    ) -> tuple[discovery_pb2.DeltaDiscoveryResponse, str, float | None, int, int] | None:
        """Build the next response this stream owes, recording it as sent; None when it owes nothing.

        A plan larger than ``max_response_bytes`` is cut: what does not fit goes back to the stream's
        work as dirty names (with their change times), so the next call continues where this one stopped.
        """
        while stream.work:
            type_url = next(iter(stream.work))
            work = stream.work.pop(type_url)
            versions = self._versions[type_url]
            plan = stream.state.plan_response(type_url, versions, None if work.full else work.names)
            if not plan and not work.respond:
                continue
            stored = self._stored[type_url]
            send, remove, size, rest = _fit(plan.send, plan.remove, stored, self.limits.max_response_bytes)
            if rest:
                later = stream.work_for(type_url).names
                for name in rest:
                    later.setdefault(name, work.names.get(name))
            nonce = stream.state.next_nonce()
            system_version = str(self._generation)
            response = discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url,
                nonce=nonce,
                system_version_info=system_version,
                removed_resources=remove,
            )
            response.resources.extend(stored[name].resource for name in send)
            stream.state.record_sent(type_url, nonce, system_version, {name: versions[name] for name in send}, remove)
            changed_at = [t for n in (*send, *remove) if (t := work.names.get(n)) is not None]
            oldest = min(changed_at) if changed_at else None
            return response, type_url, oldest, len(send) + len(remove), size
        return None

    # -- operations ------------------------------------------------------------------------------------

    def syncz(self) -> list[dict[str, Any]]:
        """Per connected proxy: who it is and, per type, what it subscribed to and where its ACKs stand."""
        return [_describe(s.state) for s in self._streams.values()]

    def _behind(self) -> list[_Stream]:
        return [s for s in self._streams.values() if s.work or not s.state.subscriptions or not s.state.synced]

    def unsynced(self) -> list[str]:
        """Node ids (or connection ids) of streams with unanswered responses, work queued or no subscription."""
        return [s.state.node_id or s.state.conn_id for s in self._behind()]

    async def wait_synced(self, *, streams: int = 0) -> None:
        """Return once no change is pending and every stream answered its last response (ACK or NACK).

        ``streams``: also wait until at least this many proxies are connected. Bound it with
        ``asyncio.timeout``; ``unsynced()`` says who is behind.
        """
        while True:
            self._progress.clear()
            if (
                not self._debouncer.pending
                and not self._pending
                and len(self._streams) >= streams
                and not self._behind()
            ):
                return
            await self._progress.wait()

    @property
    def connected(self) -> int:
        """Number of open streams."""
        return len(self._streams)

    async def close(self) -> None:
        """End every stream with OK (proxies reconnect elsewhere); waits at most ``close_grace`` seconds."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in self._streams.values():
            stream.wake.set()
        try:
            async with asyncio.timeout(self.close_grace):
                while self._streams:
                    self._progress.clear()
                    await self._progress.wait()
                # Readers were cancelled when their streams were unregistered; let them finish.
                await asyncio.gather(*self._readers, return_exceptions=True)
        except TimeoutError:
            still_open = [s.state.node_id or s.state.conn_id for s in self._streams.values()]
            self._log.warning("xds streams still open after close", grace_s=self.close_grace, streams=still_open)


def _fit(
    send: tuple[str, ...], remove: tuple[str, ...], stored: Mapping[str, _Stored], budget: int
) -> tuple[list[str], list[str], int, list[str]]:
    """Split a plan at ``budget`` bytes: (send, remove, their size, names left for the next response).

    Takes at least one entry, so a resource larger than the budget still goes out (alone).
    """
    size = 0
    taken_send: list[str] = []
    taken_remove: list[str] = []
    rest: list[str] = []
    for name in send:
        cost = stored[name].size
        if rest or (size + cost > budget and (taken_send or taken_remove)):
            rest.append(name)
            continue
        taken_send.append(name)
        size += cost
    for name in remove:
        cost = len(name)
        if rest or (size + cost > budget and (taken_send or taken_remove)):
            rest.append(name)
            continue
        taken_remove.append(name)
        size += cost
    return taken_send, taken_remove, size, rest


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _describe_type(sub: TypeSubscription) -> dict[str, Any]:
    return {
        "wildcard": sub.wildcard,
        "names": sorted(sub.names),
        "status": sub.status,
        "resources_held": len(sub.known),
        "responses_sent": sub.responses_sent,
        "resources_sent": sub.resources_sent,
        "last_nonce_sent": sub.last_nonce_sent,
        "last_version_sent": sub.last_version_sent,
        "last_acked_nonce": sub.last_acked_nonce,
        "last_acked_version": sub.last_acked_version,
        "nacks": [
            {"time": _iso(n.at), "nonce": n.nonce, "version": n.version, "code": n.code, "message": n.message}
            for n in sub.nacks
        ],
    }


def _describe(state: ConnectionState) -> dict[str, Any]:
    return {
        "connection_id": state.conn_id,
        "node_id": state.node_id,
        "cluster": state.node_cluster,
        "peer": state.peer,
        "connected_since": _iso(state.connected_at),
        "metadata": state.metadata,
        "types": {type_url: _describe_type(sub) for type_url, sub in state.subscriptions.items()},
    }
