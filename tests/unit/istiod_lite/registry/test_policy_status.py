"""AuthorizationPolicy status conditions as a pure decision: a policy (and the cluster's waypoints, Services
and bindings) in, ``ZtunnelAccepted``/``WaypointAccepted`` with Istio's reasons out; ``merge_status`` writes
observedGeneration and keeps lastTransitionTime while a condition's status holds, so a second computation
writes nothing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from istiod_lite.registry import compute
from istiod_lite.registry.policy_status import (
    WAYPOINT_ACCEPTED,
    ZTUNNEL_ACCEPTED,
    PolicyCondition,
    merge_status,
    policy_conditions,
    policy_facts,
)
from meshcore.store.resource import Resource
from meshcore.testing.resources import AMBIENT, authz, ns, pod, svc, waypoint

USE_WAYPOINT = {"istio.io/use-waypoint": "waypoint"}

CLUSTER = compute(
    [
        ns("demo", **AMBIENT),
        waypoint("waypoint", address="10.96.100.1"),
        waypoint("pending", address=None),
        waypoint("broken", listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}]),
        msgspec.structs.replace(svc("bound", selector={"app": "bound"}, clusterIP="10.96.0.2"), labels=USE_WAYPOINT),
        svc("plain", selector={"app": "plain"}, clusterIP="10.96.0.3"),
        pod("bound-1", labels={"app": "bound"}),
    ]
)


def conditions(policy: Resource) -> dict[str, tuple[bool, str, str]]:
    found = policy_conditions(
        policy_facts(policy, root_namespace="istio-system"),
        waypoints=CLUSTER.waypoints,
        services=CLUSTER.services,
        bindings=CLUSTER.waypoint_bindings,
    )
    return {c.type: (c.status, c.reason, c.message) for c in found}


def gw(name: str) -> dict[str, str]:
    return {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}


def service(name: str) -> dict[str, str]:
    return {"kind": "Service", "name": name}


SELECT = {"matchLabels": {"app": "bound"}}

ZTUNNEL_ROWS = [
    pytest.param(
        {"selector": SELECT, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/a"]}}]}]},
        (True, "Accepted", "enforced by ztunnel"),
        id="an L4 selector policy is accepted as written",
    ),
    pytest.param({}, (True, "Accepted", "enforced by ztunnel"), id="a namespace-wide allow-nothing policy is accepted"),
    pytest.param(
        {"selector": SELECT, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        (True, "UnsupportedValue", "rules matching HTTP attributes are omitted"),
        id="HTTP fields in an ALLOW rule omit the rule and say it is stricter",
    ),
    pytest.param(
        {
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["other"]}}]}, {"to": [{"operation": {"paths": ["/a"]}}]}],
        },
        (True, "UnsupportedValue", "enforced without the HTTP rules"),
        id="HTTP fields in a DENY are dropped and its L4 rule still denies",
    ),
    pytest.param(
        {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
        (False, "UnsupportedValue", "no effect"),
        id="a DENY left with no enforceable rule is not accepted",
    ),
    pytest.param(
        {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]},
        (False, "UnsupportedValue", "ext-authz providers are not supported"),
        id="the CUSTOM action is not accepted and the fix is named",
    ),
    pytest.param(
        {"action": "AUDIT", "rules": [{}]},
        (False, "UnsupportedValue", "bind it to a waypoint with targetRefs"),
        id="the AUDIT action is not accepted and points to a waypoint",
    ),
    pytest.param(
        {"action": "REJECT"},
        (False, "InvalidValue", "fix spec.action"),
        id="an unknown action is not accepted",
    ),
    pytest.param(
        {"selector": SELECT, "rules": [{"from": [{"source": {"principal": ["x"]}}]}]},
        (True, "InvalidValue", "unknown field(s) 'principal'"),
        id="an unreadable ALLOW rule is omitted and named",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), ZTUNNEL_ROWS)
def test_ztunnel_accepted(spec: dict[str, Any], expected: tuple[bool, str, str]) -> None:
    got = conditions(authz("p", **spec))
    assert set(got) == {ZTUNNEL_ACCEPTED}
    status, reason, message = got[ZTUNNEL_ACCEPTED]
    assert (status, reason) == expected[:2]
    assert expected[2] in message


WAYPOINT_ROWS = [
    pytest.param([gw("waypoint")], (True, "Accepted", "bound to waypoint demo/waypoint"), id="a waypoint Gateway binds"),
    pytest.param(
        [gw("pending")], (True, "Accepted", "not ready yet"), id="a waypoint not yet programmed binds and says so"
    ),
    pytest.param(
        [gw("missing")],
        (False, "TargetNotFound", "ambientctl waypoint apply -n demo --name missing"),
        id="a missing waypoint Gateway is not found and the fix is named",
    ),
    pytest.param(
        [gw("broken")], (False, "TargetNotFound", "not a usable waypoint"), id="a refused Gateway is no waypoint"
    ),
    pytest.param(
        [service("bound")],
        (True, "Accepted", "bound to waypoint demo/waypoint through Service demo/bound"),
        id="a Service bound to a waypoint binds",
    ),
    pytest.param(
        [service("plain")],
        (False, "AncestorNotBound", "istio.io/use-waypoint=<waypoint name>"),
        id="a Service without a waypoint is not bound and the label to add is named",
    ),
    pytest.param(
        [service("nowhere")], (False, "TargetNotFound", "Service demo/nowhere was not found"), id="a missing Service"
    ),
    pytest.param(
        [gw("waypoint"), service("plain")],
        (True, "PartiallyInvalid", "not enforced for: Service demo/plain"),
        id="one bound target of two is partially invalid",
    ),
    pytest.param(
        [gw("missing"), service("plain")],
        (False, "Invalid", "waypoint Gateway demo/missing was not found"),
        id="no bound target of two is invalid",
    ),
    pytest.param(
        [gw("waypoint"), {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}],
        (True, "PartiallyInvalid", "GatewayClass targets"),
        id="a refused targetRef beside a bound one is partially invalid",
    ),
    pytest.param(
        [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ext"}],
        (False, "Invalid", "no usable targetRef"),
        id="no usable targetRef is invalid",
    ),
]


@pytest.mark.parametrize(("targets", "expected"), WAYPOINT_ROWS)
def test_waypoint_accepted(targets: list[dict[str, str]], expected: tuple[bool, str, str]) -> None:
    got = conditions(authz("p", targetRefs=targets, rules=[{"to": [{"operation": {"methods": ["GET"]}}]}]))
    assert set(got) == {WAYPOINT_ACCEPTED}
    status, reason, message = got[WAYPOINT_ACCEPTED]
    assert (status, reason) == expected[:2], message
    assert expected[2] in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]},
            (True, "UnsupportedValue", "requests matching its rules are denied"),
            id="CUSTOM at a bound waypoint is enforced as a DENY and says so",
        ),
        pytest.param(
            {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
            (True, "UnsupportedValue", "no RequestAuthentication"),
            id="a JWT field drops the ALLOW rule at a bound waypoint and says so",
        ),
        pytest.param(
            {"rules": [{"to": [{"operation": {"methods": "GET"}}]}]},
            (True, "InvalidValue", "must be a list"),
            id="an unreadable rule at a bound waypoint is named",
        ),
    ],
)
def test_rules_a_bound_waypoint_cannot_enforce_as_written(
    spec: dict[str, Any], expected: tuple[bool, str, str]
) -> None:
    status, reason, message = conditions(authz("p", targetRefs=[gw("waypoint")], **spec))[WAYPOINT_ACCEPTED]
    assert (status, reason) == expected[:2], message
    assert message.startswith("bound to waypoint demo/waypoint") and expected[2] in message


def test_a_dropped_rule_on_an_unbound_target_keeps_the_binding_reason() -> None:
    status, reason, message = conditions(
        authz("p", targetRefs=[service("plain")], rules=[{"from": [{"source": {"requestPrincipals": ["*"]}}]}])
    )[WAYPOINT_ACCEPTED]
    assert (status, reason) == (False, "AncestorNotBound")
    assert "no RequestAuthentication" in message


ACCEPTED = PolicyCondition(ZTUNNEL_ACCEPTED, True, "Accepted", "enforced by ztunnel as written")
DROPPED = PolicyCondition(ZTUNNEL_ACCEPTED, True, "UnsupportedValue", "rule omitted")
NOT_ENFORCED = PolicyCondition(ZTUNNEL_ACCEPTED, False, "UnsupportedValue", "CUSTOM")


def test_merge_writes_generation_and_time_then_nothing_the_second_time() -> None:
    first = merge_status({}, [ACCEPTED], generation=3, now="T1")
    assert first == {
        "conditions": [
            {
                "type": ZTUNNEL_ACCEPTED,
                "status": "True",
                "observedGeneration": 3,
                "lastTransitionTime": "T1",
                "reason": "Accepted",
                "message": "enforced by ztunnel as written",
            }
        ]
    }
    assert merge_status(first, [ACCEPTED], generation=3, now="T2") is None


@pytest.mark.parametrize(
    ("new", "generation", "time"),
    [
        pytest.param(DROPPED, 3, "T1", id="a new reason with the same status keeps the transition time"),
        pytest.param(ACCEPTED, 4, "T1", id="a new generation with the same status keeps the transition time"),
        pytest.param(NOT_ENFORCED, 3, "T2", id="a status change takes the new time"),
    ],
)
def test_merge_transition_time(new: PolicyCondition, generation: int, time: str) -> None:
    first = merge_status({}, [ACCEPTED], generation=3, now="T1")
    assert first is not None
    second = merge_status(first, [new], generation=generation, now="T2")
    assert second is not None
    (cond,) = second["conditions"]
    assert (cond["lastTransitionTime"], cond["observedGeneration"], cond["reason"]) == (time, generation, new.reason)


def test_merge_keeps_other_conditions_and_fields_and_drops_ours_no_longer_computed() -> None:
    foreign = {"type": "example.com/Audited", "status": "True", "reason": "Seen", "message": ""}
    old = {"validationMessages": [], "conditions": [foreign, {"type": WAYPOINT_ACCEPTED, "status": "True"}]}
    new = merge_status(old, [ACCEPTED], generation=1, now="T")
    assert new is not None
    assert new["validationMessages"] == [] and new["conditions"][0] == foreign
    assert [c["type"] for c in new["conditions"]] == ["example.com/Audited", ZTUNNEL_ACCEPTED]


def test_a_policy_with_target_refs_gets_no_ztunnel_condition_and_one_without_no_waypoint_condition() -> None:
    assert set(conditions(authz("a", targetRefs=[gw("waypoint")]))) == {WAYPOINT_ACCEPTED}
    assert set(conditions(authz("b", selector=SELECT))) == {ZTUNNEL_ACCEPTED}
