"""The waypoint's per-request decision: destination lookup, L7 policy, endpoint choice (table tests)."""

from __future__ import annotations

import pytest

from meshcore.identity import SpiffeId
from meshcore.model import Port
from meshcore.model.authorization import StringMatch
from meshcore.model.l7 import L7Action, L7Authorization, L7Operation, L7Rule, L7Source, L7Target, PathMatch
from meshcore.routing import SockAddr
from meshcore.state import ProxyState
from meshcore.state.kinds import EMPTY
from meshcore.testing import builders
from waypoint.decide import HboneEndpoint, Me, RoundRobin, decide
from waypoint.l7.model import ConnectionFacts, Forward, LocalResponse, Request
from waypoint.state import WaypointState

SLEEP_ID = SpiffeId("cluster.local", "default", "sleep")
OTHER_ID = SpiffeId("cluster.local", "other", "curl")
ME = Me("default/echo-waypoint", SpiffeId("cluster.local", "default", "echo-waypoint"))
ECHO_PORTS = {"default/echo.default.svc.cluster.local": (Port(service_port=80, target_port=8080),)}
ECHO1 = builders.workload("echo-1", "10.0.2.1", service_account="echo", services=ECHO_PORTS)
ECHO2 = builders.workload("echo-2", "10.0.2.2", service_account="echo", services=ECHO_PORTS)
SICK = builders.workload("echo-3", "10.0.2.3", service_account="echo", services=ECHO_PORTS, status=1)
SVC = builders.service("echo", "10.96.0.10", ports={80: 8080})
LONELY = builders.service("lonely", "10.96.0.11", ports={80: 8080})
SLEEP = builders.workload("sleep", "10.0.1.1")


def _allow_get_root(target: L7Target) -> L7Authorization:
    op = L7Operation(methods=(StringMatch("exact", "GET"),), paths=(PathMatch("exact", "/"),))
    return L7Authorization("get-only", "default", L7Action.ALLOW, targets=(target,), rules=(L7Rule(operations=(op,)),))


def _deny_from(principal: str) -> L7Authorization:
    src = L7Source(principals=(StringMatch("exact", principal),))
    return L7Authorization("deny-curl", "default", L7Action.DENY,
                           targets=(L7Target("gateway", "default/echo-waypoint"),), rules=(L7Rule(sources=(src,)),))


def state(*policies: L7Authorization, workloads=(ECHO1, ECHO2, SICK, SLEEP)) -> WaypointState:
    proxy = ProxyState.of(*workloads, SVC, LONELY)
    return WaypointState(proxy, {p.key: p for p in policies} if policies else EMPTY)


def request(dst: str, method: str = "GET", path: str = "/", identity: SpiffeId | None = SLEEP_ID) -> Request:
    return Request(method, "http", "echo", path, (("x-request-id", "r1"),), "1.1", "r1",
                   ConnectionFacts(source_ip="10.0.1.1", source_port=40000, destination=dst, peer_identity=identity))


SERVICE_POLICY = _allow_get_root(L7Target("service", "echo.default.svc.cluster.local"))
GATEWAY_POLICY = _allow_get_root(L7Target("gateway", "default/echo-waypoint"))
OTHER_GATEWAY_POLICY = _allow_get_root(L7Target("gateway", "default/another-waypoint"))

CASES = [
    ("a request with no policies is forwarded to an endpoint", (), request("10.96.0.10:80"), 0, None),
    ("GET / allowed by a service policy is forwarded", (SERVICE_POLICY,), request("10.96.0.10:80"), 0, None),
    ("POST denied by a service policy gets 403", (SERVICE_POLICY,), request("10.96.0.10:80", "POST"), 403, "-"),
    ("another path denied by a gateway policy gets 403", (GATEWAY_POLICY,), request("10.96.0.10:80", path="/x"),
     403, "-"),
    ("a policy of another waypoint does not apply here", (OTHER_GATEWAY_POLICY,),
     request("10.96.0.10:80", "POST"), 0, None),
    ("a DENY naming the client's principal gets 403", (_deny_from("cluster.local/ns/other/sa/curl"),),
     request("10.96.0.10:80", identity=OTHER_ID), 403, "-"),
    ("a DENY naming someone else lets the request through", (_deny_from("cluster.local/ns/other/sa/curl"),),
     request("10.96.0.10:80"), 0, None),
    ("an unknown destination is 404 no route", (), request("10.99.9.9:80"), 404, "NR"),
    ("a port the service does not expose is 404 no route", (), request("10.96.0.10:81"), 404, "NR"),
    ("a service without usable endpoints is 503 UH", (), request("10.96.0.11:80"), 503, "UH"),
    ("an unreadable tunnel destination is 404", (), request("not-an-address"), 404, "NR"),
]


@pytest.mark.parametrize(("policies", "req", "status", "flags"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(policies, req, status, flags):
    routed = decide(state(*policies), ME, req, RoundRobin())
    if status == 0:
        assert isinstance(routed.decision, Forward), routed
    else:
        assert isinstance(routed.decision, LocalResponse), routed
        assert (routed.decision.status, routed.decision.response_flags) == (status, flags)
    if status == 403:
        assert routed.decision.body == b"RBAC: access denied"


def test_requests_to_a_service_alternate_between_healthy_endpoints_and_translate_the_port():
    pick = RoundRobin()
    chosen = []
    for _ in range(4):
        routed = decide(state(), ME, request("10.96.0.10:80"), pick)
        assert isinstance(routed.decision, Forward)
        endpoint = routed.decision.endpoint
        assert isinstance(endpoint, HboneEndpoint)
        chosen.append(endpoint.authority)
        assert endpoint.hbone == SockAddr(endpoint.authority.ip, 15008)
        assert endpoint.identities[0] == SpiffeId("cluster.local", "default", "echo")
    assert chosen == [SockAddr("10.0.2.1", 8080), SockAddr("10.0.2.2", 8080)] * 2  # never the unhealthy one


def test_a_workload_addressed_request_goes_to_that_workload_as_dialled():
    routed = decide(state(), ME, request("10.0.2.2:8080"), RoundRobin())
    assert isinstance(routed.decision, Forward)
    assert routed.decision.endpoint == HboneEndpoint(
        SockAddr("10.0.2.2", 8080), SockAddr("10.0.2.2", 15008), (SpiffeId("cluster.local", "default", "echo"),)
    )
    assert routed.workload == ECHO2 and routed.service is None


def test_a_denial_names_the_policy_in_its_detail():
    routed = decide(state(_deny_from("cluster.local/ns/other/sa/curl")), ME,
                    request("10.96.0.10:80", identity=OTHER_ID), RoundRobin())
    assert routed.detail == "rbac_access_denied_matched_policy[default/deny-curl]"
