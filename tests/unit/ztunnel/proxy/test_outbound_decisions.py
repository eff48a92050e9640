"""Outbound decisions (pure): how each failure is reported, and the HBONE request headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshcore.aio.secrets import CertificateUnavailable
from meshcore.hbone import (
    HboneConnectionError,
    PeerNotTrusted,
    TunnelRefused,
    WorkloadBaggage,
    parse_forwarded,
    parse_traceparent,
)
from meshcore.identity import SpiffeId
from meshcore.state import ProxyState
from meshcore.telemetry import ResponseFlags
from meshcore.testing import builders as b
from ztunnel.proxy.errors import (
    InvalidDestination,
    NoHealthyUpstream,
    SelfCall,
    Socks5Reply,
    UnknownServicePort,
    UnknownSource,
    UnknownWaypoint,
    UpstreamConnectFailed,
)
from ztunnel.proxy.outbound import build_hbone_headers, classify_outbound_failure
from ztunnel.proxy.routing import SockAddr, build_route

R = Socks5Reply
F = ResponseFlags
ID = SpiffeId("cluster.local", "default", "client")


@pytest.mark.parametrize(
    ("error", "reason", "reply", "flags"),
    [
        (UnknownSource("10.0.0.9"), "UnknownSource", R.NOT_ALLOWED_BY_RULESET, F.NONE),
        (SelfCall("127.0.0.1:15008", "loop"), "SelfCall", R.NOT_ALLOWED_BY_RULESET, F.NONE),
        (InvalidDestination("x:0", "bad"), "InvalidDestination", R.ADDRESS_TYPE_NOT_SUPPORTED, F.NONE),
        (UnknownServicePort("10.96.0.1:81", "no"), "UnknownServicePort", R.CONNECTION_REFUSED, F.NONE),
        (NoHealthyUpstream("10.96.0.1:80", "none"), "NoHealthyUpstream", R.HOST_UNREACHABLE, F.NONE),
        (UnknownWaypoint("10.96.0.1:80", "gone"), "UnknownWaypoint", R.HOST_UNREACHABLE, F.NONE),
        (TunnelRefused(401), "TunnelDenied", R.NOT_ALLOWED_BY_RULESET, F.DENY),
        (TunnelRefused(503), "TunnelUpstreamUnavailable", R.CONNECTION_REFUSED, F.CONNECT),
        (TunnelRefused(400), "TunnelRefused", R.GENERAL_FAILURE, F.CONNECT),
        (PeerNotTrusted("wrong identity"), "PeerNotTrusted", R.NOT_ALLOWED_BY_RULESET, F.TLS_FAILURE),
        (HboneConnectionError("unreachable"), "HboneConnectFailed", R.HOST_UNREACHABLE, F.CONNECT),
        (CertificateUnavailable(ID, None, datetime.now(UTC)), "CertificateUnavailable", R.GENERAL_FAILURE, F.IDENTITY_ERROR),
        (UpstreamConnectFailed("10.0.0.3:80", "refused", refused=True), "ConnectionFailed", R.CONNECTION_REFUSED, F.CONNECT),
        (UpstreamConnectFailed("10.0.0.3:80", "slow", timed_out=True), "ConnectionFailed", R.TTL_EXPIRED, F.CONNECT),
        (UpstreamConnectFailed("10.0.0.3:80", "no route"), "ConnectionFailed", R.HOST_UNREACHABLE, F.CONNECT),
        (OSError("boom"), "IoError", R.GENERAL_FAILURE, F.CONNECT),
    ],
    ids=[
        "a source that is not a local workload is not allowed",
        "a self call is not allowed",
        "an invalid destination is an unsupported address",
        "a service port the service lacks is refused",
        "a service without healthy endpoints is unreachable",
        "an unresolvable waypoint is unreachable",
        "a tunnel answered 401 is denied by policy",
        "a tunnel answered 503 is refused by the upstream",
        "a tunnel answered 400 is a general failure",
        "a server with an unexpected identity is not allowed and a tls failure",
        "an unreachable hbone peer is unreachable",
        "a missing certificate is an identity error",
        "a refused passthrough connection is refused",
        "a timed out passthrough connection is a ttl expiry",
        "another passthrough failure is unreachable",
        "anything else is a general failure",
    ],
)
def test_each_failure_maps_to_one_reason_reply_and_flag(error, reason, reply, flags):
    failure = classify_outbound_failure(error)
    assert (failure.reason, failure.reply, failure.flags) == (reason, reply, flags)
    assert failure.message


def test_hbone_headers_carry_source_baggage_client_address_service_host_and_a_fresh_trace():
    src = b.workload("client", "10.0.0.1", canonical_revision="v1")
    server = b.workload("server", "10.0.0.2", services={"default/echo.default.svc.cluster.local": ()})
    svc = b.service("echo", "10.96.0.10", {80: 8080})
    route = build_route(ProxyState.of(src, server, svc), src, "10.96.0.10", 80)
    headers = dict(build_hbone_headers(src, SockAddr("10.0.0.1", 5555), route, bytes(range(24))))
    baggage = WorkloadBaggage.parse(headers["baggage"])
    assert (baggage.namespace, baggage.workload_name, baggage.service_name, baggage.service_version) == (
        "default", "client", "client", "v1"
    )
    forwarded = parse_forwarded(headers["forwarded"])
    assert forwarded is not None and (str(forwarded.for_ip), forwarded.for_port, forwarded.host) == (
        "10.0.0.1", 5555, "echo.default.svc.cluster.local"
    )
    trace = parse_traceparent(headers["traceparent"])
    assert trace is not None and trace.trace_id == bytes(range(16))


def test_a_pod_addressed_connection_has_no_forwarded_host():
    src = b.workload("client", "10.0.0.1")
    server = b.workload("server", "10.0.0.2")
    route = build_route(ProxyState.of(src, server), src, "10.0.0.2", 8080)
    forwarded = parse_forwarded(dict(build_hbone_headers(src, SockAddr("10.0.0.1", 1), route, bytes(24)))["forwarded"])
    assert forwarded is not None and forwarded.host is None
