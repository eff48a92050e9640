"""Sans-IO delta-ADS client state: what to send on (re)connect, how to read a response, how to ACK/NACK it.

Theory of operation (reference §5; Envoy's "incremental xDS" protocol):
- One gRPC bidi stream carries every type. ``start(now)`` is called once per stream and returns one
  request per subscribed type, each carrying ``node`` and a wildcard subscription (empty
  ``resource_names_subscribe``), plus ``initial_resource_versions`` = the versions we hold, so that after a
  reconnect the server sends only what changed (and removals for what vanished).
- Each response is handed to ``receive()``, which checks it against the protocol and returns ``Received``.
  Exactly one ``ack()`` or ``nack()`` must answer it before the next response of that type is received.
- Resource versions are *staged* by ``receive()`` and committed by ``ack()``/``nack()``: a NACKed resource
  keeps the version of the value we still hold (or none), so the next reconnect asks for it again.
- ``acked_types`` grows as each type gets its first ACK/NACK; ``ready`` is true once it holds every type.
  It survives reconnects (a proxy that was ready keeps serving from the config it has).
Never does I/O, never sleeps, never logs: the asyncio shell (``meshcore.aio.xds_client``) does that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.proto import discovery_pb2
from meshcore.xds.errors import (
    AckMismatch,
    MalformedResponse,
    ResponseOutOfOrder,
    UnknownTypeUrl,
)
from meshcore.xds.types import Received

# google.rpc.Code INVALID_ARGUMENT: the config we were sent is invalid (the NACK's error_detail.code).
NACK_CODE = 3
# Keep NACK messages readable and bounded even when a whole push is bad.
MAX_NACK_ENTRIES = 50


def nack_message(rejections: Iterable[tuple[str, str]]) -> str:
    """Render ``(name, reason)`` pairs as the NACK's ``error_detail.message``, naming every resource."""
    items = list(rejections)
    shown = "; ".join(f"{name}: {reason}" for name, reason in items[:MAX_NACK_ENTRIES])
    more = f"; and {len(items) - MAX_NACK_ENTRIES} more" if len(items) > MAX_NACK_ENTRIES else ""
    noun = "resource" if len(items) == 1 else "resources"
    return f"rejected {len(items)} {noun}: {shown}{more}"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A received response of one type awaiting its ACK/NACK, with the versions it would commit."""

    nonce: str
    versions: dict[str, str]
    removals: tuple[str, ...]


class DeltaXdsClientProtocol:
    """The client side of one delta-ADS session across reconnects (see the module docstring)."""

    def __init__(self, node_id: str, node_metadata: Mapping[str, Any], type_urls: Sequence[str]) -> None:
        if not type_urls or not all(type_urls):
            raise ValueError("subscribe to at least one type URL, and no empty one")
        self.node_id = node_id
        self.type_urls: tuple[str, ...] = tuple(dict.fromkeys(type_urls))
        self._node = discovery_pb2.Node(id=node_id)
        self._node.metadata.update(dict(node_metadata))
        # type_url -> {name: version} of the resources we hold and ACKed.
        self._versions: dict[str, dict[str, str]] = {t: {} for t in self.type_urls}
        self._pending: dict[str, _Pending] = {}
        self._started = False
        self._acked: set[str] = set()
        # When the current stream started (the ``now`` given to ``start``), None before the first.
        self.stream_started_at: float | None = None

    # ------------------------------------------------------------------------------------- observers

    @property
    def acked_types(self) -> frozenset[str]:
        """Types that have had at least one response ACKed or NACKed (ever, not per stream)."""
        return frozenset(self._acked)

    @property
    def ready(self) -> bool:
        """True once every subscribed type has been answered once (ztunnel's xDS readiness)."""
        return len(self._acked) == len(self.type_urls)

    @property
    def unanswered(self) -> frozenset[str]:
        """Types with a received response that has not been ACKed or NACKed yet (being applied)."""
        return frozenset(self._pending)

    def versions(self, type_url: str) -> Mapping[str, str]:
        """name -> version of the ``type_url`` resources we hold (what the next ``start`` reports)."""
        return dict(self._versions[type_url])

    # --------------------------------------------------------------------------------------- actions

    def start(self, now: float) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """Begin a new stream: forget the previous stream's un-answered responses and return the initial
        request of every type (node, wildcard subscription, ``initial_resource_versions``)."""
        self._pending.clear()
        self._started = True
        self.stream_started_at = now
        return [
            discovery_pb2.DeltaDiscoveryRequest(
                node=self._node,
                type_url=t,
                initial_resource_versions=self._versions[t],
            )
            for t in self.type_urls
        ]

    def receive(self, response: discovery_pb2.DeltaDiscoveryResponse) -> Received:
        """Check one response and stage its versions; per-resource defects go to ``Received.malformed``.

        Raises ``ProtocolError`` (``ResponseOutOfOrder``, ``UnknownTypeUrl``, ``MalformedResponse``) when the
        response as a whole breaks the protocol; the caller should then reset the stream.
        """
        type_url = response.type_url
        if not self._started:
            raise ResponseOutOfOrder(f"response of type {type_url!r} arrived before the stream was started")
        if type_url not in self._versions:
            raise UnknownTypeUrl(type_url, self.type_urls)
        if not response.nonce:
            raise MalformedResponse(f"response of type {type_url!r} has no nonce, so it cannot be ACKed")
        pending = self._pending.get(type_url)
        if pending is not None:
            raise ResponseOutOfOrder(
                f"response {response.nonce!r} of type {type_url!r} arrived before the previous one "
                f"({pending.nonce!r}) was ACKed or NACKed"
            )
        versions: dict[str, str] = {}
        bodies: dict[str, bytes] = {}
        malformed: dict[str, str] = {}
        for i, res in enumerate(response.resources):
            name = res.name
            body = res.resource  # an absent body reads as an empty Any, whose type_url never matches
            if body.type_url == type_url and name and name not in bodies and name not in malformed:
                versions[name] = res.version  # the common case, checked once
                bodies[name] = body.value
            elif not name:
                malformed[f"<unnamed resource #{i}>"] = "resource has no name"
            elif name in bodies or name in malformed:
                versions.pop(name, None)
                bodies.pop(name, None)
                malformed[name] = "resource name appears more than once in one response"
            elif not res.HasField("resource"):
                malformed[name] = "resource has no body"
            else:
                malformed[name] = f"resource body has type {body.type_url!r}, expected {type_url!r}"
        removals = tuple(response.removed_resources)
        self._pending[type_url] = _Pending(nonce=response.nonce, versions=versions, removals=removals)
        return Received(
            type_url=type_url,
            nonce=response.nonce,
            versions=versions,
            bodies=bodies,
            removals=removals,
            malformed=malformed,
        )

    def ack(self, type_url: str, nonce: str) -> discovery_pb2.DeltaDiscoveryRequest:
        """Accept the pending response: commit its versions and return the ACK request."""
        self._commit(type_url, nonce, rejected=())
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)

    def nack(
        self, type_url: str, nonce: str, message: str, rejected: Iterable[str] = ()
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        """Reject (part of) the pending response: commit the versions of everything except ``rejected``
        (the good resources did apply) and return the NACK request carrying ``message``."""
        self._commit(type_url, nonce, rejected=rejected)
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            response_nonce=nonce,
            error_detail=discovery_pb2.Status(code=NACK_CODE, message=message),
        )

    def _commit(self, type_url: str, nonce: str, rejected: Iterable[str]) -> None:
        pending = self._pending.get(type_url)
        if pending is None or pending.nonce != nonce:
            raise AckMismatch(type_url, nonce, pending.nonce if pending else None)
        del self._pending[type_url]
        held = self._versions[type_url]
        skip = set(rejected)
        for name, version in pending.versions.items():
            if name not in skip:
                held[name] = version
        for name in pending.removals:
            held.pop(name, None)
        self._acked.add(type_url)
