"""ServiceTraffic to and from ambientmesh.waypoint.v1: round trips, and resources a waypoint must NACK."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.model.convert import ConversionError
from meshcore.model.convert_traffic import regex_problem, service_traffic_from_proto, service_traffic_to_proto
from meshcore.model.traffic import (
    BackendRef,
    ConnectionPool,
    DestinationPolicy,
    Fault,
    HeaderModifier,
    LoadBalancer,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathRewrite,
    RateLimit,
    RateLimitOverride,
    Redirect,
    Retry,
    RouteMatch,
    RouteRule,
    ServiceTraffic,
    Subset,
    Timeouts,
    TrafficPolicy,
    UrlRewrite,
    ValueMatch,
)
from meshcore.proto import traffic_pb2

HOST = "echo.demo.svc.cluster.local"
V1 = BackendRef("demo", HOST, 80, "v1", 90)
V2 = BackendRef("demo", HOST, 80, "v2", 10)

FULL = ServiceTraffic(
    "demo", HOST,
    routes=(
        RouteRule("HTTPRoute demo/canary", matches=(RouteMatch(
            path=PathMatch("prefix", "/api"), headers=(ValueMatch("x-v", "regex", "v[0-9]"),),
            query_params=(ValueMatch("debug", "exact", "1"),), method="GET", port=80),),
            backends=(V1, V2),
            request_headers=HeaderModifier(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
            response_headers=HeaderModifier(remove=("server",)),
            rewrite=UrlRewrite("other", PathRewrite("prefix", "/v2")),
            mirrors=(Mirror(BackendRef("demo", "shadow.demo.svc.cluster.local", 80), 25.0),),
            timeouts=Timeouts(10.0, 0.5), retry=Retry(3, 0.25, ("5xx", "reset"), (503,), 0.025),
            fault=Fault(1.5, 10.0, 503, 50.0), name="canary"),
        RouteRule("HTTPRoute demo/moved", matches=(RouteMatch(path=PathMatch("exact", "/old")),),
                  redirect=Redirect("https", "new.example", 8443, PathRewrite("full", "/new"), 301)),
    ),
    policy=DestinationPolicy("DestinationRule demo/echo", TrafficPolicy(
        LoadBalancer("consistent_hash", hash_header="x-user"), ConnectionPool(10, 1, 5, 2),
        OutlierDetection(3, 0, 1.0, 180.0, 100)),
        subsets=(Subset("v1", (("version", "v1"),), ("uid-1",)),
                 Subset("v2", (("version", "v2"),), ("uid-2",), TrafficPolicy(LoadBalancer("random"))))),
    rate_limit=RateLimit("HTTPLocalRateLimitPolicy demo/rl", 100, 10,
                         (RateLimitOverride(("spiffe://cluster.local/ns/demo/sa/web",), 50),)),
)


def test_a_full_service_traffic_round_trips() -> None:
    pb = service_traffic_to_proto(FULL)
    again = service_traffic_from_proto(traffic_pb2.ServiceTraffic.FromString(pb.SerializeToString()))
    assert again == FULL


def test_no_routes_no_policy_round_trips_as_the_default() -> None:
    t = ServiceTraffic("demo", HOST)
    assert service_traffic_from_proto(service_traffic_to_proto(t)) == t


def _rule(**changes: object) -> Callable[[traffic_pb2.ServiceTraffic], None]:
    def edit(pb: traffic_pb2.ServiceTraffic) -> None:
        for path, value in changes.items():
            obj: object = pb.routes[0]
            *parents, leaf = path.split("__")
            for p in parents:
                obj = getattr(obj, p)
            setattr(obj, leaf, value)

    return edit


def _zero_weights(pb: traffic_pb2.ServiceTraffic) -> None:
    for b in pb.routes[0].backends:
        b.weight = 0


def _backend_on_redirect(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.routes[1].backends.add(namespace="demo", hostname=HOST, weight=1)


def _duplicate_subset(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.policy.subsets.add(name="v1")


def _header_upper(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.routes[0].matches[0].headers[0].name = "X-V"


def _bad_regex(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.routes[0].matches[0].headers[0].value = "(a"


def _backreference(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.routes[0].matches[0].path.kind = traffic_pb2.RoutePathMatch.REGEX
    pb.routes[0].matches[0].path.value = r"/(a)\1"


def _redirect_200(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.routes[1].redirect.status_code = 200


def _no_hostname(pb: traffic_pb2.ServiceTraffic) -> None:
    pb.hostname = ""


BAD = [
    pytest.param(_zero_weights, "service_traffic.routes[0].backends", id="a rule whose weights sum to zero is refused"),
    pytest.param(_backend_on_redirect, "service_traffic.routes[1].backends", id="a redirect with backends is refused"),
    pytest.param(_duplicate_subset, "service_traffic.policy.subsets[2].name", id="a subset named twice is refused"),
    pytest.param(_header_upper, "service_traffic.routes[0].matches[0].headers[0].name",
                 id="an upper-case header name is refused"),
    pytest.param(_bad_regex, "service_traffic.routes[0].matches[0].headers[0].value",
                 id="a regex that does not compile is refused"),
    pytest.param(_backreference, "service_traffic.routes[0].matches[0].path.value",
                 id="a regex with a backreference RE2 would refuse is refused"),
    pytest.param(_rule(fault__abort_percent=150.0), "service_traffic.routes[0].fault.abort_percent",
                 id="a fault percentage over 100 is refused"),
    pytest.param(_redirect_200, "service_traffic.routes[1].redirect.status_code",
                 id="a redirect status that is not a redirect is refused"),
    pytest.param(_no_hostname, "service_traffic.hostname", id="a resource without a hostname is refused"),
]


@pytest.mark.parametrize(("damage", "field"), BAD)
def test_bad_resources_are_refused_naming_the_field(
    damage: Callable[[traffic_pb2.ServiceTraffic], None], field: str
) -> None:
    pb = service_traffic_to_proto(FULL)
    damage(pb)
    with pytest.raises(ConversionError) as e:
        service_traffic_from_proto(pb)
    assert e.value.field == field


@pytest.mark.parametrize(("pattern", "refused"), [
    (r"/api/v[0-9]+", False), (r"(?=a)b", True), (r"(?<!a)b", True), (r"(a)\1", True), (r"a++", True),
    (r"(?>a)", True), (r"\\1", False), (r"[", True),
])
def test_regexes_are_checked_as_re2_would_accept_them(pattern: str, refused: bool) -> None:
    assert (regex_problem(pattern) is not None) == refused


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_decoded_or_refused_never_crash(raw: bytes) -> None:
    try:
        pb = traffic_pb2.ServiceTraffic.FromString(raw)
    except DecodeError:
        return
    try:
        service_traffic_from_proto(pb)
    except ConversionError:
        pass
