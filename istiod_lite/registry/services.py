"""Kubernetes Services -> Istio ``Service`` values (pure).

A Service becomes ``<name>.<ns>.svc.<domain_suffix>`` with its cluster IPs as VIPs on the configured
network. Headless services (``clusterIP: None``) and services without a cluster IP are still Services,
with no VIP: their pods are reached by pod IP. Each port keeps ``service_port`` and a numeric
``target_port``; a *named* targetPort is 0 here and is resolved per pod (``workloads.resolve_ports``),
because two pods behind one Service may number the same name differently. A missing targetPort means
"same as port" (what the API server defaults). ``app_protocol`` follows Istio: ``appProtocol`` first,
then the port name prefix (``http-web`` -> HTTP/1.1, ``grpc-web*`` is HTTP/1.1, ``tcp``, ``tls``...).

Only a Service with a non-empty selector selects pods (Kubernetes: no selector = manual endpoints).
Waypoint binding is not decided here (it depends on the Service's endpoints and on the Gateways): the
Service's own waypoint labels are kept in ``ServiceInfo.waypoint_request`` for ``registry.waypoints``.
An unusable cluster IP or port raises ``InvalidService``; the caller skips that Service and reports it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from istiod_lite.registry.errors import InvalidService
from istiod_lite.registry.waypoints import (
    MANAGED_BY_MESH_CONTROLLER,
    MANAGED_GATEWAY_LABEL,
    NO_REQUEST,
    WaypointRequest,
    request_from_labels,
)
from meshcore.model import (
    AppProtocol,
    LoadBalancing,
    LoadBalancingMode,
    NetworkAddress,
    Port,
    Service,
)
from meshcore.store.resource import Resource

# istio.workload.LoadBalancing.Scope numbers (the model keeps routing_preference as plain ints).
SCOPE_REGION = 1
SCOPE_ZONE = 2
SCOPE_SUBZONE = 3
SCOPE_NODE = 4
SCOPE_NETWORK = 6


# A dotted-quad IPv4 address already in canonical form (no leading zeros): the common case, checked
# without building an ipaddress object (which costs ~20x more on a 10,000-pod recompute).
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)

# Istio's protocol names (pkg/config/protocol) -> what ztunnel is told.
_PROTOCOLS: dict[str, AppProtocol] = {
    "http": AppProtocol.HTTP11,
    "http_proxy": AppProtocol.HTTP11,
    "grpc-web": AppProtocol.HTTP11,
    "http2": AppProtocol.HTTP2,
    "grpc": AppProtocol.GRPC,
    "https": AppProtocol.TLS,
    "tls": AppProtocol.TLS,
    "tcp": AppProtocol.TCP,
    "mongo": AppProtocol.TCP,
    "mysql": AppProtocol.TCP,
    "redis": AppProtocol.TCP,
}
# Kubernetes' standard appProtocol values (KEP-3726).
_K8S_APP_PROTOCOLS: dict[str, AppProtocol] = {
    "kubernetes.io/h2c": AppProtocol.HTTP2,
    "kubernetes.io/ws": AppProtocol.HTTP11,
    "kubernetes.io/wss": AppProtocol.TLS,
}


class ServicePortSpec(msgspec.Struct, frozen=True):
    """One Service port as written, kept so named target ports can be resolved per pod."""

    port: int
    target_port: int  # 0 when the targetPort is a name
    target_port_name: str  # "" when the targetPort is a number
    app_protocol: AppProtocol


class ServiceInfo(msgspec.Struct, frozen=True):
    """A converted Service plus what workload building needs: its selector and its port specs.

    ``service.waypoint`` is always None here: binding needs the accounts its endpoints run as, which only
    the registry knows; it binds from ``waypoint_request`` (the Service's own waypoint labels).
    """

    service: Service
    selector: dict[str, str]  # empty: selects no pods
    ports: tuple[ServicePortSpec, ...]
    waypoint_request: WaypointRequest = NO_REQUEST


def canonical_ip(value: object) -> str:
    """The canonical text of an IPv4/IPv6 address; raises ValueError for anything else."""
    if isinstance(value, str) and _CANONICAL_IPV4.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IP address")
    return str(ipaddress.ip_address(value))


def service_hostname(name: str, namespace: str, domain_suffix: str = "cluster.local") -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def app_protocol_of(port_name: str, app_protocol: str | None, transport: str = "TCP") -> AppProtocol:
    """Istio's protocol selection for a Service port: ``appProtocol`` wins, then the name prefix."""
    if transport.upper() != "TCP":
        return AppProtocol.UNKNOWN  # UDP/SCTP never reach ztunnel
    if app_protocol:
        known = _K8S_APP_PROTOCOLS.get(app_protocol.lower()) or _PROTOCOLS.get(app_protocol.lower())
        if known is not None:
            return known
    name = port_name.lower()
    if name.startswith("grpc-web"):  # checked before the prefix split: the prefix itself has a dash
        return AppProtocol.HTTP11
    return _PROTOCOLS.get(name.split("-", 1)[0], AppProtocol.UNKNOWN)


def build_service(
    resource: Resource,
    *,
    network: str = "",
    domain_suffix: str = "cluster.local",
    namespace_labels: Mapping[str, str] | None = None,
) -> ServiceInfo:
    """Convert one Service resource; raises ``InvalidService`` with the field to fix."""
    spec = resource.spec
    ports = tuple(_port_spec(resource, i, p) for i, p in enumerate(_list(resource, spec, "ports")))
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise InvalidService(resource.ref, "spec.selector must map label names to string values")
    service = Service(
        name=resource.name,
        namespace=resource.namespace,
        hostname=service_hostname(resource.name, resource.namespace, domain_suffix),
        addresses=tuple(NetworkAddress(ip, network) for ip in _cluster_ips(resource)),
        ports=tuple(Port(p.port, p.target_port, p.app_protocol) for p in ports),
        load_balancing=_load_balancing(resource),
    )
    return ServiceInfo(
        service=service, selector=dict(selector), ports=ports, waypoint_request=request_from_labels(resource.labels)
    )


def _list(resource: Resource, parent: Mapping[str, Any], key: str) -> list[Any]:
    value = parent.get(key) or []
    if not isinstance(value, list):
        raise InvalidService(resource.ref, f"spec.{key} must be a list, got {type(value).__name__}")
    return value


def _cluster_ips(resource: Resource) -> list[str]:
    """Canonical VIPs from ``clusterIPs`` (dual stack) or ``clusterIP``; none for headless."""
    spec = resource.spec
    raw = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not isinstance(raw, list):
        raise InvalidService(resource.ref, "spec.clusterIPs must be a list of IP addresses")
    out: list[str] = []
    for value in raw:
        if value == "None":
            continue  # headless
        try:
            ip = canonical_ip(value)
        except ValueError:
            raise InvalidService(
                resource.ref, f'spec.clusterIP {value!r} is not an IP address (or "None" for headless)'
            ) from None
        if ip not in out:
            out.append(ip)
    return out


def _valid_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _port_spec(resource: Resource, index: int, raw: Any) -> ServicePortSpec:
    where = f"spec.ports[{index}]"
    if not isinstance(raw, dict):
        raise InvalidService(resource.ref, f"{where} must be a mapping with at least 'port'")
    port = raw.get("port")
    if not _valid_port(port):
        raise InvalidService(resource.ref, f"{where}.port {port!r} must be a number from 1 to 65535")
    assert isinstance(port, int)
    target: Any = raw.get("targetPort", port)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    target_port, target_name = 0, ""
    if isinstance(target, str) and target:
        target_name = target
    elif _valid_port(target):
        target_port = target
    else:
        raise InvalidService(
            resource.ref, f"{where}.targetPort {target!r} must be a port number (1-65535) or a port name"
        )
    name = raw.get("name") or ""
    app_proto = raw.get("appProtocol")
    transport = raw.get("protocol") or "TCP"
    if not isinstance(name, str) or not isinstance(transport, str) or not isinstance(app_proto, str | None):
        raise InvalidService(resource.ref, f"{where}: name, protocol and appProtocol must be strings")
    return ServicePortSpec(port, target_port, target_name, app_protocol_of(name, app_proto, transport))


def _load_balancing(resource: Resource) -> LoadBalancing | None:
    """Istio's mapping of traffic policy fields to ztunnel load balancing (last match wins)."""
    spec = resource.spec
    prefer_close = LoadBalancing(
        routing_preference=(SCOPE_NETWORK, SCOPE_REGION, SCOPE_ZONE, SCOPE_SUBZONE),
        mode=LoadBalancingMode.FAILOVER,
    )
    lb: LoadBalancing | None = None
    if spec.get("trafficDistribution") == "PreferClose":
        lb = prefer_close
    if resource.labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH_CONTROLLER:
        lb = prefer_close  # a waypoint's own Service: stay local when possible
    if spec.get("internalTrafficPolicy") == "Local":
        lb = LoadBalancing(routing_preference=(SCOPE_NODE,), mode=LoadBalancingMode.STRICT)
    return lb
