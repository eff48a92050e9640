"""Per-stream bookkeeping of the delta-ADS server: pure, no I/O, time arrives as ``now``.

One ``ConnectionState`` per gRPC stream (one connected proxy). It answers two questions and nothing else:
what a DeltaDiscoveryRequest means (``receive`` -> ``RequestOutcome``, or an ``InvalidRequestError`` that
ends the stream), and what a response for a type must contain (``plan_response`` -> ``ResponsePlan``, then
``record_sent``). The shell (``server.py``) owns sockets, queues and timers.

Theory of operation (Envoy's delta xDS rules, as istiod applies them):
- The first request of a type opens a subscription. Empty ``resource_names_subscribe`` or ``"*"`` means
  wildcard (every resource of the type); other names are explicit. Subscribe is applied before unsubscribe,
  so ztunnel's on-demand opening ``sub ["*"], unsub ["*"]`` ends up non-wildcard.
- ``known`` is what the proxy holds: name -> version. It starts from ``initial_resource_versions`` (a
  reconnecting proxy) and is updated optimistically on every send (a NACKed resource is not resent until it
  changes: resending the same bytes would only be rejected again).
- Nonces are ``<prefix>-<seq>`` with a per-stream random prefix and a counter, so "was this nonce ever sent
  on this stream?" is answered without remembering every nonce. A nonce still awaiting its answer is
  *outstanding*; ACK/NACK of an outstanding nonce also settles the older ones (responses are answered in
  order). A nonce sent earlier but no longer outstanding is *stale* and ignored, as istiod does.
- Explicitly subscribed names that do not exist are answered with ``removed_resources`` so an on-demand
  lookup learns "no such resource" instead of waiting.
- Limits (``StreamLimits``): a request may list at most ``max_names_per_request`` names and a stream may
  hold at most ``max_subscribed_names`` explicit names per type; past either the stream ends
  (``TooManyNamesError`` / ``TooManySubscriptionsError``), checked before any state changes for the first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from istiod_lite.push.errors import (
    MissingNodeError,
    NackWithoutNonceError,
    TooManyNamesError,
    TooManySubscriptionsError,
    UnknownNonceError,
    UnknownTypeUrlError,
)
from meshcore.proto import discovery_pb2

WILDCARD = "*"
# Answers still awaited per type before the oldest is forgotten (a proxy that never ACKs must not grow us).
MAX_OUTSTANDING = 64
# NACKs remembered per type for /debug/syncz.
MAX_NACK_HISTORY = 16


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What one delta-ADS stream may ask of istiod_lite (see docs/operations.md, "Limits")."""

    # Names in one request: resource_names_subscribe + resource_names_unsubscribe + initial_resource_versions.
    max_names_per_request: int = 10_000
    # Explicitly subscribed names held per type and stream (a wildcard subscription holds none).
    max_subscribed_names: int = 100_000
    # Encoded bytes of resources and removed names in one response; more goes in the next responses
    # (always at least one entry per response, so a single large resource is still sent).
    max_response_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_names_per_request", "max_subscribed_names", "max_response_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"StreamLimits.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Nack:
    """One rejection reported by the proxy."""

    at: float  # wall-clock seconds when the NACK arrived
    nonce: str  # nonce of the rejected response
    version: str  # system_version_info of the rejected response ("" if it was no longer outstanding)
    code: int  # error_detail.code (a google.rpc.Code)
    message: str  # error_detail.message: the proxy's reason


@dataclass(slots=True)
class TypeSubscription:
    """What one stream subscribed to for one type URL and where its ACK/NACK cycle stands."""

    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)  # explicit subscriptions (kept even while wildcard)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the proxy holds
    outstanding: dict[str, str] = field(default_factory=dict)  # nonce -> system version, oldest first
    last_nonce_sent: str = ""
    last_version_sent: str = ""
    last_acked_nonce: str = ""
    last_acked_version: str = ""
    last_answer_nacked: bool = False
    responses_sent: int = 0
    resources_sent: int = 0
    nacks: deque[Nack] = field(default_factory=lambda: deque(maxlen=MAX_NACK_HISTORY))

    def subscribes(self, name: str) -> bool:
        return self.wildcard or name in self.names

    @property
    def synced(self) -> bool:
        """Every response sent on this type has been answered (ACK or NACK)."""
        return not self.outstanding

    @property
    def status(self) -> str:
        """Istio's syncz vocabulary: NOT SENT, STALE (awaiting an answer), NACKED, SYNCED."""
        if not self.last_nonce_sent:
            return "NOT SENT"
        if self.outstanding:
            return "STALE"
        return "NACKED" if self.last_answer_nacked else "SYNCED"


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What one request meant; the shell acts on it (queue a response, count, log)."""

    type_url: str
    first: bool = False  # this request opened the subscription of the type
    acked: str = ""  # nonce ACKed by this request
    nack: Nack | None = None  # the rejection this request reported
    stale_nonce: str = ""  # an ACK/NACK of a nonce that was already settled (ignored)
    full: bool = False  # reconsider every resource the stream subscribes to
    dirty: frozenset[str] = frozenset()  # reconsider these names
    respond: bool = False  # answer even if the answer is empty (first request, new subscriptions)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    send: tuple[str, ...]  # names to send with their current version
    remove: tuple[str, ...]  # names for removed_resources

    def __bool__(self) -> bool:
        return bool(self.send or self.remove)


class ConnectionState:
    """Bookkeeping of one delta-ADS stream. Not thread-safe; one owner (the stream's handler)."""

    def __init__(
        self,
        conn_id: str,
        nonce_prefix: str,
        served: Iterable[str],
        now: float,
        peer: str = "",
        limits: StreamLimits = StreamLimits(),
    ) -> None:
        if "-" in nonce_prefix or not nonce_prefix:
            raise ValueError(f"nonce prefix {nonce_prefix!r} must be non-empty and contain no '-'")
        self.conn_id = conn_id
        self.peer = peer
        self.connected_at = now
        self.node_id = ""
        self.node_cluster = ""
        self.metadata: dict[str, Any] = {}
        self.subscriptions: dict[str, TypeSubscription] = {}
        self._served = frozenset(served)
        self._limits = limits
        self._nonce_prefix = nonce_prefix
        self._seq = 0

    # -- requests --------------------------------------------------------------------------------------

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest, now: float) -> RequestOutcome:
        """Apply one request. Raises ``InvalidRequestError`` if the stream must end."""
        names = (
            len(request.resource_names_subscribe)
            + len(request.resource_names_unsubscribe)
            + len(request.initial_resource_versions)
        )
        if names > self._limits.max_names_per_request:
            raise TooManyNamesError(request.type_url, names, self._limits.max_names_per_request)
        if not self.node_id:
            if not request.HasField("node") or not request.node.id:
                raise MissingNodeError()
            self.node_id = request.node.id
            self.node_cluster = request.node.cluster
            if request.node.HasField("metadata"):
                self.metadata = json_format.MessageToDict(request.node.metadata)
        type_url = request.type_url
        if type_url not in self._served:
            raise UnknownTypeUrlError(type_url, self._served)
        sub = self.subscriptions.get(type_url)
        if sub is None:
            if request.response_nonce or request.HasField("error_detail"):
                # Nothing was ever sent for this type, so any nonce is one we never sent for it.
                raise UnknownNonceError(type_url, request.response_nonce, _answer_kind(request))
            return self._open(request)
        acked, nack, stale = self._settle(sub, request, now)
        full, dirty, respond = self._resubscribe(sub, request)
        return RequestOutcome(
            type_url=type_url, acked=acked, nack=nack, stale_nonce=stale, full=full, dirty=dirty, respond=respond
        )

    def _open(self, request: discovery_pb2.DeltaDiscoveryRequest) -> RequestOutcome:
        sub = TypeSubscription(request.type_url)
        subscribe = list(request.resource_names_subscribe)
        # Legacy wildcard: an empty first subscription means "everything" (Envoy's delta xDS spec).
        sub.wildcard = not subscribe or WILDCARD in subscribe
        sub.names = {n for n in subscribe if n != WILDCARD}
        sub.known = dict(request.initial_resource_versions)
        if not sub.wildcard:
            # A non-wildcard proxy that claims a resource still wants it (istiod does the same).
            sub.names.update(sub.known)
        self._unsubscribe(sub, request.resource_names_unsubscribe)
        self._check_subscribed(sub)
        self.subscriptions[sub.type_url] = sub
        return RequestOutcome(type_url=sub.type_url, first=True, full=True, respond=True)

    def _settle(
        self, sub: TypeSubscription, request: discovery_pb2.DeltaDiscoveryRequest, now: float
    ) -> tuple[str, Nack | None, str]:
        """Match the request's nonce to a response: (acked nonce, nack, stale nonce)."""
        nonce = request.response_nonce
        is_nack = request.HasField("error_detail")
        if not nonce:
            if is_nack:
                raise NackWithoutNonceError(sub.type_url)
            return "", None, ""
        self._check_nonce_issued(sub.type_url, nonce, request)
        if nonce not in sub.outstanding:
            return "", None, nonce
        version = sub.outstanding[nonce]
        # Responses are answered in order: this answer settles every older outstanding nonce too.
        for older in list(sub.outstanding):
            del sub.outstanding[older]
            if older == nonce:
                break
        if is_nack:
            nack = Nack(
                at=now,
                nonce=nonce,
                version=version,
                code=request.error_detail.code,
                message=request.error_detail.message,
            )
            sub.nacks.append(nack)
            sub.last_answer_nacked = True
            return "", nack, ""
        sub.last_acked_nonce = nonce
        sub.last_acked_version = version
        sub.last_answer_nacked = False
        return nonce, None, ""

    def _check_nonce_issued(self, type_url: str, nonce: str, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        prefix, _, seq = nonce.rpartition("-")
        if prefix != self._nonce_prefix or not seq.isdigit() or not 0 < int(seq) <= self._seq:
            raise UnknownNonceError(type_url, nonce, _answer_kind(request))

    def _resubscribe(
        self, sub: TypeSubscription, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> tuple[bool, frozenset[str], bool]:
        """Apply subscribe then unsubscribe on an open subscription: (full, dirty names, respond)."""
        full = False
        dirty: set[str] = set()
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                full = full or not sub.wildcard
                sub.wildcard = True
                continue
            sub.names.add(name)
            # A (re)subscription asks for the resource now, even if we believe the proxy has it.
            sub.known.pop(name, None)
            dirty.add(name)
        self._unsubscribe(sub, request.resource_names_unsubscribe)
        self._check_subscribed(sub)
        dirty = {n for n in dirty if sub.subscribes(n)}
        return full, frozenset(dirty), full or bool(dirty)

    def _check_subscribed(self, sub: TypeSubscription) -> None:
        if len(sub.names) > self._limits.max_subscribed_names:
            raise TooManySubscriptionsError(sub.type_url, len(sub.names), self._limits.max_subscribed_names)

    @staticmethod
    def _unsubscribe(sub: TypeSubscription, names: Iterable[str]) -> None:
        for name in names:
            if name == WILDCARD:
                sub.wildcard = False
                # The proxy drops what it held only through the wildcard.
                sub.known = {n: v for n, v in sub.known.items() if n in sub.names}
                continue
            sub.names.discard(name)
            if not sub.wildcard:
                sub.known.pop(name, None)

    # -- responses -------------------------------------------------------------------------------------

    def plan_response(
        self, type_url: str, current: Mapping[str, str], dirty: Iterable[str] | None
    ) -> ResponsePlan:
        """What to send for ``type_url`` given ``current`` (name -> version of every existing resource).

        ``dirty=None`` reconsiders everything the stream subscribes to (first request, wildcard added).
        """
        sub = self.subscriptions[type_url]
        if dirty is None:
            candidates: Iterable[str] = (
                set(current).union(sub.known, sub.names) if sub.wildcard else sub.names.union(sub.known)
            )
        else:
            candidates = dirty
        send: list[str] = []
        remove: list[str] = []
        for name in candidates:
            version = current.get(name)
            if version is not None:
                if sub.subscribes(name) and sub.known.get(name) != version:
                    send.append(name)
            elif name in sub.known or name in sub.names:
                # Gone (or never existed, for an explicit subscription): tell the proxy.
                remove.append(name)
        send.sort()
        remove.sort()
        return ResponsePlan(tuple(send), tuple(remove))

    def next_nonce(self) -> str:
        self._seq += 1
        return f"{self._nonce_prefix}-{self._seq}"

    def record_sent(
        self,
        type_url: str,
        nonce: str,
        system_version: str,
        sent: Mapping[str, str],
        removed: Iterable[str],
    ) -> None:
        """Note a response as written: the proxy now holds ``sent`` and none of ``removed``."""
        sub = self.subscriptions[type_url]
        sub.known.update(sent)
        for name in removed:
            sub.known.pop(name, None)
        sub.outstanding[nonce] = system_version
        while len(sub.outstanding) > MAX_OUTSTANDING:
            del sub.outstanding[next(iter(sub.outstanding))]
        sub.last_nonce_sent = nonce
        sub.last_version_sent = system_version
        sub.responses_sent += 1
        sub.resources_sent += len(sent)

    @property
    def synced(self) -> bool:
        return all(sub.synced for sub in self.subscriptions.values())


def _answer_kind(request: discovery_pb2.DeltaDiscoveryRequest) -> str:
    return "NACK" if request.HasField("error_detail") else "ACK"
