"""Services -> Istio Services: hostnames, VIPs, headless services, ports, protocols, load balancing."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.registry.errors import InvalidService
from istiod_lite.registry.services import (
    SCOPE_NODE,
    ServicePortSpec,
    app_protocol_of,
    build_service,
)
from meshcore.model import AppProtocol, LoadBalancingMode, NetworkAddress, Port
from meshcore.store.resource import Resource


def service(spec: dict[str, Any], *, labels: dict[str, str] | None = None) -> Resource:
    return Resource(kind="Service", name="web", namespace="demo", labels=labels or {}, spec=spec)


@pytest.mark.parametrize(
    ("name", "app_protocol", "transport", "expected"),
    [
        ("http", None, "TCP", AppProtocol.HTTP11),
        ("http-web", None, "TCP", AppProtocol.HTTP11),
        ("HTTP2-api", None, "TCP", AppProtocol.HTTP2),
        ("grpc", None, "TCP", AppProtocol.GRPC),
        ("grpc-web", None, "TCP", AppProtocol.HTTP11),
        ("tcp-db", None, "TCP", AppProtocol.TCP),
        ("tls", None, "TCP", AppProtocol.TLS),
        ("https-admin", None, "TCP", AppProtocol.TLS),
        ("mysql", None, "TCP", AppProtocol.TCP),
        ("web", None, "TCP", AppProtocol.UNKNOWN),
        ("", None, "TCP", AppProtocol.UNKNOWN),
        ("tcp", "http", "TCP", AppProtocol.HTTP11),
        ("http", "kubernetes.io/h2c", "TCP", AppProtocol.HTTP2),
        ("http", "made-up", "TCP", AppProtocol.HTTP11),
        ("http", None, "UDP", AppProtocol.UNKNOWN),
    ],
    ids=[
        "a port named http is HTTP/1.1",
        "a name prefix before a dash gives the protocol",
        "name prefixes are case-insensitive",
        "a port named grpc is gRPC",
        "grpc-web is plain HTTP/1.1",
        "tcp-db is TCP",
        "tls is TLS",
        "https is TLS to ztunnel",
        "database protocols are TCP",
        "an unknown name is unknown",
        "an unnamed port is unknown",
        "appProtocol wins over the port name",
        "the Kubernetes h2c appProtocol is HTTP/2",
        "an unknown appProtocol falls back to the port name",
        "a UDP port never gets a TCP protocol",
    ],
)
def test_app_protocol(name: str, app_protocol: str | None, transport: str, expected: AppProtocol) -> None:
    assert app_protocol_of(name, app_protocol, transport) == expected


def test_a_service_gets_its_hostname_vip_and_ports() -> None:
    info = build_service(
        service(
            {
                "clusterIP": "10.96.0.10",
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "grpc", "port": 9000, "targetPort": 9001},
                    {"port": 5432},
                ],
            }
        ),
        network="net1",
    )
    svc = info.service
    assert (svc.name, svc.namespace, svc.hostname) == ("web", "demo", "web.demo.svc.cluster.local")
    assert svc.key == "demo/web.demo.svc.cluster.local"
    assert svc.addresses == (NetworkAddress("10.96.0.10", "net1"),)
    assert svc.ports == (
        Port(80, 0, AppProtocol.HTTP11),
        Port(9000, 9001, AppProtocol.GRPC),
        Port(5432, 5432, AppProtocol.UNKNOWN),
    )
    assert svc.subject_alt_names == ()
    assert svc.waypoint is None
    assert info.selector == {"app": "web"}
    assert info.ports[0] == ServicePortSpec(80, 0, "http", AppProtocol.HTTP11)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"clusterIP": "None", "selector": {"app": "web"}}, ()),
        ({"selector": {"app": "web"}}, ()),
        ({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00:0::1"]}, ("10.96.0.1", "fd00::1")),
    ],
    ids=[
        "a headless service is a service without a VIP",
        "a service without a cluster IP has no VIP",
        "a dual-stack service has both VIPs, canonicalised",
    ],
)
def test_service_vips(spec: dict[str, Any], expected: tuple[str, ...]) -> None:
    info = build_service(service(spec))
    assert tuple(a.address for a in info.service.addresses) == expected


def test_a_digit_string_target_port_is_a_number() -> None:
    info = build_service(service({"ports": [{"port": 80, "targetPort": "8080"}]}))
    assert info.service.ports == (Port(80, 8080),)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"clusterIP": "10.96.0.300"}, "spec.clusterIP '10.96.0.300' is not an IP address"),
        ({"ports": [{"port": 0}]}, r"spec.ports\[0\].port 0 must be a number from 1 to 65535"),
        ({"ports": [{"port": 80, "targetPort": 70000}]}, r"spec.ports\[0\].targetPort 70000"),
        ({"ports": "80"}, "spec.ports must be a list"),
        ({"selector": {"app": 1}}, "spec.selector must map label names to string values"),
    ],
    ids=[
        "an unparsable cluster IP is refused",
        "port 0 is refused",
        "a target port out of range is refused",
        "ports that are not a list are refused",
        "a selector with non-string values is refused",
    ],
)
def test_unusable_services_raise(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidService, match=fragment):
        build_service(service(spec))


def test_internal_traffic_policy_local_keeps_traffic_on_the_node() -> None:
    lb = build_service(service({"internalTrafficPolicy": "Local"})).service.load_balancing
    assert lb is not None
    assert (lb.routing_preference, lb.mode) == ((SCOPE_NODE,), LoadBalancingMode.STRICT)


@pytest.mark.parametrize(
    ("spec", "labels"),
    [
        ({"trafficDistribution": "PreferClose"}, {}),
        ({}, {"gateway.istio.io/managed": "istio.io-mesh-controller"}),
    ],
    ids=["PreferClose fails over by locality", "a waypoint's own service prefers close endpoints"],
)
def test_locality_failover(spec: dict[str, Any], labels: dict[str, str]) -> None:
    lb = build_service(service(spec, labels=labels)).service.load_balancing
    assert lb is not None
    assert lb.mode == LoadBalancingMode.FAILOVER
    assert lb.routing_preference[0] == 6  # NETWORK first


def test_a_plain_service_has_no_load_balancing_override() -> None:
    assert build_service(service({})).service.load_balancing is None
