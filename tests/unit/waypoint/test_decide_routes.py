"""Route selection in the waypoint's decision: rules pick the backend service and subset, redirects and
unmatched requests are answered here, header edits and rewrites ride on the Forward."""

from __future__ import annotations

import random

import pytest

from meshcore.identity import SpiffeId
from meshcore.model import Port
from meshcore.model.traffic import (
    BackendRef,
    DestinationPolicy,
    HeaderModifier,
    PathMatch,
    PathRewrite,
    Redirect,
    RouteMatch,
    RouteRule,
    ServiceTraffic,
    Subset,
    UrlRewrite,
    ValueMatch,
)
from meshcore.state import ProxyState
from meshcore.testing import builders
from waypoint.decide import Me, RoundRobin, Routed, decide
from waypoint.l7.model import ConnectionFacts, Forward, LocalResponse, Request
from waypoint.state import WaypointState

ME = Me("demo/waypoint", SpiffeId("cluster.local", "demo", "waypoint"))
ECHO = "demo/echo.demo.svc.cluster.local"
V2_SVC = "demo/echo-v2.demo.svc.cluster.local"


def _ports(key: str) -> dict[str, tuple[Port, ...]]:
    return {key: (Port(80, 8080),)}


E1 = builders.workload("echo-1", "10.0.2.1", namespace="demo", services=_ports(ECHO), canonical_revision="v1")
E2 = builders.workload("echo-2", "10.0.2.2", namespace="demo", services=_ports(ECHO), canonical_revision="v2")
E3 = builders.workload("echo-v2-1", "10.0.2.3", namespace="demo", services=_ports(V2_SVC))
SERVICES = (builders.service("echo", "10.96.0.10", {80: 8080}, namespace="demo"),
            builders.service("echo-v2", "10.96.0.12", {80: 8080}, namespace="demo"))


def header_v2(name: str = "x-version") -> RouteMatch:
    return RouteMatch(path=PathMatch("prefix", "/"), headers=(ValueMatch(name, "exact", "v2"),))


TRAFFIC = ServiceTraffic("demo", "echo.demo.svc.cluster.local", routes=(
    RouteRule("HTTPRoute demo/old", matches=(RouteMatch(path=PathMatch("exact", "/old")),),
              redirect=Redirect(path=PathRewrite("full", "/new"), status_code=301)),
    RouteRule("HTTPRoute demo/v2-service", matches=(header_v2("x-service"),),
              backends=(BackendRef("demo", "echo-v2.demo.svc.cluster.local", 80),)),
    RouteRule("HTTPRoute demo/v2-subset", matches=(header_v2(),),
              backends=(BackendRef("demo", "echo.demo.svc.cluster.local", 80, "v2"),),
              request_headers=HeaderModifier(set=(("x-routed", "v2"),)),
              response_headers=HeaderModifier(add=(("x-served-by", "v2"),)),
              rewrite=UrlRewrite("", PathRewrite("full", "/v2"))),
    RouteRule("HTTPRoute demo/missing-subset", matches=(header_v2("x-missing"),),
              backends=(BackendRef("demo", "echo.demo.svc.cluster.local", 80, "v9"),)),
    RouteRule("HTTPRoute demo/api", matches=(RouteMatch(path=PathMatch("prefix", "/api")),),
              backends=(BackendRef("demo", "echo.demo.svc.cluster.local", 80),)),
), policy=DestinationPolicy("DestinationRule demo/echo", subsets=(Subset("v2", (("version", "v2"),), (E2.uid,)),)))

STATE = WaypointState(ProxyState.of(E1, E2, E3, *SERVICES), traffic={ECHO: TRAFFIC})


def req(path: str = "/api", **headers: str) -> Request:
    return Request("GET", "http", "echo", path, tuple((k.replace("_", "-"), v) for k, v in headers.items()), "1.1",
                   "r1", ConnectionFacts(source_ip="10.0.1.1", destination="10.96.0.10:80"))


def run(request: Request) -> Routed:
    return decide(STATE, ME, request, RoundRobin(), rand=random.Random(0).random)


def test_a_header_match_sends_to_the_subset_with_its_edits() -> None:
    routed = run(req(x_version="v2"))
    forward = routed.decision
    assert isinstance(forward, Forward)
    assert routed.workload == E2 and str(forward.endpoint) == "10.0.2.2:8080"
    assert forward.set_headers == (("x-routed", "v2"),) and forward.response_add_headers == (("x-served-by", "v2"),)
    assert forward.path == "/v2"
    assert routed.route is not None and routed.route.origin == "HTTPRoute demo/v2-subset"


def test_a_backend_of_another_service_uses_that_service_endpoints() -> None:
    routed = run(req(x_service="v2"))
    assert isinstance(routed.decision, Forward) and routed.workload == E3
    assert routed.service is not None and routed.service.key == V2_SVC


@pytest.mark.parametrize(("request_", "status", "flags"), [
    pytest.param(req("/nothing"), 404, "NR", id="a request no rule matches is 404 no route"),
    pytest.param(req(x_missing="v2"), 503, "NC", id="a subset no DestinationRule defines is 503 NC"),
])
def test_requests_without_a_usable_route_are_answered_here(request_: Request, status: int, flags: str) -> None:
    decision = run(request_).decision
    assert isinstance(decision, LocalResponse) and (decision.status, decision.response_flags) == (status, flags)


def test_a_redirect_is_answered_here_with_its_location() -> None:
    decision = run(req("/old?x=1")).decision
    assert isinstance(decision, LocalResponse)
    assert decision.status == 301 and ("location", "http://echo/new?x=1") in decision.headers


def test_requests_of_one_route_still_balance_over_the_service_endpoints() -> None:
    pick = RoundRobin()
    chosen = set()
    for _ in range(4):
        workload = decide(STATE, ME, req(), pick).workload
        assert workload is not None
        chosen.add(workload.uid)
    assert chosen == {E1.uid, E2.uid}
