"""``get`` table rows per kind: pure functions from stored resources to kubectl-style cells."""

from __future__ import annotations

from typing import Any

import pytest

from ambientctl.commands.columns import build_table
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
        (res("Pod"), ["x", "-", "Pending", "0", "<none>", "<none>", "default", "ambient"]),
        (
            res(
                "Pod",
                labels={"istio.io/dataplane-mode": "none"},
                spec={"nodeName": "n1"},
                status={"phase": "Running", "podIP": "10.0.0.1"},
            ),
            ["x", "-", "Running", "0", "10.0.0.1", "n1", "default", "none"],
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
            ["x", "0/1", "CrashLoopBackOff", "4", "<none>", "<none>", "default", "ambient"],
        ),
        (
            res(
                "Service",
                spec={
                    "clusterIP": "None",
                    "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 53, "protocol": "UDP"}],
                },
            ),
            ["x", "None", "80/TCP,53/UDP", "<none>"],
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
            ["x", "DENY", "Gateway/wp", "0"],
        ),
        (res("AuthorizationPolicy", "security.istio.io/v1", spec={}), ["x", "ALLOW", "<namespace>", "0"]),
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
            ["x", "<none>", "Service/reviews", "2"],
        ),
        (res("ServiceAccount"), ["x"]),
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
        "a service account shows only its name",
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
    assert headers == ["NAME", "LABELS"]
