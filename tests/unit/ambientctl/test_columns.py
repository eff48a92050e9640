"""``get`` table rows per kind: pure functions from stored resources to kubectl-style cells."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from ambientctl.commands.columns import (
    _COLUMNS,
    NodeRow,
    TableContext,
    build_table,
    event_time,
    human_duration,
    node_table,
    policy_status,
    qualified_name,
)
from meshcore.store import Resource, build_resource

GW_API = "gateway.networking.k8s.io/v1"


def res(kind: str, api: str = "v1", labels: dict[str, str] | None = None, **fields: Any) -> Resource:
    meta = {"name": "x", "namespace": "demo", "labels": labels or {}}
    return build_resource({"apiVersion": api, "kind": kind, "metadata": meta, **fields})


NAMESPACES = {
    "demo": build_resource(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}},
        }
    )
}


@pytest.mark.parametrize(
    ("resource", "row"),
    [
        (res("Pod"), ["x", "-", "Pending", "0", "<unknown>", "ambient"]),
        (
            res(
                "Pod",
                labels={"istio.io/dataplane-mode": "none"},
                spec={"nodeName": "n1"},
                status={"phase": "Running", "podIP": "10.0.0.1"},
            ),
            ["x", "-", "Running", "0", "<unknown>", "none"],
        ),
        (
            res(
                "Pod",
                status={
                    "phase": "Running",
                    "containerStatuses": [
                        {
                            "name": "c",
                            "ready": False,
                            "restartCount": 4,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        }
                    ],
                },
            ),
            ["x", "0/1", "CrashLoopBackOff", "4", "<unknown>", "ambient"],
        ),
        (
            res(
                "Service",
                spec={
                    "clusterIP": "None",
                    "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 53, "protocol": "UDP"}],
                },
            ),
            ["x", "ClusterIP", "None", "80/TCP,53/UDP", "<unknown>"],
        ),
        (
            res(
                "AuthorizationPolicy",
                "security.istio.io/v1",
                spec={
                    "action": "DENY",
                    "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}],
                },
            ),
            ["x", "DENY", "Gateway/wp", "0", "-", "<unknown>"],
        ),
        (
            res("AuthorizationPolicy", "security.istio.io/v1", spec={}),
            ["x", "ALLOW", "<namespace>", "0", "-", "<unknown>"],
        ),
        (
            res(
                "Gateway",
                GW_API,
                labels={"istio.io/waypoint-for": "service"},
                spec={
                    "gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                },
            ),
            ["x", "istio-waypoint", "<none>", "Unknown", "<unknown>"],
        ),
        (
            res(
                "Gateway",
                GW_API,
                spec={"gatewayClassName": "istio-waypoint", "listeners": []},
                status={
                    "addresses": [{"type": "IPAddress", "value": "10.96.0.50"}, {"value": "fd00::50"}],
                    "conditions": [
                        {"type": "Accepted", "status": "True"},
                        {"type": "Programmed", "status": "True", "reason": "Programmed"},
                    ],
                },
            ),
            ["x", "istio-waypoint", "10.96.0.50", "True", "<unknown>"],
        ),
        (
            res(
                "HTTPRoute",
                GW_API,
                spec={"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}], "rules": [{}, {}]},
            ),
            ["x", "<none>", "Service/reviews", "2", "<unknown>"],
        ),
        (res("ServiceAccount"), ["x", "<unknown>"]),
    ],
    ids=[
        "a bare pod shows its namespace's dataplane mode and the default service account",
        "a pod's own dataplane-mode label wins over its namespace's",
        "a crash-looping pod shows its reason, readiness and restarts",
        "a headless service lists every port with its protocol",
        "a policy bound with targetRefs shows the target",
        "a policy without selector or target applies to the namespace",
        "a gateway no controller has acted on shows no address and PROGRAMMED Unknown",
        "a programmed gateway shows its first status address and PROGRAMMED True",
        "an HTTPRoute shows its parent service and rule count",
        "a service account shows its name and age",
    ],
)
def test_row(resource: Resource, row: list[str]) -> None:
    headers, rows = build_table(resource.kind, [resource], NAMESPACES, all_namespaces=False)
    assert rows == [row]
    assert len(headers) == len(row) and headers[0] == "NAME"


def test_all_namespaces_adds_a_namespace_column_for_namespaced_kinds_only() -> None:
    headers, rows = build_table("Pod", [res("Pod")], {}, all_namespaces=True)
    assert headers[:2] == ["NAMESPACE", "NAME"] and rows[0][:2] == ["demo", "x"]
    headers, _ = build_table("Namespace", list(NAMESPACES.values()), {}, all_namespaces=True)
    assert headers == ["NAME", "LABELS", "AGE"]


NOW = datetime(2026, 12, 7, 15, 0, 0, tzinfo=UTC)
RUNNING_POD = msgspec.structs.replace(
    res(
        "Pod",
        spec={"nodeName": "node-1", "serviceAccountName": "web"},
        status={"phase": "Running", "podIP": "10.244.1.5", "startTime": "2026-12-07T14:59:00Z"},
    ),
    creation_timestamp="2026-12-07T14:56:40Z",
)


def test_wide_adds_a_pods_ip_node_and_service_account_after_age() -> None:
    headers, rows = build_table(
        "Pod", [RUNNING_POD], TableContext(NAMESPACES, NOW), all_namespaces=False, wide=True
    )
    assert headers == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "SERVICE-ACCOUNT",
        "DATAPLANE-MODE",
    ]
    assert rows == [["x", "-", "Running", "0", "3m20s", "10.244.1.5", "node-1", "web", "ambient"]]
    narrow, _ = build_table("Pod", [RUNNING_POD], TableContext(NAMESPACES, NOW), all_namespaces=False)
    assert "IP" not in narrow and "NODE" not in narrow


def test_wide_adds_a_services_selector_and_a_deployments_containers_images_selector() -> None:
    svc = res("Service", spec={"selector": {"app": "web"}, "ports": [{"port": 80}]})
    assert build_table("Service", [svc], {}, all_namespaces=False, wide=True) == (
        ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE", "SELECTOR"],
        [["x", "ClusterIP", "<none>", "80/TCP", "<unknown>", "app=web"]],
    )
    deploy = res(
        "Deployment",
        "apps/v1",
        spec={
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "nginx"}, {"name": "log", "command": ["sh"]}]
                },
            },
        },
    )
    headers, rows = build_table("Deployment", [deploy], {}, all_namespaces=False, wide=True)
    assert headers[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[0][-3:] == ["web,log", "nginx,<none>", "app=web"]


def test_several_kinds_name_rows_kind_dot_group_slash_name() -> None:
    _, rows = build_table("Pod", [res("Pod")], {}, all_namespaces=False, with_kind=True)
    assert rows[0][0] == "pod/x"
    assert qualified_name(Resource(kind="Deployment", name="x")) == "deployment.apps/x"
    assert qualified_name(res("AuthorizationPolicy", "security.istio.io/v1", spec={})) == (
        "authorizationpolicy.security.istio.io/x"
    )


@pytest.mark.parametrize("kind", sorted(_COLUMNS))
def test_no_header_has_a_blank(kind: str) -> None:
    assert all(" " not in c.header for c in _COLUMNS[kind])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (200, "3m20s"),
        (540, "9m"),
        (3000, "50m"),
        (4 * 3600 + 120, "4h2m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 5 * 3600, "3d5h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
    ids=[
        "a time in the future is invalid",
        "no time is 0s",
        "under two minutes counts seconds",
        "under ten minutes shows minutes and seconds",
        "whole minutes drop the seconds",
        "under three hours counts minutes",
        "under eight hours shows hours and minutes",
        "under two days counts hours",
        "under eight days shows days and hours",
        "under two years counts days",
        "under eight years shows years and days",
        "beyond that counts years",
    ],
)
def test_age_reads_as_kubectls(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def _policy(*conditions: dict[str, Any], generation: int = 0) -> Resource:
    policy = res(
        "AuthorizationPolicy", "security.istio.io/v1", spec={}, status={"conditions": list(conditions)}
    )
    return msgspec.structs.replace(policy, generation=generation) if generation else policy


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        (res("AuthorizationPolicy", "security.istio.io/v1", spec={}), "-"),
        (_policy({"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted"}), "Accepted"),
        (
            _policy(
                {"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted"},
                {"type": "WaypointAccepted", "status": "True", "reason": "Accepted"},
            ),
            "Accepted",
        ),
        (
            _policy(
                {"type": "ZtunnelAccepted", "status": "False", "reason": "UnsupportedValue", "message": "m"}
            ),
            "Ztunnel:UnsupportedValue",
        ),
        (
            _policy(
                {"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted"},
                {"type": "WaypointAccepted", "status": "False", "reason": "TargetNotFound"},
            ),
            "Waypoint:TargetNotFound",
        ),
        (_policy({"type": "ZtunnelAccepted", "status": "False"}), "Ztunnel:False"),
        (
            _policy({"type": "ZtunnelAccepted", "status": "True", "reason": "UnsupportedValue"}),
            "Accepted(Ztunnel:UnsupportedValue)",
        ),
        (
            _policy(
                {"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted", "observedGeneration": 1},
                generation=2,
            ),
            "Pending",
        ),
        (
            _policy(
                {"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted", "observedGeneration": 2},
                generation=2,
            ),
            "Accepted",
        ),
        (_policy({"type": "SomethingElse", "status": "False", "reason": "X"}), "-"),
    ],
    ids=[
        "a policy istiod has not looked at yet shows a dash",
        "ztunnel accepted it",
        "both ztunnel and the waypoint accepted it",
        "ztunnel refused part of it with a reason",
        "only the refusing condition is shown",
        "a refusal without a reason shows its status",
        "enforced in a changed form shows accepted with the reason",
        "conditions about an older generation of the spec are pending",
        "conditions about the current generation count",
        "conditions of other types are not this column's",
    ],
)
def test_policy_status_column(policy: Resource, status: str) -> None:
    assert policy_status(policy) == status
    headers, rows = build_table("AuthorizationPolicy", [policy], {}, all_namespaces=False)
    assert rows[0][headers.index("STATUS")] == status


def test_nodes_table_reads_as_kubectls_and_wide_adds_the_internal_ip() -> None:
    nodes = [NodeRow("node-1", True, "10.0.0.2"), NodeRow("node-2", False, "10.0.0.3")]
    assert node_table(nodes, version="v0.1.0") == (
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        [
            ["node-1", "Ready", "<none>", "<unknown>", "v0.1.0"],
            ["node-2", "NotReady", "<none>", "<unknown>", "v0.1.0"],
        ],
    )
    headers, rows = node_table(nodes, version="v0.1.0", wide=True, kernel="6.1.0")
    assert headers[5:] == ["INTERNAL-IP", "EXTERNAL-IP", "KERNEL-VERSION"]
    assert rows[0][5:] == ["10.0.0.2", "<none>", "6.1.0"]


CREATED = "2026-12-07T14:00:00Z"  # an hour before NOW


def stored(resource: Resource, created: str = CREATED) -> Resource:
    return msgspec.structs.replace(resource, creation_timestamp=created)


@pytest.mark.parametrize(
    ("resource", "headers"),
    [
        (stored(res("Pod")), ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "DATAPLANE-MODE"]),
        (
            stored(res("Service", spec={"ports": [{"port": 80}]})),
            ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"],
        ),
        (
            stored(res("AuthorizationPolicy", "security.istio.io/v1", spec={})),
            ["NAME", "ACTION", "TARGET", "RULES", "STATUS", "AGE"],
        ),
        (stored(NAMESPACES["demo"]), ["NAME", "LABELS", "AGE"]),
        (stored(res("ServiceAccount")), ["NAME", "AGE"]),
        (
            stored(res("VirtualService", "networking.istio.io/v1", spec={"hosts": ["a"]})),
            ["NAME", "AGE"],
        ),
    ],
    ids=[
        "a pod's age is since its creation, before the dataplane mode column",
        "a service's age comes last",
        "a policy's age comes last",
        "a namespace's age comes last",
        "a kind without columns of its own has its age",
        "an Istio kind without columns of its own has its age",
    ],
)
def test_every_kind_shows_its_age_since_creation(resource: Resource, headers: list[str]) -> None:
    got, rows = build_table(resource.kind, [resource], TableContext(NAMESPACES, NOW), all_namespaces=False)
    assert got == headers
    assert rows[0][headers.index("AGE")] == "60m"


def test_a_pods_age_is_since_creation_not_since_it_started() -> None:
    pod = stored(res("Pod", status={"phase": "Running", "startTime": "2026-12-07T14:59:00Z"}))
    headers, rows = build_table("Pod", [pod], TableContext(NAMESPACES, NOW), all_namespaces=False)
    assert rows[0][headers.index("AGE")] == "60m"


def test_an_object_stored_without_a_creation_time_has_an_unknown_age() -> None:
    headers, rows = build_table(
        "Service",
        [res("Service", spec={"ports": [{"port": 80}]})],
        TableContext({}, NOW),
        all_namespaces=False,
    )
    assert rows[0][headers.index("AGE")] == "<unknown>"


def event(name: str, last: str, **fields: Any) -> Resource:
    return build_resource(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": "demo"},
            "involvedObject": {
                "kind": "Pod",
                "name": "web",
                "namespace": "demo",
                "fieldPath": "spec.containers{app}",
            },
            "type": "Warning",
            "reason": "BackOff",
            "message": "Back-off restarting failed container app in pod web_demo(u)",
            "count": 3,
            "firstTimestamp": "2026-12-07T14:50:00Z",
            "lastTimestamp": last,
            "source": {"component": "kubelet", "host": "node-1"},
            **fields,
        }
    )


def test_events_show_kubectls_columns_without_a_name() -> None:
    e = event("web.1", "2026-12-07T14:59:30Z")
    assert build_table("Event", [e], TableContext({}, NOW), all_namespaces=False) == (
        ["LAST-SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        [
            [
                "30s",
                "Warning",
                "BackOff",
                "pod/web",
                "Back-off restarting failed container app in pod web_demo(u)",
            ]
        ],
    )
    headers, rows = build_table("Event", [e], TableContext({}, NOW), all_namespaces=True, wide=True)
    assert headers == [
        "NAMESPACE",
        "LAST-SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "SUBOBJECT",
        "SOURCE",
        "MESSAGE",
        "FIRST-SEEN",
        "COUNT",
        "NAME",
    ]
    assert rows[0][0] == "demo" and rows[0][5:7] == ["spec.containers{app}", "kubelet, node-1"]
    assert rows[0][-3:] == ["10m", "3", "web.1"]


def test_events_sort_by_when_they_were_last_seen() -> None:
    a = event("a", "2026-12-07T14:59:30Z")
    b = event("b", "2026-12-07T14:10:00Z")
    c = event("c", "", eventTime="2026-12-07T14:30:00Z")
    assert [e.name for e in sorted([a, b, c], key=event_time)] == ["b", "c", "a"]
