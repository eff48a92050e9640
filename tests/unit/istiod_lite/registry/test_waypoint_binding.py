"""Waypoint binding as a pure decision: labels and known waypoints in, the bound waypoint and a reason out.

Each row states one rule of ``istiod_lite.registry.waypoints`` (precedence: the object's own label, then
per service account, then the namespace; ``none`` opts out; ``istio.io/waypoint-for`` filters; an
unprogrammed waypoint binds nothing; a waypoint's own pods never bind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest

from istiod_lite.registry.errors import Reason, Severity
from istiod_lite.registry.waypoints import (
    NO_REQUEST,
    SimpleWaypointTable,
    Source,
    TrafficType,
    bind_service,
    bind_workload,
    gateway_problems,
    namespace_problem,
    request_from_labels,
    waypoint_from_gateway,
)
from meshcore.model import GatewayAddress, NetworkAddress
from meshcore.store.resource import ResourceRef
from meshcore.testing.resources import waypoint

NS_WP = waypoint_from_gateway(waypoint("ns-wp", address="10.96.0.10"))
SVC_ONLY = waypoint_from_gateway(
    waypoint("svc-wp", address="10.96.0.11", labels={"istio.io/waypoint-for": "service"})
)
WL_ONLY = waypoint_from_gateway(
    waypoint("wl-wp", address="10.96.0.12", labels={"istio.io/waypoint-for": "workload"})
)
ALL = waypoint_from_gateway(waypoint("all-wp", address="10.96.0.13", labels={"istio.io/waypoint-for": "all"}))
NOTHING = waypoint_from_gateway(
    waypoint("none-wp", address="10.96.0.14", labels={"istio.io/waypoint-for": "none"})
)
PER_SA = waypoint_from_gateway(
    waypoint("server-wp", address="10.96.0.15", annotations={"istio.io/for-service-account": "server"})
)
PER_SA_SVC = waypoint_from_gateway(
    waypoint(
        "db-wp",
        address="10.96.0.16",
        labels={"istio.io/for-service-account": "db", "istio.io/waypoint-for": "service"},
    )
)
UNPROGRAMMED = waypoint_from_gateway(
    waypoint("new-wp", address=None, labels={"istio.io/waypoint-for": "all"})
)
REFUSED = waypoint_from_gateway(
    waypoint("bad-wp", listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}])
)
OTHER_NS = waypoint_from_gateway(
    waypoint("shared", "infra", address="10.96.1.1", labels={"istio.io/waypoint-for": "all"})
)
OPEN = waypoint_from_gateway(
    waypoint(
        "open",
        "infra",
        address="10.96.1.2",
        labels={"istio.io/waypoint-for": "all"},
        listeners=[
            {
                "name": "mesh",
                "port": 15008,
                "protocol": "HBONE",
                "allowedRoutes": {"namespaces": {"from": "All"}},
            }
        ],
    )
)
TEAM = waypoint_from_gateway(
    waypoint(
        "team",
        "infra",
        address="10.96.1.3",
        labels={"istio.io/waypoint-for": "all"},
        listeners=[
            {
                "name": "mesh",
                "port": 15008,
                "protocol": "HBONE",
                "allowedRoutes": {
                    "namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}
                },
            }
        ],
    )
)
KNOWN = [
    NS_WP,
    SVC_ONLY,
    WL_ONLY,
    ALL,
    NOTHING,
    PER_SA,
    PER_SA_SVC,
    UNPROGRAMMED,
    REFUSED,
    OTHER_NS,
    OPEN,
    TEAM,
]
TABLE = SimpleWaypointTable(wp for wp in KNOWN if wp is not None)


def gw(ip: str) -> GatewayAddress:
    return GatewayAddress(address=NetworkAddress(ip, ""), hbone_mtls_port=15008)


@dataclass(frozen=True)
class Case:
    pod_labels: dict[str, str] = field(default_factory=dict)
    service_labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    account: str = "client"  # the pod's service account
    endpoint_accounts: tuple[str, ...] = ("client",)  # the accounts the Service's endpoints run as
    workload: str | None = None  # the expected Workload.waypoint IP (None: unbound)
    service: str | None = None  # the expected Service.waypoint IP
    source: Source = Source.NONE  # where the workload's decision came from
    reason: str = ""  # a fragment of the workload's (else the service's) reason


def use(name: str, namespace: str | None = None) -> dict[str, str]:
    labels = {"istio.io/use-waypoint": name}
    if namespace is not None:
        labels["istio.io/use-waypoint-namespace"] = namespace
    return labels


CASES = {
    "nothing asks for a waypoint, so nothing is bound": Case(reason="no waypoint requested"),
    "a namespace label binds services only, since waypoint-for defaults to service": Case(
        namespace_labels=use("ns-wp"),
        service="10.96.0.10",
        source=Source.NAMESPACE,
        reason="does not take workload",
    ),
    "a namespace label naming a waypoint for all binds workloads and services": Case(
        namespace_labels=use("all-wp"), workload="10.96.0.13", service="10.96.0.13", source=Source.NAMESPACE
    ),
    "a workload-only waypoint leaves Service.waypoint unset": Case(
        namespace_labels=use("wl-wp"), workload="10.96.0.12", source=Source.NAMESPACE
    ),
    "a waypoint for none binds nothing": Case(
        namespace_labels=use("none-wp"), source=Source.NAMESPACE, reason="waypoint-for=none"
    ),
    "a pod label wins over the namespace label": Case(
        pod_labels=use("all-wp"), namespace_labels=use("wl-wp"), workload="10.96.0.13", source=Source.POD
    ),
    "a service label wins over the namespace label": Case(
        service_labels=use("svc-wp"),
        namespace_labels=use("all-wp"),
        workload="10.96.0.13",
        service="10.96.0.11",
        source=Source.NAMESPACE,
    ),
    "a pod labelled none opts out of the namespace's waypoint": Case(
        pod_labels=use("none"),
        namespace_labels=use("all-wp"),
        service="10.96.0.13",
        source=Source.POD,
        reason="opted out",
    ),
    "a service labelled none opts out of the namespace's waypoint": Case(
        service_labels=use("none"),
        namespace_labels=use("all-wp"),
        workload="10.96.0.13",
        source=Source.NAMESPACE,
    ),
    "a namespace labelled none binds nothing": Case(namespace_labels=use("none"), source=Source.NAMESPACE),
    "a per-service-account waypoint serves its account's workloads and services (default all)": Case(
        account="server",
        endpoint_accounts=("server",),
        workload="10.96.0.15",
        service="10.96.0.15",
        source=Source.SERVICE_ACCOUNT,
    ),
    "a per-service-account waypoint ignores other accounts": Case(
        account="client", endpoint_accounts=("client",)
    ),
    "a per-service-account waypoint labelled waypoint-for service binds only services": Case(
        account="db", endpoint_accounts=("db",), service="10.96.0.16", source=Source.SERVICE_ACCOUNT
    ),
    "a service with endpoints of several accounts gets no per-service-account waypoint": Case(
        account="server",
        endpoint_accounts=("client", "server"),
        workload="10.96.0.15",
        source=Source.SERVICE_ACCOUNT,
    ),
    "a service with mixed accounts falls back to the namespace label, saying why": Case(
        account="server",
        endpoint_accounts=("client", "server"),
        namespace_labels=use("ns-wp"),
        workload="10.96.0.15",
        service="10.96.0.10",
        source=Source.SERVICE_ACCOUNT,
    ),
    "a per-service-account waypoint wins over the namespace label": Case(
        account="server",
        endpoint_accounts=("server",),
        namespace_labels=use("wl-wp"),
        workload="10.96.0.15",
        service="10.96.0.15",
        source=Source.SERVICE_ACCOUNT,
    ),
    "a pod label wins over the per-service-account waypoint": Case(
        pod_labels=use("wl-wp"),
        account="server",
        endpoint_accounts=("server",),
        workload="10.96.0.12",
        service="10.96.0.15",
        source=Source.POD,
    ),
    "none on the pod opts out of its per-service-account waypoint": Case(
        pod_labels=use("none"),
        account="server",
        endpoint_accounts=("server",),
        service="10.96.0.15",
        source=Source.POD,
    ),
    "a waypoint's own pod is never bound, whatever asks": Case(
        pod_labels={"gateway.networking.k8s.io/gateway-name": "server-wp", **use("all-wp")},
        account="server",
        endpoint_accounts=("server",),
        namespace_labels=use("all-wp"),
        service="10.96.0.15",
        source=Source.OWN,
        reason="never bound",
    ),
    "a waypoint's own Service is never bound": Case(
        service_labels={"gateway.istio.io/managed": "istio.io-mesh-controller"},
        namespace_labels=use("all-wp"),
        workload="10.96.0.13",
        source=Source.NAMESPACE,
    ),
    "a waypoint without an address binds nothing yet and says why": Case(
        pod_labels=use("new-wp"), source=Source.POD, reason="not ready"
    ),
    "a refused waypoint binds nothing and says why": Case(
        pod_labels=use("bad-wp"),
        source=Source.POD,
        reason="listener {name: mesh, port: 15008, protocol: HBONE}",
    ),
    "a label naming a missing waypoint binds nothing and says how to fix it": Case(
        pod_labels=use("nope"), source=Source.POD, reason="does not exist"
    ),
    "a waypoint in another namespace that admits only its own is not used": Case(
        pod_labels=use("shared", "infra"), source=Source.POD, reason="does not admit namespace demo"
    ),
    "a waypoint in another namespace that admits all namespaces is used": Case(
        pod_labels=use("open", "infra"), workload="10.96.1.2", source=Source.POD
    ),
    "a waypoint admitting namespaces by selector takes a matching namespace": Case(
        pod_labels=use("team", "infra"),
        namespace_labels={"team": "a"},
        workload="10.96.1.3",
        source=Source.POD,
    ),
    "a waypoint admitting namespaces by selector refuses another namespace": Case(
        pod_labels=use("team", "infra"), namespace_labels={"team": "b"}, source=Source.POD, reason="Selector"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_binding(case: Case) -> None:
    workload = bind_workload(
        namespace="demo",
        labels=case.pod_labels,
        service_account=case.account,
        namespace_labels=case.namespace_labels,
        waypoints=TABLE,
    )
    service = bind_service(
        namespace="demo",
        request=request_from_labels(case.service_labels),
        namespace_labels=case.namespace_labels,
        service_accounts=frozenset(case.endpoint_accounts),
        waypoints=TABLE,
    )
    assert workload.waypoint == (gw(case.workload) if case.workload else None), workload.reason
    assert service.waypoint == (gw(case.service) if case.service else None), service.reason
    assert workload.source == case.source
    if case.reason:
        assert case.reason in workload.reason or case.reason in service.reason


def test_a_mixed_account_service_says_why_it_has_no_per_account_waypoint() -> None:
    binding = bind_service(
        namespace="demo",
        request=NO_REQUEST,
        namespace_labels={},
        service_accounts=frozenset({"server", "client"}),
        waypoints=TABLE,
    )
    assert binding.waypoint is None
    assert "several service accounts (client, server)" in binding.reason


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"istio.io/use-waypoint": "nope"}, Reason.WAYPOINT_NOT_FOUND),
        (
            {"istio.io/use-waypoint": "shared", "istio.io/use-waypoint-namespace": "infra"},
            Reason.WAYPOINT_NOT_ALLOWED,
        ),
        ({"istio.io/use-waypoint": "ns-wp"}, None),
        ({"istio.io/use-waypoint": "none"}, None),
    ],
    ids=[
        "a namespace naming a missing waypoint is a problem of the namespace",
        "a namespace naming a waypoint that does not admit it is a problem of the namespace",
        "a namespace naming a known waypoint is fine",
        "a namespace opting out is fine",
    ],
)
def test_namespace_label_problems(labels: dict[str, str], expected: Reason | None) -> None:
    problem = namespace_problem(ResourceRef("Namespace", "", "demo"), labels, TABLE)
    assert (problem.reason if problem else None) == expected


def test_a_pod_label_problem_is_reported_but_a_namespace_one_is_not_repeated_on_each_pod() -> None:
    own = bind_workload(
        namespace="demo", labels=use("nope"), service_account="a", namespace_labels={}, waypoints=TABLE
    )
    inherited = bind_workload(
        namespace="demo", labels={}, service_account="a", namespace_labels=use("nope"), waypoints=TABLE
    )
    assert own.problem == Reason.WAYPOINT_NOT_FOUND
    assert inherited.problem is None and "does not exist" in inherited.reason


# --- Gateways -> waypoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway", "refusal"),
    [
        (waypoint(listeners=[]), "add it to spec.listeners"),
        (waypoint(listeners=[{"name": "mesh", "port": 15008, "protocol": "TCP"}]), "protocol: HBONE"),
        (waypoint(labels={"istio.io/waypoint-for": "everything"}), "not one of service, workload, all, none"),
        (waypoint(annotations={"istio.io/for-service-account": "Bad_Name"}), "for-service-account"),
        (
            waypoint(
                annotations={"istio.io/for-service-account": "a"},
                labels={"istio.io/for-service-account": "b"},
            ),
            "disagree",
        ),
        (waypoint("a.b"), "DNS label"),
        (
            waypoint(
                listeners=[
                    {
                        "name": "mesh",
                        "port": 15008,
                        "protocol": "HBONE",
                        "allowedRoutes": {
                            "namespaces": {
                                "from": "Selector",
                                "selector": {"matchExpressions": [{"key": "x"}]},
                            }
                        },
                    }
                ]
            ),
            "matchExpressions",
        ),
    ],
    ids=[
        "a waypoint Gateway without listeners is refused",
        "a 15008 listener that is not HBONE is refused",
        "an unknown waypoint-for value is refused",
        "an invalid service account name is refused",
        "a for-service-account annotation and label that disagree are refused",
        "a name that cannot name a Service is refused",
        "namespace selectors with matchExpressions are refused",
    ],
)
def test_refused_waypoint_gateways_say_what_to_change(gateway, refusal: str) -> None:
    wp = waypoint_from_gateway(gateway)
    assert wp is not None and not wp.usable
    assert refusal in wp.refused


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        (waypoint(), TrafficType.SERVICE),
        (waypoint(annotations={"istio.io/for-service-account": "x"}), TrafficType.ALL),
        (waypoint(labels={"istio.io/for-service-account": "x"}), TrafficType.ALL),
        (
            waypoint(labels={"istio.io/for-service-account": "x", "istio.io/waypoint-for": "workload"}),
            TrafficType.WORKLOAD,
        ),
    ],
    ids=[
        "a waypoint takes service traffic by default",
        "a per-service-account waypoint (annotation) takes all traffic by default",
        "a per-service-account waypoint (label) takes all traffic by default",
        "a per-service-account waypoint's waypoint-for label still wins",
    ],
)
def test_traffic_type_defaults(gateway, expected: TrafficType) -> None:
    wp = waypoint_from_gateway(gateway)
    assert wp is not None and wp.traffic_type == expected


def test_other_gateway_classes_are_not_waypoints() -> None:
    gateway = waypoint()
    ingress = msgspec.structs.replace(gateway, spec={**gateway.spec, "gatewayClassName": "istio"})
    assert waypoint_from_gateway(ingress) is None


@pytest.mark.parametrize(
    ("addresses", "usable", "why"),
    [
        ([{"type": "IPAddress", "value": "10.96.0.1"}], True, ""),
        ([{"value": "10.96.0.1"}], True, ""),
        (
            [{"type": "Hostname", "value": "wp.demo.svc.cluster.local"}],
            False,
            "waiting for the waypoint Service's cluster IP",
        ),
        ([], False, "empty"),
        ([{"type": "IPAddress", "value": "not-an-ip"}], False, "no usable IPAddress"),
    ],
    ids=[
        "an IPAddress makes it usable",
        "an address without a type is an IPAddress",
        "a hostname alone waits for the VIP",
        "no address: not programmed yet",
        "a malformed IP is not an address",
    ],
)
def test_a_waypoint_is_usable_only_with_an_ip_address(addresses, usable: bool, why: str) -> None:
    gateway = waypoint()
    programmed = msgspec.structs.replace(gateway, status={"addresses": addresses})
    wp = waypoint_from_gateway(programmed, network="net1")
    assert wp is not None and wp.usable == usable
    if usable:
        assert wp.address == GatewayAddress(
            address=NetworkAddress("10.96.0.1", "net1"), hbone_mtls_port=15008
        )
    else:
        assert why in wp.not_ready


def test_two_waypoints_for_one_account_first_by_name_wins_and_the_other_is_reported() -> None:
    a = waypoint_from_gateway(waypoint("a", annotations={"istio.io/for-service-account": "x"}))
    b = waypoint_from_gateway(waypoint("b", labels={"istio.io/for-service-account": "x"}))
    assert a is not None and b is not None
    table = SimpleWaypointTable([b, a])
    assert table.for_service_account("demo", "x") == a
    refs = {n: ResourceRef("Gateway", "demo", n) for n in ("a", "b")}
    problems = gateway_problems(refs, {"a": a, "b": b})
    assert list(problems) == ["b"]
    assert problems["b"][0].reason == Reason.WAYPOINT_CONFLICT and "demo/a" in problems["b"][0].message


def test_an_unprogrammed_waypoint_is_reported_as_information() -> None:
    wp = waypoint_from_gateway(waypoint(address=None))
    assert wp is not None
    problems = gateway_problems({"waypoint": ResourceRef("Gateway", "demo", "waypoint")}, {"waypoint": wp})
    assert [(p.severity, p.reason) for p in problems["waypoint"]] == [
        (Severity.INFO, Reason.WAYPOINT_NOT_READY)
    ]
