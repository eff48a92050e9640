"""Conversion between the data-plane models and Istio's protobuf messages (workload API, authorization API).

Both directions are pure and total over valid input. ``*_from_proto`` is where peer input (xDS from the
control plane) enters the model, so it validates: required names present, IPs exactly 4 or 16 raw bytes,
ports 0..65535, known enum values, a usable workload identity, and no ``LEGACY_ISTIO_MTLS`` tunnel (ztunnel
refuses it too). Any violation raises ``ConversionError`` whose message names the offending field path, so a
NACK tells the operator what to fix. ``*_to_proto`` raises ``ConversionError`` for model values that cannot be
encoded (a non-IP address string). Empty ``trust_domain``/``service_account`` on the wire mean
``cluster.local``/``default``, as in ztunnel. Proto fields the model does not carry yet (extensions,
network_gateway, application_tunnel, capacity, weighted_waypoints, ...) are dropped on decode.
Decoding is a hot path (a full push is ~10,000 workloads per proxy): ``DecodeCache`` lets a batch decode
share and validate once the values many resources repeat (port lists, ``services`` maps, identities); the
models are frozen, so shared values are never mutated. Must not do I/O or logging; callers decide what a
rejection costs.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from sys import intern
from typing import TypeVar

from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.model.authorization import (
    Action,
    Authorization,
    Clause,
    IpNet,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from meshcore.model.service import HealthPolicy, LoadBalancing, LoadBalancingMode, Service
from meshcore.model.workload import (
    AppProtocol,
    GatewayAddress,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)
from meshcore.proto import authorization_pb2, workload_pb2

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"

# ztunnel's defaults for empty identity parts (src/xds/types: trust_domain / service_account).
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"

_MAX_PORT = 65535
_LOAD_BALANCING_SCOPES = range(0, 7)  # LoadBalancing.Scope: UNSPECIFIED_SCOPE=0 .. NETWORK=6

_E = TypeVar("_E", bound=enum.IntEnum)
_T = TypeVar("_T")
_P = TypeVar("_P")


def convert_each(values: Iterable[_P], field: str, convert: Callable[[_P, str], _T]) -> tuple[_T, ...]:
    """``convert`` every value, each told its place (``field[i]``) for error messages."""
    return tuple(convert(v, f"{field}[{i}]") for i, v in enumerate(values))


def encode_each(values: Sequence[_T], field: str, convert: Callable[[_T, str], _P]) -> list[_P]:
    """``convert`` every model value to its proto form, each told its place (``field[i]``)."""
    return [convert(v, f"{field}[{i}]") for i, v in enumerate(values)]


class ConversionError(ValueError):
    """A model or protobuf value that cannot be converted; ``field`` is the dotted path of the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# ---------------------------------------------------------------------------------------------- helpers


def _ip_str(raw: bytes) -> str | None:
    """The canonical (``ipaddress``) text form of a raw 4- or 16-byte address; None for any other length.
    IPv4, by far the common case, is formatted directly: ``ipaddress`` costs four times as much."""
    n = len(raw)
    if n == 4:
        return "%d.%d.%d.%d" % (*raw,)  # noqa: UP031 - the fastest formatting for four small ints
    if n == 16:
        return str(ipaddress.IPv6Address(raw))
    return None


def _ip_from_bytes(raw: bytes, field: str) -> str:
    ip = _ip_str(raw)
    if ip is None:
        raise ConversionError(field, f"IP address must be 4 or 16 raw bytes, got {len(raw)}")
    return ip


def _ips_from_bytes(values: Sequence[bytes], field: str) -> tuple[str, ...]:
    ips = tuple(map(_ip_str, values))
    if None in ips:
        for i, raw in enumerate(values):
            _ip_from_bytes(raw, f"{field}[{i}]")  # raises for the first bad one
    return ips  # type: ignore[return-value]  # no None left


def _ip_to_bytes(ip: str, field: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except ValueError:
        raise ConversionError(field, f"{ip!r} is not an IP address") from None


def _port(value: int, field: str) -> int:
    if not 0 <= value <= _MAX_PORT:
        raise ConversionError(field, f"port {value} is outside 0..{_MAX_PORT}")
    return value


def _enum(cls: type[_E], value: int, field: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(f"{m.name}={m.value}" for m in cls)
        raise ConversionError(field, f"unknown {cls.__name__} value {value} (known: {known})") from None


def _members(cls: type[_E]) -> dict[int, _E]:
    return {m.value: m for m in cls}


# value -> member tables: a dict lookup instead of EnumMeta.__call__ on the decode hot path.
_TUNNEL_PROTOCOLS = _members(TunnelProtocol)
_WORKLOAD_TYPES = _members(WorkloadType)
_WORKLOAD_STATUSES = _members(WorkloadStatus)


def _required(value: str, field: str) -> str:
    if not value:
        raise ConversionError(field, "is required but empty")
    return value


def _namespaced_key(key: str, field: str) -> str:
    ns, sep, host = key.partition("/")
    if not sep or not ns or not host:
        raise ConversionError(field, f"key {key!r} is not of the form <namespace>/<hostname>")
    return key


# The field order ``workload_from_proto`` passes positionally; checked at import so a model change cannot
# silently shift values into the wrong fields.
_WORKLOAD_FIELDS = (
    "uid", "name", "namespace", "service_account", "trust_domain", "addresses", "network", "tunnel_protocol",
    "waypoint", "node", "canonical_name", "canonical_revision", "workload_type", "workload_name",
    "native_tunnel", "authorization_policies", "status", "cluster_id", "hostname", "services", "locality",
)  # fmt: skip
if Workload.__struct_fields__ != _WORKLOAD_FIELDS:
    raise ImportError(
        f"meshcore.model.Workload fields are now {Workload.__struct_fields__}; update workload_from_proto's "
        "positional construction and _WORKLOAD_FIELDS in meshcore/model/convert.py to match"
    )


# ----------------------------------------------------------------------------------------- decode cache


class DecodeCache:
    """Memo for one batch of decodes (one xDS response): a value seen before is reused, not rebuilt or
    re-validated. Keys are raw wire values (a ``services`` entry by its serialized ``PortList``), so a hit
    is exactly what a fresh decode would return; a failure is never cached (every bad resource raises with
    its own field path). Not thread-safe: one per batch, dropped with it."""

    __slots__ = ("_identities", "_port_lists", "_services")

    def __init__(self) -> None:
        self._port_lists: dict[tuple[tuple[int, int, int], ...], tuple[Port, ...]] = {}
        # One entry: (name, serialized PortList); more: a tuple of those pairs, sorted by name.
        self._services: dict[tuple[str, bytes] | tuple[tuple[str, bytes], ...], dict[str, tuple[Port, ...]]] = {}
        self._identities: set[tuple[str, str, str]] = set()

    def ports(self, pbs: Sequence[workload_pb2.Port], field: str) -> tuple[Port, ...]:
        key = tuple([(p.service_port, p.target_port, p.app_protocol) for p in pbs])
        ports = self._port_lists.get(key)
        if ports is None:
            ports = self._port_lists[key] = _ports_from_proto(pbs, field)
        return ports

    def services(self, pbs: Mapping[str, workload_pb2.PortList], field: str) -> dict[str, tuple[Port, ...]]:
        """A workload's ``services`` map, keys in sorted order (as every decode returns them)."""
        key: tuple[str, bytes] | tuple[tuple[str, bytes], ...]
        if len(pbs) == 1:  # the common case: a pod behind one service
            [name] = pbs
            key = (name, pbs[name].SerializeToString())
        else:
            key = tuple([(name, pbs[name].SerializeToString()) for name in sorted(pbs)])
        services = self._services.get(key)
        if services is None:
            services = {}
            for name in sorted(pbs):
                where = f"{field}[{name!r}]"
                services[_namespaced_key(name, where)] = self.ports(pbs[name].ports, f"{where}.ports")
            self._services[key] = services
        return services

    def check_identity(self, trust_domain: str, namespace: str, service_account: str, field: str) -> None:
        parts = (trust_domain, namespace, service_account)
        if parts in self._identities:
            return
        try:
            SpiffeId(trust_domain, namespace, service_account)
        except InvalidSpiffeId as e:
            raise ConversionError(field, f"invalid identity: {e}") from None
        self._identities.add(parts)


# ------------------------------------------------------------------------------------- shared messages


def _port_to_proto(p: Port, field: str) -> workload_pb2.Port:
    return workload_pb2.Port(
        service_port=_port(p.service_port, f"{field}.service_port"),
        target_port=_port(p.target_port, f"{field}.target_port"),
        app_protocol=int(p.app_protocol),  # type: ignore[arg-type]
    )


def _port_from_proto(pb: workload_pb2.Port, field: str) -> Port:
    return Port(
        service_port=_port(pb.service_port, f"{field}.service_port"),
        target_port=_port(pb.target_port, f"{field}.target_port"),
        app_protocol=_enum(AppProtocol, pb.app_protocol, f"{field}.app_protocol"),
    )


def _ports_to_proto(ports: Iterable[Port], field: str) -> list[workload_pb2.Port]:
    return [_port_to_proto(p, f"{field}[{i}]") for i, p in enumerate(ports)]


def _ports_from_proto(ports: Iterable[workload_pb2.Port], field: str) -> tuple[Port, ...]:
    return tuple(_port_from_proto(p, f"{field}[{i}]") for i, p in enumerate(ports))


def _network_address_to_proto(a: NetworkAddress, field: str) -> workload_pb2.NetworkAddress:
    return workload_pb2.NetworkAddress(network=a.network, address=_ip_to_bytes(a.address, f"{field}.address"))


def _network_address_from_proto(pb: workload_pb2.NetworkAddress, field: str) -> NetworkAddress:
    return NetworkAddress(address=_ip_from_bytes(pb.address, f"{field}.address"), network=pb.network)


def _gateway_to_proto(g: GatewayAddress, field: str) -> workload_pb2.GatewayAddress:
    pb = workload_pb2.GatewayAddress(hbone_mtls_port=_port(g.hbone_mtls_port, f"{field}.hbone_mtls_port"))
    if g.hostname is not None:
        pb.hostname.namespace = g.hostname.namespace
        pb.hostname.hostname = g.hostname.hostname
    elif g.address is not None:
        pb.address.CopyFrom(_network_address_to_proto(g.address, f"{field}.address"))
    else:
        raise ConversionError(field, "gateway has neither a hostname nor an address")
    return pb


def _gateway_from_proto(pb: workload_pb2.GatewayAddress, field: str) -> GatewayAddress:
    port = _port(pb.hbone_mtls_port, f"{field}.hbone_mtls_port")
    kind = pb.WhichOneof("destination")
    if kind == "hostname":
        host = NamespacedHostname(
            namespace=_required(pb.hostname.namespace, f"{field}.hostname.namespace"),
            hostname=_required(pb.hostname.hostname, f"{field}.hostname.hostname"),
        )
        return GatewayAddress(hostname=host, hbone_mtls_port=port)
    if kind == "address":
        return GatewayAddress(address=_network_address_from_proto(pb.address, f"{field}.address"), hbone_mtls_port=port)
    raise ConversionError(field, "gateway has neither a hostname nor an address")


# ------------------------------------------------------------------------------------------- workload


def workload_to_proto(w: Workload) -> workload_pb2.Workload:
    """Encode a workload; raises ``ConversionError`` if an address or port cannot be encoded."""
    pb = workload_pb2.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        service_account=w.service_account,
        trust_domain=w.trust_domain,
        addresses=[_ip_to_bytes(a, f"workload.addresses[{i}]") for i, a in enumerate(w.addresses)],
        network=w.network,
        tunnel_protocol=int(w.tunnel_protocol),  # type: ignore[arg-type]
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=int(w.workload_type),  # type: ignore[arg-type]
        workload_name=w.workload_name,
        native_tunnel=w.native_tunnel,
        authorization_policies=list(w.authorization_policies),
        status=int(w.status),  # type: ignore[arg-type]
        cluster_id=w.cluster_id,
        hostname=w.hostname,
    )
    if w.waypoint is not None:
        pb.waypoint.CopyFrom(_gateway_to_proto(w.waypoint, "workload.waypoint"))
    for key, ports in w.services.items():
        field = f"workload.services[{key!r}]"
        pb.services[_namespaced_key(key, field)].ports.extend(_ports_to_proto(ports, f"{field}.ports"))
    if w.locality is not None:
        pb.locality.CopyFrom(
            workload_pb2.Locality(region=w.locality.region, zone=w.locality.zone, subzone=w.locality.subzone)
        )
    return pb


def workload_from_proto(pb: workload_pb2.Workload, cache: DecodeCache | None = None) -> Workload:
    """Decode and validate a workload; raises ``ConversionError`` naming the bad field.

    Pass one ``cache`` to every call of a batch to share repeated values (see ``DecodeCache``).
    """
    c = cache if cache is not None else DecodeCache()
    tunnel = _TUNNEL_PROTOCOLS.get(pb.tunnel_protocol)
    if tunnel is None:
        tunnel = _enum(TunnelProtocol, pb.tunnel_protocol, "workload.tunnel_protocol")  # raises
    if tunnel is TunnelProtocol.LEGACY_ISTIO_MTLS:
        raise ConversionError("workload.tunnel_protocol", "unsupported tunnel protocol LEGACY_ISTIO_MTLS")
    # Fields many workloads share are interned: one string object per value, not one per workload (a
    # proxy holds 10,000s of workloads).
    trust_domain = intern(pb.trust_domain or DEFAULT_TRUST_DOMAIN)
    service_account = intern(pb.service_account or DEFAULT_SERVICE_ACCOUNT)
    namespace = intern(pb.namespace or _required("", "workload.namespace"))
    if (trust_domain, namespace, service_account) not in c._identities:
        c.check_identity(trust_domain, namespace, service_account, "workload.identity")
    services = c.services(pb.services, "workload.services") if pb.services else {}
    uid = pb.uid or _required("", "workload.uid")
    name = pb.name or _required("", "workload.name")
    raw_addresses = pb.addresses
    if len(raw_addresses) == 1 and (ip := _ip_str(raw_addresses[0])) is not None:
        addresses: tuple[str, ...] = (ip,)
    else:
        addresses = _ips_from_bytes(raw_addresses, "workload.addresses")
    waypoint = _gateway_from_proto(pb.waypoint, "workload.waypoint") if pb.HasField("waypoint") else None
    workload_type = _WORKLOAD_TYPES.get(pb.workload_type)
    if workload_type is None:
        workload_type = _enum(WorkloadType, pb.workload_type, "workload.workload_type")  # raises
    status = _WORKLOAD_STATUSES.get(pb.status)
    if status is None:
        status = _enum(WorkloadStatus, pb.status, "workload.status")  # raises
    # Positional: msgspec matches 21 keyword names one by one, which costs more than decoding them.
    return Workload(
        uid,
        name,
        namespace,
        service_account,
        trust_domain,
        addresses,
        intern(pb.network),
        tunnel,
        waypoint,
        intern(pb.node),
        intern(pb.canonical_name),
        intern(pb.canonical_revision),
        workload_type,
        pb.workload_name,
        pb.native_tunnel,
        tuple(pb.authorization_policies) if pb.authorization_policies else (),
        status,
        intern(pb.cluster_id),
        pb.hostname,
        services,
        (
            Locality(region=pb.locality.region, zone=pb.locality.zone, subzone=pb.locality.subzone)
            if pb.HasField("locality")
            else None
        ),
    )


# -------------------------------------------------------------------------------------------- service


def service_to_proto(s: Service) -> workload_pb2.Service:
    """Encode a service; raises ``ConversionError`` if a VIP or port cannot be encoded."""
    pb = workload_pb2.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=[_network_address_to_proto(a, f"service.addresses[{i}]") for i, a in enumerate(s.addresses)],
        ports=_ports_to_proto(s.ports, "service.ports"),
        subject_alt_names=list(s.subject_alt_names),
    )
    if s.waypoint is not None:
        pb.waypoint.CopyFrom(_gateway_to_proto(s.waypoint, "service.waypoint"))
    if s.load_balancing is not None:
        lb = s.load_balancing
        for i, scope in enumerate(lb.routing_preference):
            if scope not in _LOAD_BALANCING_SCOPES:
                raise ConversionError(f"service.load_balancing.routing_preference[{i}]", f"unknown scope {scope}")
        pb.load_balancing.CopyFrom(
            workload_pb2.LoadBalancing(
                routing_preference=list(lb.routing_preference),  # type: ignore[arg-type]
                mode=int(lb.mode),  # type: ignore[arg-type]
                health_policy=int(lb.health_policy),  # type: ignore[arg-type]
            )
        )
    return pb


def service_from_proto(pb: workload_pb2.Service, cache: DecodeCache | None = None) -> Service:
    """Decode and validate a service; raises ``ConversionError`` naming the bad field.

    Pass one ``cache`` to every call of a batch to share repeated values (see ``DecodeCache``).
    """
    load_balancing = None
    if pb.HasField("load_balancing"):
        lb = pb.load_balancing
        prefs = tuple(int(v) for v in lb.routing_preference)
        for i, scope in enumerate(prefs):
            if scope not in _LOAD_BALANCING_SCOPES:
                raise ConversionError(f"service.load_balancing.routing_preference[{i}]", f"unknown scope {scope}")
        load_balancing = LoadBalancing(
            routing_preference=prefs,
            mode=_enum(LoadBalancingMode, lb.mode, "service.load_balancing.mode"),
            health_policy=_enum(HealthPolicy, lb.health_policy, "service.load_balancing.health_policy"),
        )
    return Service(
        name=_required(pb.name, "service.name"),
        namespace=_required(pb.namespace, "service.namespace"),
        hostname=_required(pb.hostname, "service.hostname"),
        addresses=tuple(
            _network_address_from_proto(a, f"service.addresses[{i}]") for i, a in enumerate(pb.addresses)
        ),
        ports=(cache or DecodeCache()).ports(pb.ports, "service.ports"),
        subject_alt_names=tuple(pb.subject_alt_names),
        waypoint=_gateway_from_proto(pb.waypoint, "service.waypoint") if pb.HasField("waypoint") else None,
        load_balancing=load_balancing,
    )


# -------------------------------------------------------------------------------------------- address


def address_to_proto(model: Workload | Service) -> workload_pb2.Address:
    """Wrap a workload or service in the ``istio.workload.Address`` oneof the Address xDS type carries."""
    if isinstance(model, Workload):
        return workload_pb2.Address(workload=workload_to_proto(model))
    return workload_pb2.Address(service=service_to_proto(model))


def address_from_proto(pb: workload_pb2.Address, cache: DecodeCache | None = None) -> Workload | Service:
    """Unwrap and validate an ``Address``; one with neither a workload nor a service is an error.

    Pass one ``cache`` to every call of a batch to share repeated values (see ``DecodeCache``).
    """
    kind = pb.WhichOneof("type")
    if kind == "workload":
        return workload_from_proto(pb.workload, cache)
    if kind == "service":
        return service_from_proto(pb.service, cache)
    raise ConversionError("address", "holds neither a workload nor a service")


# -------------------------------------------------------------------------------------- authorization


def _string_match_to_proto(m: StringMatch, field: str) -> authorization_pb2.StringMatch:
    if m.kind == "exact":
        return authorization_pb2.StringMatch(exact=m.value)
    if m.kind == "prefix":
        return authorization_pb2.StringMatch(prefix=m.value)
    if m.kind == "suffix":
        return authorization_pb2.StringMatch(suffix=m.value)
    if m.kind == "presence":
        pb = authorization_pb2.StringMatch()
        pb.presence.SetInParent()
        return pb
    raise ConversionError(field, f"unknown string match kind {m.kind!r}")


def _string_match_from_proto(pb: authorization_pb2.StringMatch, field: str) -> StringMatch:
    kind = pb.WhichOneof("match_type")
    if kind == "exact":
        return StringMatch(kind="exact", value=pb.exact)
    if kind == "prefix":
        return StringMatch(kind="prefix", value=pb.prefix)
    if kind == "suffix":
        return StringMatch(kind="suffix", value=pb.suffix)
    if kind == "presence":
        return StringMatch(kind="presence")
    raise ConversionError(field, "string match has none of exact, prefix, suffix, presence")


def _ip_net_to_proto(n: IpNet, field: str) -> authorization_pb2.Address:
    raw = _ip_to_bytes(n.address, f"{field}.address")
    if not 0 <= n.length <= len(raw) * 8:
        raise ConversionError(f"{field}.length", f"prefix length {n.length} is outside 0..{len(raw) * 8}")
    return authorization_pb2.Address(address=raw, length=n.length)


def _ip_net_from_proto(pb: authorization_pb2.Address, field: str) -> IpNet:
    address = _ip_from_bytes(pb.address, f"{field}.address")
    bits = len(pb.address) * 8
    if pb.length > bits:
        raise ConversionError(f"{field}.length", f"prefix length {pb.length} is outside 0..{bits}")
    return IpNet(address=address, length=pb.length)


def _sa_to_proto(m: ServiceAccountMatch) -> authorization_pb2.ServiceAccountMatch:
    return authorization_pb2.ServiceAccountMatch(namespace=m.namespace, serviceAccount=m.service_account)


def _sa_from_proto(pb: authorization_pb2.ServiceAccountMatch, field: str) -> ServiceAccountMatch:
    return ServiceAccountMatch(
        namespace=_required(pb.namespace, f"{field}.namespace"),
        service_account=_required(pb.serviceAccount, f"{field}.serviceAccount"),
    )


_STRING_FIELDS = ("namespaces", "not_namespaces", "principals", "not_principals")
_IP_FIELDS = ("source_ips", "not_source_ips", "destination_ips", "not_destination_ips")
_PORT_FIELDS = ("destination_ports", "not_destination_ports")
_SA_FIELDS = ("service_accounts", "not_service_accounts")


def _match_to_proto(m: Match, field: str) -> authorization_pb2.Match:
    pb = authorization_pb2.Match()
    for name in _STRING_FIELDS:
        values: tuple[StringMatch, ...] = getattr(m, name)
        getattr(pb, name).extend(_string_match_to_proto(v, f"{field}.{name}[{i}]") for i, v in enumerate(values))
    for name in _IP_FIELDS:
        nets: tuple[IpNet, ...] = getattr(m, name)
        getattr(pb, name).extend(_ip_net_to_proto(v, f"{field}.{name}[{i}]") for i, v in enumerate(nets))
    for name in _PORT_FIELDS:
        ports: tuple[int, ...] = getattr(m, name)
        getattr(pb, name).extend(_port(v, f"{field}.{name}[{i}]") for i, v in enumerate(ports))
    for name in _SA_FIELDS:
        sas: tuple[ServiceAccountMatch, ...] = getattr(m, name)
        getattr(pb, name).extend(_sa_to_proto(v) for v in sas)
    return pb


def _match_from_proto(pb: authorization_pb2.Match, field: str) -> Match:
    def strings(values: Iterable[authorization_pb2.StringMatch], name: str) -> tuple[StringMatch, ...]:
        return tuple(_string_match_from_proto(v, f"{field}.{name}[{i}]") for i, v in enumerate(values))

    def nets(values: Iterable[authorization_pb2.Address], name: str) -> tuple[IpNet, ...]:
        return tuple(_ip_net_from_proto(v, f"{field}.{name}[{i}]") for i, v in enumerate(values))

    def ports(values: Iterable[int], name: str) -> tuple[int, ...]:
        return tuple(_port(v, f"{field}.{name}[{i}]") for i, v in enumerate(values))

    def sas(values: Iterable[authorization_pb2.ServiceAccountMatch], name: str) -> tuple[ServiceAccountMatch, ...]:
        return tuple(_sa_from_proto(v, f"{field}.{name}[{i}]") for i, v in enumerate(values))

    return Match(
        namespaces=strings(pb.namespaces, "namespaces"),
        not_namespaces=strings(pb.not_namespaces, "not_namespaces"),
        principals=strings(pb.principals, "principals"),
        not_principals=strings(pb.not_principals, "not_principals"),
        source_ips=nets(pb.source_ips, "source_ips"),
        not_source_ips=nets(pb.not_source_ips, "not_source_ips"),
        destination_ips=nets(pb.destination_ips, "destination_ips"),
        not_destination_ips=nets(pb.not_destination_ips, "not_destination_ips"),
        destination_ports=ports(pb.destination_ports, "destination_ports"),
        not_destination_ports=ports(pb.not_destination_ports, "not_destination_ports"),
        service_accounts=sas(pb.service_accounts, "service_accounts"),
        not_service_accounts=sas(pb.not_service_accounts, "not_service_accounts"),
    )


def authorization_to_proto(a: Authorization) -> authorization_pb2.Authorization:
    """Encode a policy. Model ``rules``/``clauses`` are Istio's ``groups``/``rules`` on the wire."""
    groups = []
    for ri, rule in enumerate(a.rules):
        group = authorization_pb2.Group()
        for ci, clause in enumerate(rule.clauses):
            field = f"authorization.groups[{ri}].rules[{ci}]"
            group.rules.add().matches.extend(
                _match_to_proto(m, f"{field}.matches[{mi}]") for mi, m in enumerate(clause.matches)
            )
        groups.append(group)
    return authorization_pb2.Authorization(
        name=a.name,
        namespace=a.namespace,
        scope=int(a.scope),  # type: ignore[arg-type]
        action=int(a.action),  # type: ignore[arg-type]
        groups=groups,
        dry_run=a.dry_run,
    )


def authorization_from_proto(pb: authorization_pb2.Authorization) -> Authorization:
    """Decode and validate a policy; raises ``ConversionError`` naming the bad field.

    ``namespace`` may be empty (ztunnel files GLOBAL policies under ""); ``name`` may not.
    """
    rules = tuple(
        Rule(
            clauses=tuple(
                Clause(
                    matches=tuple(
                        _match_from_proto(m, f"authorization.groups[{gi}].rules[{ri}].matches[{mi}]")
                        for mi, m in enumerate(clause.matches)
                    )
                )
                for ri, clause in enumerate(group.rules)
            )
        )
        for gi, group in enumerate(pb.groups)
    )
    return Authorization(
        name=_required(pb.name, "authorization.name"),
        namespace=pb.namespace,
        scope=_enum(Scope, pb.scope, "authorization.scope"),
        action=_enum(Action, pb.action, "authorization.action"),
        rules=rules,
        dry_run=pb.dry_run,
    )


# ------------------------------------------------------------------------------------- resource names


def resource_name(model: Workload | Service | Authorization) -> str:
    """The xDS resource name: workload uid, service ``ns/hostname``, authorization ``ns/name``."""
    if isinstance(model, Workload):
        return model.uid
    return model.key


__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "DEFAULT_SERVICE_ACCOUNT",
    "DEFAULT_TRUST_DOMAIN",
    "ConversionError",
    "DecodeCache",
    "address_from_proto",
    "address_to_proto",
    "authorization_from_proto",
    "authorization_to_proto",
    "resource_name",
    "service_from_proto",
    "service_to_proto",
    "workload_from_proto",
    "workload_to_proto",
]
