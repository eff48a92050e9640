"""Errors of the delta-ADS push server.

Two families, kept apart on purpose (h11's local/remote split):

- ``InvalidRequestError`` and subclasses: a proxy sent something we cannot follow (bytes that are not a
  DeltaDiscoveryRequest, unknown type URL, no node on the first request, an ACK for a nonce this stream
  never sent, more names than a limit allows). The server ends *that stream only*
  with gRPC ``INVALID_ARGUMENT`` and this message; every other stream carries on.
- ``PushUsageError`` and subclasses: the caller of ``PushServer.set_resources`` handed us something wrong.
  That is a bug in istiod_lite, so it raises at the call site and never reaches a proxy.

Messages say what was wrong and what the operator or proxy author should do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


class PushError(Exception):
    """Base class of every error raised by istiod_lite.push."""


class InvalidRequestError(PushError):
    """A DeltaDiscoveryRequest that ends its stream with INVALID_ARGUMENT."""


class MissingNodeError(InvalidRequestError):
    def __init__(self) -> None:
        super().__init__(
            "the first DeltaDiscoveryRequest on a stream must carry node.id (ztunnel sends "
            "'ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local'); fix the proxy's bootstrap"
        )


class UnknownTypeUrlError(InvalidRequestError):
    def __init__(self, type_url: str, served: Iterable[str]) -> None:
        self.type_url = type_url
        super().__init__(
            f"type_url {type_url!r} is not served by istiod_lite; subscribe to one of: {', '.join(sorted(served))}"
        )


class UnknownNonceError(InvalidRequestError):
    def __init__(self, type_url: str, nonce: str, what: str = "ACK") -> None:
        self.type_url = type_url
        self.nonce = nonce
        super().__init__(
            f"{what} for {type_url} names response_nonce {nonce!r}, which this stream never sent; a proxy may "
            "only ACK/NACK nonces of responses it received on the same stream (after a reconnect, send "
            "initial_resource_versions instead of an old nonce)"
        )


class NackWithoutNonceError(InvalidRequestError):
    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        super().__init__(
            f"request for {type_url} carries error_detail (a NACK) but no response_nonce; a NACK must name "
            "the nonce of the response it rejects"
        )


class UndecodableRequestError(InvalidRequestError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"request is not a protobuf DeltaDiscoveryRequest ({detail}); send envoy.service.discovery.v3."
            "DeltaDiscoveryRequest messages on this method"
        )


class TooManyNamesError(InvalidRequestError):
    def __init__(self, type_url: str, count: int, limit: int) -> None:
        self.type_url = type_url
        super().__init__(
            f"request for {type_url} lists {count} resource names (subscribe + unsubscribe + "
            f"initial_resource_versions); at most {limit} per request are accepted (max_names_per_request): "
            "split them across several requests, or subscribe with the wildcard"
        )


class TooManySubscriptionsError(InvalidRequestError):
    def __init__(self, type_url: str, count: int, limit: int) -> None:
        self.type_url = type_url
        super().__init__(
            f"stream would subscribe to {count} names of {type_url}; at most {limit} per type and stream are "
            "accepted (max_subscribed_names): unsubscribe names no longer needed, or subscribe with the wildcard"
        )


class PushUsageError(PushError, ValueError):
    """``set_resources`` was called with something that can never be pushed (a bug in the caller)."""


class UnservedTypeError(PushUsageError):
    def __init__(self, type_url: str, served: Iterable[str]) -> None:
        super().__init__(
            f"set_resources({type_url!r}): this server serves only {', '.join(sorted(served))}; "
            "construct PushServer with that type URL or fix the caller"
        )


class MessageTypeMismatchError(PushUsageError):
    def __init__(self, type_url: str, name: str, full_name: str) -> None:
        super().__init__(
            f"set_resources({type_url!r}): resource {name!r} is a {full_name}, which packs as "
            f"type.googleapis.com/{full_name}; convert it to the message the type URL names"
        )


class EmptyResourceNameError(PushUsageError):
    def __init__(self, type_url: str) -> None:
        super().__init__(
            f"set_resources({type_url!r}): a resource has an empty name; use meshcore.model.convert."
            "resource_name() (workload uid, '<namespace>/<hostname>', '<namespace>/<policy name>')"
        )
