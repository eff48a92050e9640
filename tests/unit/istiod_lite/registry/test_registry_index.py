"""compute() over whole clusters: selection across namespaces, node identities, problems, diff."""

from __future__ import annotations

import pytest

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
from istiod_lite.registry.index import SelectorIndex
from meshcore.identity import SpiffeId
from meshcore.model import Port, Scope, TunnelProtocol
from meshcore.store.resource import Resource
from meshcore.testing.resources import authz, ns, pod, svc
from meshcore.testing.resources import pod_uid as uid


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ([ns("demo", **{"istio.io/dataplane-mode": "ambient"}), pod("web")], TunnelProtocol.HBONE),
        ([ns("demo"), pod("web", labels={"istio.io/dataplane-mode": "ambient"})], TunnelProtocol.HBONE),
        (
            [
                ns("demo", **{"istio.io/dataplane-mode": "ambient"}),
                pod("web", labels={"istio.io/dataplane-mode": "none"}),
            ],
            TunnelProtocol.NONE,
        ),
        ([pod("web")], TunnelProtocol.NONE),
    ],
    ids=[
        "the namespace label enrols its pods",
        "the pod label enrols one pod",
        "the pod label none wins over the namespace",
        "a pod in a namespace the store does not know is not in the mesh",
    ],
)
def test_enrolment_reads_namespace_labels(resources: list[Resource], expected: TunnelProtocol) -> None:
    assert compute(resources).workloads[uid("demo", "web")].tunnel_protocol == expected


def test_services_select_pods_only_in_their_own_namespace() -> None:
    snap = compute(
        [
            pod("web", labels={"app": "web", "tier": "a"}),
            pod("web", "other", labels={"app": "web"}),
            pod("db", labels={"app": "db"}),
            svc("web", selector={"app": "web"}),
            svc("web-a", selector={"app": "web", "tier": "a"}),
            svc("web-b", selector={"app": "web", "tier": "b"}),
            svc("manual", selector=None),
        ]
    )
    assert snap.workloads[uid("demo", "web")].services == {
        "demo/web.demo.svc.cluster.local": (Port(80, 8080),),
        "demo/web-a.demo.svc.cluster.local": (Port(80, 8080),),
    }
    assert snap.workloads[uid("other", "web")].services == {}
    assert snap.workloads[uid("demo", "db")].services == {}
    assert set(snap.services) == {
        f"demo/{n}.demo.svc.cluster.local" for n in ("web", "web-a", "web-b", "manual")
    }


def test_a_headless_service_is_kept_and_its_pods_back_it() -> None:
    snap = compute([pod("web", labels={"app": "web"}), svc("web", selector={"app": "web"}, clusterIP="None")])
    key = "demo/web.demo.svc.cluster.local"
    assert snap.services[key].addresses == ()
    assert key in snap.workloads[uid("demo", "web")].services


def test_named_target_ports_resolve_per_pod() -> None:
    service = Resource(
        kind="Service",
        name="web",
        namespace="demo",
        spec={
            "clusterIP": "10.96.0.10",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    )
    snap = compute(
        [
            service,
            pod("v1", labels={"app": "web"}, named_ports={"http": 8080}),
            pod("v2", labels={"app": "web"}, named_ports={"http": 9080}),
            pod("v3", labels={"app": "web"}),
        ]
    )
    key = "demo/web.demo.svc.cluster.local"
    assert snap.services[key].ports == (Port(80, 0),)
    assert snap.workloads[uid("demo", "v1")].services[key] == (Port(80, 8080),)
    assert snap.workloads[uid("demo", "v2")].services[key] == (Port(80, 9080),)
    assert snap.workloads[uid("demo", "v3")].services[key] == ()
    assert [p.ref.name for p in snap.problems] == ["web"]


def test_selector_policies_attach_to_selected_pods_in_their_namespace_and_from_the_root() -> None:
    snap = compute(
        [
            pod("web", labels={"app": "web"}),
            pod("web", "other", labels={"app": "web"}),
            authz("web-only", selector={"matchLabels": {"app": "web"}}),
            authz("db-only", selector={"matchLabels": {"app": "db"}}),
            authz("ns-wide"),
            authz("mesh-web", "istio-system", selector={"matchLabels": {"app": "web"}}),
            authz("mesh-wide", "istio-system"),
        ]
    )
    assert snap.workloads[uid("demo", "web")].authorization_policies == (
        "demo/web-only",
        "istio-system/mesh-web",
    )
    assert snap.workloads[uid("other", "web")].authorization_policies == ("istio-system/mesh-web",)
    assert snap.policies["demo/ns-wide"].scope == Scope.NAMESPACE
    assert snap.policies["istio-system/mesh-wide"].scope == Scope.GLOBAL
    assert set(snap.policies) == {
        "demo/web-only",
        "demo/db-only",
        "demo/ns-wide",
        "istio-system/mesh-web",
        "istio-system/mesh-wide",
    }


def test_policies_not_for_ztunnel_are_reported_not_sent() -> None:
    snap = compute(
        [authz("custom", action="CUSTOM"), authz("waypoint", targetRefs=[{"kind": "Service", "name": "x"}])]
    )
    assert snap.policies == {}
    assert sorted(p.ref.name for p in snap.problems) == ["custom", "waypoint"]


def test_identities_on_node_include_every_active_pod_scheduled_there() -> None:
    snap = compute(
        [
            ns("demo", **{"istio.io/dataplane-mode": "ambient"}),
            pod("mesh", node="node-1"),
            pod("plain", "outside", node="node-1"),
            pod("starting", node="node-1", ip=None),
            pod("done", node="node-1", phase="Succeeded"),
            pod("elsewhere", node="node-2"),
            pod("twin", node="node-1", sa="mesh"),
        ]
    )
    assert snap.identities_on_node("node-1") == frozenset(
        {
            SpiffeId("cluster.local", "demo", "mesh"),
            SpiffeId("cluster.local", "outside", "plain"),
            SpiffeId("cluster.local", "demo", "starting"),
        }
    )
    assert snap.identities_on_node("node-2") == frozenset({SpiffeId("cluster.local", "demo", "elsewhere")})
    assert snap.identities_on_node("node-3") == frozenset()
    assert snap.identities_on_node("") == frozenset()


def test_find_pod_tells_where_a_pod_runs_and_as_whom() -> None:
    snap = compute([pod("ztunnel-x", "istio-system", sa="ztunnel", node="node-7", uid="u-1")])
    found = snap.find_pod("istio-system", "ztunnel-x")
    assert found is not None
    assert (found.node, found.uid, found.identity.service_account) == ("node-7", "u-1", "ztunnel")
    assert snap.find_pod("istio-system", "missing") is None


def test_one_bad_resource_is_reported_and_the_rest_still_convert() -> None:
    snap = compute(
        [
            pod("good"),
            pod("bad-ip", ip="10.0.0.999"),
            pod("bad-sa", sa="Not_Valid"),
            svc("good", selector={"app": "x"}),
            svc("bad", selector={"app": "x"}, clusterIP="nope"),
            authz("bad", rules="nope"),
        ]
    )
    assert set(snap.workloads) == {uid("demo", "good")}
    assert set(snap.services) == {"demo/good.demo.svc.cluster.local"}
    assert "demo/bad" in snap.policies  # replaced by its fail-closed stand-in
    assert sorted((p.ref.kind, p.ref.name) for p in snap.problems if p.severity == Severity.ERROR) == [
        ("AuthorizationPolicy", "bad"),
        ("Pod", "bad-ip"),
        ("Pod", "bad-sa"),
        ("Service", "bad"),
    ]


def test_settings_flow_into_every_workload() -> None:
    snap = compute([pod("web")], trust_domain="example.org", cluster_id="east", network="n1")
    w = snap.workloads["east//Pod/demo/web"]
    assert (w.trust_domain, w.cluster_id, w.network) == ("example.org", "east", "n1")


@pytest.mark.parametrize(
    "settings",
    [{"trust_domain": "Example.ORG"}, {"cluster_id": ""}, {"cluster_id": "a/b"}],
    ids=["an upper-case trust domain", "an empty cluster id", "a cluster id with a slash"],
)
def test_bad_settings_are_refused_up_front(settings: dict[str, str]) -> None:
    with pytest.raises(InvalidSettings):
        compute([], **settings)


def test_snapshot_mappings_are_read_only() -> None:
    snap = compute([pod("web")])
    with pytest.raises(TypeError):
        snap.workloads["x"] = snap.workloads[uid("demo", "web")]  # type: ignore[index]


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({"app": "web"}, {"app": "web", "v": "1"}, True),
        ({"app": "web", "v": "2"}, {"app": "web", "v": "1"}, False),
        ({"app": "web"}, {"app": "db"}, False),
        ({}, {"anything": "x"}, True),
        ({}, {}, True),
    ],
    ids=[
        "a selector that is a subset of the labels selects",
        "a selector with one differing label does not select",
        "a selector on another value does not select",
        "an empty selector selects a labelled object",
        "an empty selector selects an unlabelled object",
    ],
)
def test_selector_index(selector: dict[str, str], labels: dict[str, str], selected: bool) -> None:
    index: SelectorIndex[str] = SelectorIndex()
    index.add(selector, "item")
    assert (index.matching(labels) == ["item"]) is selected


# --- diff ------------------------------------------------------------------------------------------------


def test_diff_from_empty_sends_everything() -> None:
    snap = compute([pod("web", labels={"app": "web"}), svc("web", selector={"app": "web"}), authz("p")])
    changed, removed = diff(RegistrySnapshot(), snap)
    assert {k: set(v) for k, v in changed.items()} == {
        WORKLOAD: {uid("demo", "web")},
        SERVICE: {"demo/web.demo.svc.cluster.local"},
        AUTHORIZATION: {"demo/p"},
    }
    assert removed == {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: set()}


def test_diff_of_identical_snapshots_is_empty() -> None:
    resources = [pod("web", ip="10.0.0.1"), svc("web", selector={"app": "web"}), authz("p")]
    changed, removed = diff(compute(resources), compute(resources))
    assert changed == {WORKLOAD: {}, SERVICE: {}, AUTHORIZATION: {}}
    assert removed == {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: set()}


def test_diff_reports_changed_added_and_removed_by_type() -> None:
    before = compute(
        [
            pod("web", labels={"app": "web"}, ip="10.0.0.1"),
            pod("gone", ip="10.0.0.2"),
            svc("web", selector={"app": "web"}),
            authz("old"),
        ]
    )
    after = compute(
        [
            pod("web", labels={"app": "web"}, ip="10.0.0.1", phase="Pending"),
            pod("new", ip="10.0.0.3"),
            svc("web", selector={"app": "web"}),
            authz("new", action="DENY"),
        ]
    )
    changed, removed = diff(before, after)
    assert set(changed[WORKLOAD]) == {uid("demo", "web"), uid("demo", "new")}
    assert changed[WORKLOAD][uid("demo", "web")] == after.workloads[uid("demo", "web")]
    assert changed[SERVICE] == {}
    assert set(changed[AUTHORIZATION]) == {"demo/new"}
    assert removed == {WORKLOAD: {uid("demo", "gone")}, SERVICE: set(), AUTHORIZATION: {"demo/old"}}


def test_a_policy_change_changes_the_workloads_it_selects() -> None:
    web = pod("web", labels={"app": "web"}, ip="10.0.0.1")
    before = compute([web])
    after = compute([web, authz("p", selector={"matchLabels": {"app": "web"}})])
    changed, _ = diff(before, after)
    assert set(changed[WORKLOAD]) == {uid("demo", "web")}
    assert set(changed[AUTHORIZATION]) == {"demo/p"}
