"""XdsClient: drives one delta-ADS gRPC stream to the control plane and publishes snapshots to a StateCell.

Per response: ``DeltaXdsClientProtocol.receive`` -> ``apply_delta`` on the cell's current snapshot ->
``publish`` (only if something changed) -> ACK, or NACK naming each rejected resource (the good ones in the
same response still apply). The client is the cell's only writer. Any stream failure (gRPC error, server
closing, protocol violation) ends the stream; it reconnects with capped exponential backoff (10 ms doubling
to 15 s, jittered; reset once a stream delivers a response) and resends ``initial_resource_versions``. The
snapshot is never cleared on disconnect: the proxy keeps serving the config it has through an outage.
``ready`` is set once every subscribed type has had its first response processed, and stays set.
A big response (a full push: 10,000+ resources) is decoded on the event loop in steps of ``APPLY_STEP``
resources, yielding to other tasks between steps, so the proxy keeps serving connections meanwhile without
the GIL hand-offs a worker thread would cost; readers see nothing until the whole response is applied.
Owns no tasks: the caller runs ``run()`` in its TaskGroup and calls ``close()`` to stop it
(``run_setting_ready`` runs it and mirrors its ``ready`` into the caller's own event).
What it applies is a registry of resource kinds (``meshcore.state.kinds``): ztunnel's Address and
Authorization over ``ProxyState`` by default; the waypoint passes its own kinds over its own snapshot.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

import grpc
import structlog

from meshcore.aio.state_cell import StateCell
from meshcore.proto import discovery_pb2, discovery_pb2_grpc
from meshcore.state import SUPPORTED_TYPE_URLS, Rejection
from meshcore.state.kinds import PROXY_STATE_KINDS, ResourceKind
from meshcore.xds import ZTUNNEL_TYPE_URLS, Backoff, DeltaXdsClientProtocol, ProtocolError, nack_message

log = structlog.get_logger("meshcore.xds")

MAX_MESSAGE_BYTES = 200 * 1024 * 1024  # ztunnel's limit (reference §5)
# Resources decoded between two yields to the event loop (~10-20 us each: a few ms per step).
APPLY_STEP = 256

RejectionHook = Callable[[str, list[Rejection]], None]
S = TypeVar("S")


class XdsClient(Generic[S]):
    """Delta-xDS client for the kinds it is given (see the module docstring)."""

    def __init__(
        self,
        target: str,
        channel_credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None,
        node_id: str,
        metadata: Mapping[str, Any],
        cell: StateCell[S],
        type_urls: Sequence[str] = ZTUNNEL_TYPE_URLS,
        on_rejections: RejectionHook | None = None,
        *,
        kinds: Sequence[ResourceKind[S]] | None = None,
        authorization: str | Callable[[], str] | None = None,
        cluster_id: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``channel_credentials=None`` means an insecure channel (tests only). ``authorization`` is the
        full header value (``Bearer <token>``) or a function returning it, called per connection so a
        rotated token is picked up. ``channel_options`` go to gRPC (e.g. ``grpc.ssl_target_name_override``).
        ``channel_credentials`` may be a function: it is called for every connection attempt, each on a new
        channel, so a renewed client certificate is presented at the next reconnect."""
        if kinds is None:  # ztunnel's: Address and Authorization over ProxyState
            unsupported = [t for t in type_urls if t not in SUPPORTED_TYPE_URLS]
            if unsupported:
                raise ValueError(f"XdsClient cannot apply type URLs {unsupported}; supported: {SUPPORTED_TYPE_URLS}")
            by_url = {k.type_url: k for k in PROXY_STATE_KINDS}
            kinds = cast(Sequence[ResourceKind[S]], [by_url[t] for t in type_urls])
        else:
            type_urls = [k.type_url for k in kinds]
        self._kinds: dict[str, ResourceKind[S]] = {k.type_url: k for k in kinds}
        self.target = target
        self._credentials = channel_credentials
        self._cell = cell
        self._protocol = DeltaXdsClientProtocol(node_id, metadata, type_urls)
        self._on_rejections = on_rejections
        self._authorization = authorization
        self._cluster_id = cluster_id
        self._options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *channel_options,
        ]
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._clock = clock
        self._closing = False
        self._closed = asyncio.Event()
        self._call: Any = None
        self.ready = asyncio.Event()
        # Observability for admin endpoints and tests.
        self.connected = False
        self.connects = 0
        self.last_disconnect_reason: str | None = None

    @property
    def protocol(self) -> DeltaXdsClientProtocol:
        """The sans-IO protocol state (versions held, acked types); read-only use."""
        return self._protocol

    # ---------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, process responses, reconnect on failure, until ``close()``."""
        channel = self._make_channel()
        try:
            while not self._closing:
                reason = await self._run_stream(channel)
                self.connected = False
                if self._closing:
                    break
                if callable(self._credentials):  # the next attempt presents the current credentials
                    await channel.close(grace=None)
                    channel = self._make_channel()
                self.last_disconnect_reason = reason
                delay = self._backoff.next_delay(self._rng.random())
                log.warning("xds disconnected", target=self.target, reason=reason, retry_in_s=round(delay, 3))
                try:
                    async with asyncio.timeout(delay):
                        await self._closed.wait()
                except TimeoutError:
                    pass
        finally:
            await channel.close(grace=None)
            log.info("xds client stopped", target=self.target)

    def close(self) -> None:
        """Stop ``run()``: cancels the current stream and any backoff wait. Idempotent."""
        self._closing = True
        self._closed.set()
        if self._call is not None:
            self._call.cancel()

    def _make_channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self._options)
        credentials = self._credentials() if callable(self._credentials) else self._credentials
        return grpc.aio.secure_channel(self.target, credentials, options=self._options)

    def _call_metadata(self) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        auth = self._authorization() if callable(self._authorization) else self._authorization
        if auth:
            md.append(("authorization", auth))
        if self._cluster_id:
            md.append(("clusterid", self._cluster_id))
        return md

    # ------------------------------------------------------------------------------------------- stream

    async def _run_stream(self, channel: grpc.aio.Channel) -> str:
        """Run one stream to its end; returns why it ended."""
        stub = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.DeltaAggregatedResources(metadata=self._call_metadata())
        self._call = call
        try:
            for request in self._protocol.start(now=self._clock()):
                await call.write(request)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return "control plane closed the stream"
                if not self.connected:
                    self.connected = True
                    self.connects += 1
                    self._backoff.reset()
                    log.info("xds connected", target=self.target, connects=self.connects)
                await self._handle(call, response)
        except grpc.aio.AioRpcError as e:
            return f"{e.code().name}: {e.details()}"
        except ProtocolError as e:
            log.error("xds protocol violation, resetting stream", target=self.target, error=str(e))
            return f"protocol violation: {e}"
        except Exception as e:  # a bug here must not silently stop config updates: log, reconnect
            log.exception("xds stream failed", target=self.target)
            return f"internal error: {e!r}"
        except asyncio.CancelledError:
            # close() cancels the call, which surfaces here; a cancellation of our own task must propagate.
            task = asyncio.current_task()
            if self._closing and (task is None or task.cancelling() == 0):
                return "closed"
            raise
        finally:
            self._call = None
            call.cancel()

    async def _handle(self, call: Any, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        received = self._protocol.receive(response)
        before = self._cell.current()
        bodies = received.bodies
        kind = self._kinds.get(received.type_url)
        if kind is None:  # the protocol only lets subscribed types through
            raise ProtocolError(f"response for type {received.type_url!r}, which this client did not subscribe to")
        applier = kind.start(before, bodies, received.removals)
        while not applier.step(APPLY_STEP):  # noqa: ASYNC110 - the step is the work; sleep(0) only yields
            await asyncio.sleep(0)  # let connections run; we are the cell's only writer, `before` stays current
            if self._closing:
                return  # close() was called mid-apply: drop the draft, nothing was published
        after, rejected = applier.finish()
        rejections = [Rejection(name, reason) for name, reason in received.malformed.items()] + rejected
        if after is not before:
            self._cell.publish(after)
        if rejections:
            log.warning(
                "xds resources rejected",
                type_url=received.type_url,
                nonce=received.nonce,
                rejected=len(rejections),
                applied=len(bodies) - len(rejected),
                reasons={r.name: r.reason for r in rejections[:20]},
            )
            if self._on_rejections is not None:
                self._on_rejections(received.type_url, rejections)
            reply = self._protocol.nack(
                received.type_url, received.nonce, nack_message(rejections), rejected=[r.name for r in rejections]
            )
        else:
            reply = self._protocol.ack(received.type_url, received.nonce)
        await call.write(reply)
        if self._protocol.ready and not self.ready.is_set():
            self.ready.set()
            log.info("xds ready", target=self.target, version=getattr(after, "version", None))


async def run_setting_ready(client: XdsClient[Any], ready: asyncio.Event) -> None:
    """Run ``client`` until it stops, setting ``ready`` once the client's ``ready`` is set; ``ready`` is
    also set when the client stops before that (the wait is cancelled then, which sets it too)."""
    waiting = asyncio.ensure_future(client.ready.wait())
    waiting.add_done_callback(lambda _: ready.set())
    try:
        await client.run()
    finally:
        waiting.cancel()
