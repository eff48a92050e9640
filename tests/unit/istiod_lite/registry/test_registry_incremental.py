"""Incremental registry updates: the same result as a full compute, with only the affected models touched.

The property test drives random sequences of applies and deletes (pods, services, policies, namespaces,
including malformed ones) through ``update`` and checks after every batch that the snapshot equals a full
``compute`` of the same resources, that the returned changes equal ``diff`` of the two snapshots, and that
the previous state did not change. Table tests pin down what each kind of change touches.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istiod_lite.registry import (
    AUTHORIZATION,
    SERVICE,
    WORKLOAD,
    InvalidSettings,
    RegistrySnapshot,
    Severity,
    compute,
    diff,
)
from istiod_lite.registry.incremental import RegistrySettings, RegistryState, build, empty, update
from meshcore.identity import SpiffeId
from meshcore.model import TunnelProtocol
from meshcore.store.resource import Resource, ResourceRef
from meshcore.testing.resources import AMBIENT, authz, ns, pod, svc
from meshcore.testing.resources import pod_uid as uid


def assert_same(incremental: RegistrySnapshot, full: RegistrySnapshot) -> None:
    assert dict(incremental.workloads) == dict(full.workloads)
    assert dict(incremental.services) == dict(full.services)
    assert dict(incremental.policies) == dict(full.policies)
    assert Counter(incremental.problems) == Counter(full.problems)
    assert dict(incremental.pods) == dict(full.pods)
    assert dict(incremental.identities_by_node) == dict(full.identities_by_node)


def touched(changes: dict[str, dict[str, Any]], removals: dict[str, set[str]]) -> dict[str, set[str]]:
    return {kind: set(changes[kind]) | removals[kind] for kind in changes}


# --- property: incremental == full compute ----------------------------------------------------------------

NAMESPACES = ("a", "b", "istio-system")
LABELS = st.dictionaries(st.sampled_from(("app", "tier")), st.sampled_from(("x", "y")), max_size=2)


def pods() -> st.SearchStrategy[Resource]:
    return st.builds(
        pod,
        st.sampled_from(("p1", "p2", "p3", "p4")),
        st.sampled_from(NAMESPACES),
        labels=st.one_of(
            LABELS,
            LABELS.map(lambda ls: {**ls, "istio.io/dataplane-mode": "none"}),
            LABELS.map(lambda ls: {**ls, **AMBIENT}),
        ),
        node=st.sampled_from(("node-1", "node-2", "")),
        sa=st.sampled_from(("web", "db", "Not_Valid")),
        ip=st.sampled_from(("10.0.0.1", "10.0.0.2", None, "10.0.0.999")),
        phase=st.sampled_from(("Running", "Pending", "Succeeded")),
        named_ports=st.sampled_from(({}, {"http": 8080}, {"http": 9090})),
    )


def services() -> st.SearchStrategy[Resource]:
    return st.builds(
        svc,
        st.sampled_from(("s1", "s2", "s3")),
        st.sampled_from(NAMESPACES),
        selector=st.one_of(st.none(), LABELS),
        clusterIP=st.sampled_from(("10.96.0.1", "10.96.0.2", "None", "nope")),
        ports=st.sampled_from(
            (
                [{"port": 80, "targetPort": 8080}],
                [{"port": 80, "targetPort": "http"}],
                [{"port": 80}, {"port": 81, "targetPort": "http"}],
            )
        ),
    )


def policies() -> st.SearchStrategy[Resource]:
    selector = st.one_of(
        st.just(None), LABELS.map(lambda ls: {"matchLabels": ls}), st.just({"matchLabels": "bad"})
    )
    rules = st.sampled_from(
        (
            [],
            [{"from": [{"source": {"namespaces": ["a"]}}]}],
            [{"to": [{"operation": {"methods": ["GET"]}}]}],
            "nope",
        )
    )
    return st.builds(
        lambda name, namespace, sel, rs, action: authz(
            name, namespace, **({"selector": sel} if sel is not None else {}), rules=rs, action=action
        ),
        st.sampled_from(("r1", "r2", "r3")),
        st.sampled_from(NAMESPACES),
        selector,
        rules,
        st.sampled_from(("ALLOW", "DENY", "CUSTOM")),
    )


def namespaces() -> st.SearchStrategy[Resource]:
    return st.builds(
        lambda name, labels: ns(name, **labels),
        st.sampled_from(NAMESPACES),
        st.sampled_from(({}, AMBIENT, {"team": "x"}, {**AMBIENT, "team": "x"})),
    )


# An op is a resource to apply or a ref to delete.
OP = st.one_of(pods(), services(), policies(), namespaces()).flatmap(
    lambda r: st.sampled_from((r, r.ref))
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(OP, min_size=1, max_size=4), min_size=1, max_size=12))
def test_any_sequence_of_updates_equals_a_full_compute(batches: list[list[Resource | ResourceRef]]) -> None:
    current: dict[ResourceRef, Resource] = {}
    state = empty()
    previous_full = compute([])
    for batch in batches:
        changed: list[Resource] = []
        deleted: list[ResourceRef] = []
        folded: dict[ResourceRef, Resource | None] = {}
        for op in batch:
            if isinstance(op, Resource):
                folded[op.ref] = op
            else:
                folded[op] = None
        for ref, resource in folded.items():
            if resource is None:
                deleted.append(ref)
                current.pop(ref, None)
            else:
                changed.append(resource)
                current[ref] = resource
        new_state, changes, removals = update(state, changed, deleted)
        full = compute(current.values())
        assert_same(new_state.snapshot, full)
        assert (changes, removals) == diff(state.snapshot, new_state.snapshot)
        assert_same(state.snapshot, previous_full)  # the old state is untouched
        assert Counter(p.severity for p in full.problems) == Counter(dict(new_state.problem_counts))
        state, previous_full = new_state, full


def test_a_seeded_random_walk_over_a_larger_cluster_equals_a_full_compute() -> None:
    """Hundreds of single changes on a cluster with many pods per selector (what hypothesis keeps small)."""
    rng = random.Random(20240611)
    current: dict[ResourceRef, Resource] = {}
    for i in range(60):
        r = pod(f"p{i}", f"ns{i % 3}", labels={"app": f"a{i % 4}"}, node=f"n{i % 5}", sa=f"sa{i % 2}")
        current[r.ref] = r
    for i in range(8):
        r = svc(f"s{i}", f"ns{i % 3}", selector={"app": f"a{i % 4}"}, clusterIP=f"10.96.0.{i + 1}")
        current[r.ref] = r
    state = build(current.values())
    assert_same(state.snapshot, compute(current.values()))
    ops = [
        lambda: pod(f"p{rng.randrange(70)}", f"ns{rng.randrange(3)}", labels={"app": f"a{rng.randrange(4)}"},
                    node=f"n{rng.randrange(5)}", sa=f"sa{rng.randrange(2)}", phase=rng.choice(["Running", "Failed"])),
        lambda: svc(f"s{rng.randrange(8)}", f"ns{rng.randrange(3)}", selector={"app": f"a{rng.randrange(4)}"}),
        lambda: authz(f"r{rng.randrange(3)}", rng.choice(["ns0", "istio-system"]),
                      selector={"matchLabels": {"app": f"a{rng.randrange(4)}"}}),
        lambda: ns(f"ns{rng.randrange(3)}", **rng.choice([{}, AMBIENT])),
    ]
    for _ in range(300):
        resource = rng.choice(ops)()
        if rng.random() < 0.2 and resource.ref in current:
            del current[resource.ref]
            state, _, _ = update(state, [], [resource.ref])
        else:
            current[resource.ref] = resource
            state, _, _ = update(state, [resource], [])
    assert_same(state.snapshot, compute(current.values()))


# --- what each change touches -----------------------------------------------------------------------------


def base_cluster() -> list[Resource]:
    return [
        ns("demo", **AMBIENT),
        ns("other"),
        pod("web", labels={"app": "web"}, ip="10.0.0.1"),
        pod("db", labels={"app": "db"}, ip="10.0.0.2", node="node-2"),
        pod("web", "other", labels={"app": "web"}, ip="10.0.1.1"),
        svc("web", selector={"app": "web"}, clusterIP="10.96.0.1"),
        authz("web-only", selector={"matchLabels": {"app": "web"}}),
    ]


@pytest.mark.parametrize(
    ("changed", "deleted", "expected"),
    [
        (
            [pod("web", labels={"app": "web"}, ip="10.0.0.9")],
            [],
            {WORKLOAD: {uid("demo", "web")}, SERVICE: set(), AUTHORIZATION: set()},
        ),
        ([], [ResourceRef("Pod", "demo", "db")], {WORKLOAD: {uid("demo", "db")}, SERVICE: set(), AUTHORIZATION: set()}),
        (
            [svc("web", selector={"app": "web"}, clusterIP="10.96.0.7")],
            [],
            {WORKLOAD: set(), SERVICE: {"demo/web.demo.svc.cluster.local"}, AUTHORIZATION: set()},
        ),
        (
            [svc("web", selector={"app": "db"}, clusterIP="10.96.0.1")],
            [],
            {
                WORKLOAD: {uid("demo", "web"), uid("demo", "db")},
                SERVICE: set(),
                AUTHORIZATION: set(),
            },
        ),
        (
            [authz("web-only", selector={"matchLabels": {"app": "web"}}, action="DENY", rules=[{}])],
            [],
            {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: {"demo/web-only"}},
        ),
        (
            [],
            [ResourceRef("AuthorizationPolicy", "demo", "web-only")],
            {WORKLOAD: {uid("demo", "web")}, SERVICE: set(), AUTHORIZATION: {"demo/web-only"}},
        ),
        (
            [authz("mesh-web", "istio-system", selector={"matchLabels": {"app": "web"}})],
            [],
            {
                WORKLOAD: {uid("demo", "web"), uid("other", "web")},
                SERVICE: set(),
                AUTHORIZATION: {"istio-system/mesh-web"},
            },
        ),
        (
            [ns("other", **AMBIENT)],
            [],
            {WORKLOAD: {uid("other", "web")}, SERVICE: set(), AUTHORIZATION: set()},
        ),
        ([ns("other", team="x")], [], {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: set()}),
        (
            [Resource(kind="Gateway", name="gw", namespace="demo")],
            [ResourceRef("HTTPRoute", "demo", "r")],
            {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: set()},
        ),
    ],
    ids=[
        "a pod change pushes only that pod",
        "a pod deletion removes only that pod",
        "a service VIP change pushes the service and no workload",
        "a service selector change pushes the pods it selected and selects, not the service",
        "a policy rules edit pushes the policy and no workload",
        "deleting a selector policy pushes it and the pods it selected",
        "a root-namespace selector policy reaches matching pods of every namespace",
        "enrolling a namespace pushes its pods only",
        "a namespace label the mesh does not read pushes nothing",
        "kinds the registry does not use push nothing",
    ],
)
def test_each_change_touches_only_what_it_affects(
    changed: list[Resource], deleted: list[ResourceRef], expected: dict[str, set[str]]
) -> None:
    state = build(base_cluster())
    new, changes, removals = update(state, changed, deleted)
    assert touched(changes, removals) == expected
    resources = {r.ref: r for r in base_cluster()}
    resources.update({r.ref: r for r in changed})
    for ref in deleted:
        resources.pop(ref, None)
    assert_same(new.snapshot, compute(resources.values()))


def test_a_pod_change_shares_every_untouched_table_with_the_previous_state() -> None:
    state = build(base_cluster())
    new, _, _ = update(state, [pod("web", labels={"app": "web"}, ip="10.0.0.9")], [])
    assert new.services is state.services
    assert new.policies is state.policies
    assert new.namespaces["other"] is state.namespaces["other"]
    assert new.namespaces["demo"].service_index is state.namespaces["demo"].service_index
    assert state.snapshot.workloads[uid("demo", "web")].addresses == ("10.0.0.1",)  # old state intact


def test_a_ref_both_changed_and_deleted_in_one_batch_is_deleted() -> None:
    state = build(base_cluster())
    new, _, removals = update(state, [pod("db", ip="10.0.0.5")], [ResourceRef("Pod", "demo", "db")])
    assert uid("demo", "db") not in new.snapshot.workloads
    assert removals[WORKLOAD] == {uid("demo", "db")}


def test_identities_on_node_follow_pods_moving_and_sharing_an_identity() -> None:
    state = build([pod("a", sa="shared", node="node-1"), pod("b", sa="shared", node="node-1")])
    shared = SpiffeId("cluster.local", "demo", "shared")
    assert state.snapshot.identities_on_node("node-1") == {shared}
    state, _, _ = update(state, [pod("a", sa="shared", node="node-2")], [])
    assert state.snapshot.identities_on_node("node-1") == {shared}  # b still runs as it there
    assert state.snapshot.identities_on_node("node-2") == {shared}
    state, _, _ = update(state, [], [ResourceRef("Pod", "demo", "b")])
    assert state.snapshot.identities_on_node("node-1") == frozenset()
    assert "node-1" not in state.snapshot.identities_by_node


def test_fresh_problems_are_those_the_batch_introduced_and_counts_follow_fixes() -> None:
    state = build([pod("bad", ip="10.0.0.999"), svc("broken", selector={"app": "x"}, clusterIP="nope")])
    assert {p.ref.name for p in state.fresh_problems} == {"bad", "broken"}
    assert state.problem_counts == {Severity.ERROR: 2}
    state, _, _ = update(state, [pod("other", ip="10.0.0.3")], [])
    assert state.fresh_problems == ()  # unchanged problems are not fresh again
    state, _, _ = update(state, [pod("bad", ip="10.0.0.4")], [])
    assert state.problem_counts == {Severity.ERROR: 1}
    assert [p.ref.name for p in state.snapshot.problems] == ["broken"]


def test_enrolling_a_namespace_switches_its_pods_to_hbone() -> None:
    state = build([ns("demo"), pod("web")])
    assert state.snapshot.workloads[uid("demo", "web")].tunnel_protocol == TunnelProtocol.NONE
    state, changes, _ = update(state, [ns("demo", **AMBIENT)], [])
    assert changes[WORKLOAD][uid("demo", "web")].tunnel_protocol == TunnelProtocol.HBONE


def test_settings_give_the_same_result_as_compute_keywords() -> None:
    custom = RegistrySettings(trust_domain="example.org", cluster_id="east", network="n1", root_namespace="mesh")
    resources = [pod("web", labels={"app": "web"}), authz("all", "mesh", selector={"matchLabels": {"app": "web"}})]
    state = build(resources, custom)
    full = compute(resources, trust_domain="example.org", cluster_id="east", network="n1", root_namespace="mesh")
    assert_same(state.snapshot, full)
    assert state.snapshot.workloads["east//Pod/demo/web"].authorization_policies == ("mesh/all",)


@pytest.mark.parametrize(
    "kwargs",
    [{"trust_domain": "Example.ORG"}, {"cluster_id": ""}, {"cluster_id": "a/b"}],
    ids=["an upper-case trust domain", "an empty cluster id", "a cluster id with a slash"],
)
def test_bad_settings_are_refused_when_made(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidSettings):
        RegistrySettings(**kwargs)


def test_a_large_cluster_builds_like_compute_and_one_pod_change_touches_one_workload() -> None:
    resources = [ns(f"ns{n}", **AMBIENT) for n in range(5)]
    resources += [svc(f"s{s}", f"ns{s % 5}", selector={"app": f"a{s}"}) for s in range(20)]
    resources += [
        pod(f"p{i}", f"ns{i % 5}", labels={"app": f"a{i % 20}"}, ip=f"10.0.{i // 250}.{i % 250}", node=f"n{i % 7}")
        for i in range(500)
    ]
    state: RegistryState = build(resources)
    assert_same(state.snapshot, compute(resources))
    moved = pod("p7", "ns2", labels={"app": "a7"}, ip="10.9.9.9", node="n1")
    new, changes, removals = update(state, [moved], [])
    assert touched(changes, removals) == {WORKLOAD: {uid("ns2", "p7")}, SERVICE: set(), AUTHORIZATION: set()}
    assert new.workloads is not state.workloads and len(new.workloads) == len(state.workloads) == 500
    assert new.snapshot.workloads[uid("ns2", "p7")].addresses == ("10.9.9.9",)
