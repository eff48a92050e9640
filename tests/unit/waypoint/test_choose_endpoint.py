"""Endpoint choice with an EndpointChooser: subsets, load balancers, ejection, alternatives for retries."""

from __future__ import annotations

import random

import pytest

from meshcore.model import Port
from meshcore.model.traffic import LoadBalancer, OutlierDetection, Subset, TrafficPolicy
from meshcore.routing import service_endpoints, service_port
from meshcore.state import ProxyState
from meshcore.testing import builders
from meshcore.testing.clock import FakeClock
from waypoint.decide import choose_endpoint
from waypoint.l7.model import ConnectionFacts, Forward, LocalResponse, Request
from waypoint.resilience.chooser import EndpointChooser
from waypoint.resilience.policies import outlier_policy
from waypoint.resilience.retry import Outcome

PORTS = {"default/echo.default.svc.cluster.local": (Port(service_port=80, target_port=8080),)}
V1 = [builders.workload(f"echo-v1-{i}", f"10.0.2.{i}", service_account="echo", services=PORTS) for i in (1, 2)]
V2 = builders.workload("echo-v2", "10.0.2.9", service_account="echo", services=PORTS)
SVC = builders.service("echo", "10.96.0.10", ports={80: 8080})
STATE = ProxyState.of(*V1, V2, SVC)
USABLE, _ = service_endpoints(STATE, SVC, service_port(SVC, 80), network="")
V2_SUBSET = Subset("v2", (("version", "v2"),), (V2.uid,))


def _request(user: str | None = None) -> Request:
    headers = (("x-user", user),) if user else ()
    return Request("GET", "http", "echo", "/", headers, "1.1", "r1", ConnectionFacts(source_ip="10.0.1.1"))


def _chooser() -> tuple[EndpointChooser, FakeClock]:
    clock = FakeClock()
    return EndpointChooser(rng=random.Random(0), clock=clock.monotonic), clock


def _ip(routed) -> str:
    assert isinstance(routed.decision, Forward)
    return routed.decision.endpoint.authority.ip


def test_a_subset_keeps_only_its_workloads_and_is_its_own_pool():
    chooser, _ = _chooser()
    routed = [choose_endpoint(SVC, USABLE, _request(), chooser, subset=V2_SUBSET) for _ in range(4)]
    assert {_ip(r) for r in routed} == {"10.0.2.9"}
    assert routed[0].pool == f"{SVC.key}/v2" and routed[0].workload == V2


def test_a_subset_without_usable_endpoints_is_503_uh_with_its_name():
    chooser, _ = _chooser()
    routed = choose_endpoint(SVC, USABLE, _request(), chooser, subset=Subset("v3", (), ("nobody",)))
    assert isinstance(routed.decision, LocalResponse) and routed.decision.response_flags == "UH"
    assert "'v3'" in routed.detail


def test_a_consistent_hash_on_a_header_sends_a_user_to_one_endpoint():
    chooser, _ = _chooser()
    policy = TrafficPolicy(load_balancer=LoadBalancer("consistent_hash", hash_header="X-User"))
    for user in ("alice", "bob", "carol"):
        seen = {_ip(choose_endpoint(SVC, USABLE, _request(user), chooser, traffic=policy)) for _ in range(5)}
        assert len(seen) == 1


@pytest.mark.parametrize(("retries", "alternatives"), [
    pytest.param(0, 0, id="without retries there are no alternatives"),
    pytest.param(1, 1, id="one retry gets one other endpoint"),
    pytest.param(5, 2, id="never more alternatives than other endpoints"),
])
def test_alternatives_for_retries(retries, alternatives):
    chooser, _ = _chooser()
    routed = choose_endpoint(SVC, USABLE, _request(), chooser, retries=retries)
    forward = routed.decision
    assert isinstance(forward, Forward) and len(forward.alternatives) == alternatives
    assert forward.endpoint not in {a.endpoint for a in forward.alternatives}
    assert set(routed.workloads) == {str(forward.endpoint.authority), *(a.label for a in forward.alternatives)}


def test_ejected_endpoints_are_skipped_and_all_ejected_is_503_uh():
    chooser, clock = _chooser()
    policy = TrafficPolicy(outlier_detection=OutlierDetection(consecutive_5xx_errors=1, max_ejection_percent=100))
    pool = SVC.key
    od = outlier_policy(policy.outlier_detection)
    chooser.observe(pool, "10.0.2.1:8080", Outcome.response(500), od, 3)
    assert {_ip(choose_endpoint(SVC, USABLE, _request(), chooser, traffic=policy)) for _ in range(6)} == {
        "10.0.2.2", "10.0.2.9"}
    for key in ("10.0.2.2:8080", "10.0.2.9:8080"):
        chooser.observe(pool, key, Outcome.response(500), od, 3)
    routed = choose_endpoint(SVC, USABLE, _request(), chooser, traffic=policy)
    assert isinstance(routed.decision, LocalResponse) and routed.decision.status == 503
    assert "ejected" in routed.detail
    clock.advance(30)
    assert isinstance(choose_endpoint(SVC, USABLE, _request(), chooser, traffic=policy).decision, Forward)
