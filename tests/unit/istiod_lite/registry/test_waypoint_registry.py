"""Waypoint binding inside the registry: full compute and incremental updates agree, and fill the models.

The property test drives random batches of waypoint Gateways (programmed or not, per service account or
not, refused), pods and Services with ``istio.io/use-waypoint`` labels and namespaces with them through
``update`` and checks every snapshot (bindings, problems, debug views) against a full ``compute``.
"""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istiod_lite.registry import SERVICE, WORKLOAD, RegistrySnapshot, Severity, compute, diff
from istiod_lite.registry.errors import Reason
from istiod_lite.registry.incremental import build, empty, update
from istiod_lite.registry.index import diff_l7
from meshcore.model import GatewayAddress, NetworkAddress
from meshcore.store.resource import Resource, ResourceRef
from meshcore.testing.resources import AMBIENT, authz, ns, pod, svc, waypoint
from meshcore.testing.resources import pod_uid as uid

SERVER = "demo/server.demo.svc.cluster.local"


def assert_same(incremental: RegistrySnapshot, full: RegistrySnapshot) -> None:
    assert dict(incremental.workloads) == dict(full.workloads)
    assert dict(incremental.services) == dict(full.services)
    assert Counter(incremental.problems) == Counter(full.problems)
    assert dict(incremental.waypoints) == dict(full.waypoints)
    assert dict(incremental.waypoint_bindings) == dict(full.waypoint_bindings)
    assert dict(incremental.l7_policies) == dict(full.l7_policies)


def at(ip: str) -> GatewayAddress:
    return GatewayAddress(address=NetworkAddress(ip, ""), hbone_mtls_port=15008)


# --- property: incremental == full compute ----------------------------------------------------------------

NAMESPACES = ("a", "b")
USE = st.sampled_from(
    (
        {},
        {"istio.io/use-waypoint": "w1"},
        {"istio.io/use-waypoint": "w2"},
        {"istio.io/use-waypoint": "none"},
        {"istio.io/use-waypoint": "w1", "istio.io/use-waypoint-namespace": "b"},
        {"gateway.networking.k8s.io/gateway-name": "w1"},
    )
)


def gateways() -> st.SearchStrategy[Resource]:
    listeners = st.sampled_from(
        (
            None,
            [],
            [
                {
                    "name": "mesh",
                    "port": 15008,
                    "protocol": "HBONE",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        )
    )
    labels = st.sampled_from(
        (
            {},
            {"istio.io/waypoint-for": "all"},
            {"istio.io/waypoint-for": "workload"},
            {"istio.io/waypoint-for": "x"},
        )
    )
    annotations = st.sampled_from(
        ({}, {"istio.io/for-service-account": "web"}, {"istio.io/for-service-account": "db"})
    )
    return st.builds(
        lambda name, namespace, address, ls, annot, lst: waypoint(
            name, namespace, address=address, labels=ls, annotations=annot, listeners=lst
        ),
        st.sampled_from(("w1", "w2")),
        st.sampled_from(NAMESPACES),
        st.sampled_from(("10.96.9.1", "10.96.9.2", None)),
        labels,
        annotations,
        listeners,
    )


def pods() -> st.SearchStrategy[Resource]:
    return st.builds(
        pod,
        st.sampled_from(("p1", "p2", "p3")),
        st.sampled_from(NAMESPACES),
        labels=st.builds(lambda app, use: {**app, **use}, st.sampled_from(({"app": "x"}, {"app": "y"})), USE),
        sa=st.sampled_from(("web", "db")),
        ip=st.sampled_from(("10.0.0.1", None)),
    )


def services() -> st.SearchStrategy[Resource]:
    return st.builds(
        lambda name, namespace, selector, labels: msgspec.structs.replace(
            svc(name, namespace, selector=selector, clusterIP="10.96.0.1"), labels=labels
        ),
        st.sampled_from(("s1", "s2")),
        st.sampled_from(NAMESPACES),
        st.sampled_from(({"app": "x"}, {"app": "y"}, None)),
        USE,
    )


def namespaces() -> st.SearchStrategy[Resource]:
    return st.builds(
        lambda name, labels: ns(name, **labels),
        st.sampled_from(NAMESPACES),
        st.sampled_from(
            (
                {},
                AMBIENT,
                {"istio.io/use-waypoint": "w1"},
                {"istio.io/use-waypoint": "w2", "istio.io/use-waypoint-namespace": "b"},
                {"istio.io/use-waypoint": "none"},
            )
        ),
    )


def l7_policies() -> st.SearchStrategy[Resource]:
    targets = st.sampled_from(
        (
            [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w1"}],
            [{"kind": "Service", "group": "", "name": "s1"}],
            [{"kind": "Nope", "name": "x"}],
            None,
        )
    )
    rules = st.sampled_from(([{"to": [{"operation": {"methods": ["GET"]}}]}], [{"when": "bad"}], []))
    return st.builds(
        lambda name, namespace, refs, rs: authz(
            name, namespace, **({"targetRefs": refs} if refs is not None else {}), rules=rs
        ),
        st.sampled_from(("l1", "l2")),
        st.sampled_from(NAMESPACES),
        targets,
        rules,
    )


OP = st.one_of(gateways(), pods(), services(), namespaces(), l7_policies()).flatmap(
    lambda r: st.sampled_from((r, r.ref))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(OP, min_size=1, max_size=4), min_size=1, max_size=12))
def test_any_sequence_of_waypoint_changes_equals_a_full_compute(
    batches: list[list[Resource | ResourceRef]],
) -> None:
    current: dict[ResourceRef, Resource] = {}
    state = empty()
    for batch in batches:
        folded: dict[ResourceRef, Resource | None] = {}
        for op in batch:
            if isinstance(op, Resource):
                folded[op.ref] = op
            else:
                folded[op] = None
        changed = [r for r in folded.values() if r is not None]
        deleted = [ref for ref, r in folded.items() if r is None]
        for ref, r in folded.items():
            if r is None:
                current.pop(ref, None)
            else:
                current[ref] = r
        new_state, changes, removals = update(state, changed, deleted)
        full = compute(current.values())
        assert_same(new_state.snapshot, full)
        assert (changes, removals) == diff(state.snapshot, new_state.snapshot)
        l7_changed, l7_removed = new_state.l7_changes
        assert (dict(l7_changed), set(l7_removed)) == diff_l7(state.snapshot, new_state.snapshot)
        assert Counter(p.severity for p in full.problems) == Counter(dict(new_state.problem_counts))
        state = new_state


# --- what binding does to the models ----------------------------------------------------------------------


def per_sa_cluster() -> list[Resource]:
    return [
        ns("demo", **AMBIENT),
        pod("server-1", labels={"app": "server"}, sa="server", ip="10.0.0.1"),
        pod("server-2", labels={"app": "server"}, sa="server", ip="10.0.0.2"),
        pod("client", labels={"app": "client"}, sa="client", ip="10.0.0.3"),
        svc("server", selector={"app": "server"}, clusterIP="10.96.0.1"),
        svc("client", selector={"app": "client"}, clusterIP="10.96.0.2"),
    ]


def test_a_per_sa_waypoint_binds_its_accounts_workloads_and_services_only() -> None:
    state = build(per_sa_cluster())
    state, changes, _ = update(
        state,
        [waypoint("server-wp", address="10.96.5.5", annotations={"istio.io/for-service-account": "server"})],
        [],
    )
    assert set(changes[WORKLOAD]) == {uid("demo", "server-1"), uid("demo", "server-2")}
    assert set(changes[SERVICE]) == {SERVER}
    snap = state.snapshot
    assert snap.workloads[uid("demo", "server-1")].waypoint == at("10.96.5.5")
    assert snap.services[SERVER].waypoint == at("10.96.5.5")
    assert snap.workloads[uid("demo", "client")].waypoint is None
    assert snap.services["demo/client.demo.svc.cluster.local"].waypoint is None
    assert snap.waypoint_bindings[SERVER].gateway == "demo/server-wp"


def test_a_service_gains_a_second_account_and_loses_its_per_sa_waypoint_saying_why() -> None:
    gw = waypoint("server-wp", address="10.96.5.5", annotations={"istio.io/for-service-account": "server"})
    state = build([*per_sa_cluster(), gw])
    assert state.snapshot.services[SERVER].waypoint == at("10.96.5.5")
    state, changes, _ = update(state, [pod("odd", labels={"app": "server"}, sa="client", ip="10.0.0.9")], [])
    assert changes[SERVICE][SERVER].waypoint is None
    assert "several service accounts (client, server)" in state.snapshot.waypoint_bindings[SERVER].reason
    state, changes, _ = update(state, [], [ResourceRef("Pod", "demo", "odd")])
    assert changes[SERVICE][SERVER].waypoint == at("10.96.5.5")
    assert_same(state.snapshot, compute([*per_sa_cluster(), gw]))


def test_nothing_binds_to_a_waypoint_until_it_has_an_address_and_removal_unbinds() -> None:
    cluster = [*per_sa_cluster(), ns("demo", **AMBIENT, **{"istio.io/use-waypoint": "waypoint"})]
    state = build([*cluster, waypoint(address=None)])
    assert state.snapshot.services[SERVER].waypoint is None
    assert "not ready" in state.snapshot.waypoint_bindings[SERVER].reason
    assert [p.reason for p in state.snapshot.problems] == [Reason.WAYPOINT_NOT_READY]
    state, changes, _ = update(state, [waypoint(address="10.96.7.7")], [])
    assert {k: v.waypoint for k, v in changes[SERVICE].items()} == {
        SERVER: at("10.96.7.7"),
        "demo/client.demo.svc.cluster.local": at("10.96.7.7"),
    }
    assert changes[WORKLOAD] == {}  # waypoint-for defaults to service
    state, changes, _ = update(state, [], [ResourceRef("Gateway", "demo", "waypoint")])
    assert all(s.waypoint is None for s in changes[SERVICE].values()) and len(changes[SERVICE]) == 2
    problems = state.snapshot.problems
    assert [(p.ref, p.reason, p.severity) for p in problems] == [
        (ResourceRef("Namespace", "", "demo"), Reason.WAYPOINT_NOT_FOUND, Severity.WARNING)
    ]


def test_gateway_status_conditions_alone_touch_nothing() -> None:
    gw = waypoint(address="10.96.7.7")
    state = build([*per_sa_cluster(), ns("demo", **AMBIENT, **{"istio.io/use-waypoint": "waypoint"}), gw])
    conditions = {**gw.status, "conditions": [{"type": "Programmed", "status": "True"}]}
    _, changes, removals = update(state, [msgspec.structs.replace(gw, status=conditions)], [])
    assert all(not c for c in changes.values()) and all(not r for r in removals.values())


def test_the_waypoints_own_pod_is_never_bound() -> None:
    own = pod(
        "waypoint-0",
        labels={"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none"},
        sa="waypoint",
        ip="10.0.0.50",
    )
    wp = waypoint(address="10.96.7.7", labels={"istio.io/waypoint-for": "all"})
    state = build([ns("demo", **{"istio.io/use-waypoint": "waypoint"}), own, wp, pod("app", ip="10.0.0.4")])
    assert state.snapshot.workloads[uid("demo", "waypoint-0")].waypoint is None
    assert state.snapshot.workloads[uid("demo", "app")].waypoint == at("10.96.7.7")


def test_a_policy_targeting_a_waypoint_compiles_for_waypoints_and_leaves_with_its_deletion() -> None:
    policy = authz(
        "get-only",
        targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
        rules=[{"to": [{"operation": {"methods": ["GET"]}}]}],
    )
    state = build(per_sa_cluster())
    state, _, _ = update(state, [policy], [])
    changed, removed = state.l7_changes
    assert set(changed) == {"demo/get-only"} and not removed
    assert "demo/get-only" not in state.snapshot.policies  # not ztunnel's
    state, _, _ = update(state, [], [policy.ref])
    assert state.l7_changes[1] == {"demo/get-only"} and state.snapshot.l7_policies == {}
