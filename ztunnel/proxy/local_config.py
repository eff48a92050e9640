"""``LOCAL_XDS_PATH``: workloads, services and policies from a YAML file instead of a control plane.

For tests, benchmarks and running ztunnel with no istiod (ztunnel's own ``LOCAL_XDS_PATH``). The file
is decoded with msgspec into the typed shapes below (camelCase keys as in ztunnel's config_dump,
unknown keys refused), turned into models, encoded to Istio's protobufs and applied with the very
``apply_delta`` the xDS client uses: a local file is validated exactly like a push. Unlike a push, any
problem fails the whole load (``LocalConfigError`` lists every problem with its path): an operator's
file is fixed before ztunnel starts, never half-applied. Shape::

    workloads:
    - {name: echo, namespace: default, serviceAccount: echo, workloadIps: [10.0.0.2], protocol: HBONE,
       node: node-1, services: {default/echo.default.svc.cluster.local: {80: 8080}}}
    services:
    - {name: echo, namespace: default, vips: [10.96.0.10], ports: {80: 8080}}
    policies:
    - {name: deny-sleep, namespace: default, scope: Namespace, action: Deny,
       rules: [[[{principals: [cluster.local/ns/default/sa/sleep]}]]]}

``rules`` is ztunnel's nesting: rules (OR) of clauses (AND) of matches (OR). Strings in ``principals`` /
``namespaces`` use AuthorizationPolicy syntax (``*`` presence, ``x*`` prefix, ``*x`` suffix, else exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
import yaml

from meshcore.model import (
    Action,
    Authorization,
    Clause,
    GatewayAddress,
    IpNet,
    Match,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
    policy_text,
)
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ConversionError,
    address_to_proto,
    authorization_to_proto,
    resource_name,
)
from meshcore.state import ProxyState, apply_delta

MAX_FILE_BYTES = 64 * 1024 * 1024


class LocalConfigError(ValueError):
    """The local config file cannot be used; ``problems`` lists each one as ``path: what is wrong``."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"local config {path} is not usable:\n  {shown}{more}")
        self.path = str(path)
        self.problems = problems


# ------------------------------------------------------------------------------------- file shapes


class _Base(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    pass


class LocalGateway(_Base):
    """A waypoint: ``address`` ("[network/]ip") or ``hostname`` ("namespace/host")."""

    address: str | None = None
    hostname: str | None = None
    hbone_mtls_port: int = 15008


class LocalWorkload(_Base):
    name: str
    namespace: str = "default"
    uid: str = ""  # default: <clusterId>//Pod/<namespace>/<name>
    service_account: str = "default"
    trust_domain: str = "cluster.local"
    workload_ips: list[str] = []
    protocol: Literal["HBONE", "TCP"] = "HBONE"
    node: str = ""
    network: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_name: str = ""
    workload_type: Literal["deployment", "cronjob", "pod", "job"] = "pod"
    native_tunnel: bool = False
    status: Literal["Healthy", "Unhealthy"] = "Healthy"
    cluster_id: str = "Kubernetes"
    hostname: str = ""
    authorization_policies: list[str] = []
    # "namespace/hostname" of each service this workload backs -> {service port: target port}.
    services: dict[str, dict[int, int]] = {}
    waypoint: LocalGateway | None = None


class LocalService(_Base):
    name: str
    namespace: str = "default"
    hostname: str = ""  # default: <name>.<namespace>.svc.cluster.local
    vips: list[str] = []  # "[network/]ip"
    ports: dict[int, int] = {}  # service port -> target port (0: same)
    subject_alt_names: list[str] = []
    waypoint: LocalGateway | None = None


StringSpec = str | dict[str, str]


class LocalMatch(_Base):
    namespaces: list[StringSpec] = []
    not_namespaces: list[StringSpec] = []
    principals: list[StringSpec] = []
    not_principals: list[StringSpec] = []
    source_ips: list[str] = []
    not_source_ips: list[str] = []
    destination_ips: list[str] = []
    not_destination_ips: list[str] = []
    destination_ports: list[int] = []
    not_destination_ports: list[int] = []
    service_accounts: list[str] = []  # "namespace/serviceaccount"
    not_service_accounts: list[str] = []


class LocalPolicy(_Base):
    name: str
    namespace: str = ""
    scope: Literal["Global", "Namespace", "WorkloadSelector"] = "WorkloadSelector"
    action: Literal["Allow", "Deny"] = "Allow"
    rules: list[list[list[LocalMatch]]] = []
    dry_run: bool = False


class LocalConfig(_Base):
    workloads: list[LocalWorkload] = []
    services: list[LocalService] = []
    policies: list[LocalPolicy] = []


# -------------------------------------------------------------------------------------- conversion


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def string_match(spec: StringSpec, where: str) -> StringMatch:
    """AuthorizationPolicy string syntax, or ztunnel's ``{Exact|Prefix|Suffix|Presence: value}``."""
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise ValueError(f"{where}: write one of Exact, Prefix, Suffix, Presence")
        ((kind, value),) = spec.items()
        kinds = {"Exact": "exact", "Prefix": "prefix", "Suffix": "suffix", "Presence": "presence"}
        if kind not in kinds:
            raise ValueError(f"{where}: {kind!r} is not one of {', '.join(kinds)}")
        return StringMatch(kinds[kind], "" if kind == "Presence" else str(value))  # type: ignore[arg-type]
    return policy_text.string_match(spec)


def _ip_net(text: str, where: str) -> IpNet:
    try:
        return policy_text.parse_ip_net(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IP address or CIDR") from None


def _sa(text: str, where: str) -> ServiceAccountMatch:
    ns, sep, sa = text.partition("/")
    if not sep or not ns or not sa:
        raise ValueError(f"{where}: {text!r} is not namespace/serviceaccount")
    return ServiceAccountMatch(ns, sa)


def _network_address(text: str) -> NetworkAddress:
    network, sep, ip = text.rpartition("/")
    return NetworkAddress(address=ip, network=network if sep else "")


def _gateway(g: LocalGateway, where: str) -> GatewayAddress:
    if (g.address is None) == (g.hostname is None):
        raise ValueError(f"{where}: give exactly one of address, hostname")
    if g.hostname is not None:
        ns, sep, host = g.hostname.partition("/")
        if not sep:
            raise ValueError(f"{where}.hostname: {g.hostname!r} is not namespace/hostname")
        return GatewayAddress(hostname=NamespacedHostname(ns, host), hbone_mtls_port=g.hbone_mtls_port)
    assert g.address is not None
    return GatewayAddress(address=_network_address(g.address), hbone_mtls_port=g.hbone_mtls_port)


def _workload(w: LocalWorkload, where: str) -> Workload:
    return Workload(
        uid=w.uid or f"{w.cluster_id}//Pod/{w.namespace}/{w.name}",
        name=w.name,
        namespace=w.namespace,
        service_account=w.service_account,
        trust_domain=w.trust_domain,
        addresses=tuple(w.workload_ips),
        network=w.network,
        tunnel_protocol=TunnelProtocol.HBONE if w.protocol == "HBONE" else TunnelProtocol.NONE,
        waypoint=_gateway(w.waypoint, f"{where}.waypoint") if w.waypoint is not None else None,
        node=w.node,
        canonical_name=w.canonical_name or w.name,
        canonical_revision=w.canonical_revision,
        workload_type=WorkloadType[w.workload_type.upper()],
        workload_name=w.workload_name or w.name,
        native_tunnel=w.native_tunnel,
        authorization_policies=tuple(w.authorization_policies),
        status=WorkloadStatus.HEALTHY if w.status == "Healthy" else WorkloadStatus.UNHEALTHY,
        cluster_id=w.cluster_id,
        hostname=w.hostname,
        services={
            key: tuple(Port(service_port=sp, target_port=tp) for sp, tp in ports.items())
            for key, ports in w.services.items()
        },
    )


def _service(s: LocalService, where: str) -> Service:
    return Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname or f"{s.name}.{s.namespace}.svc.cluster.local",
        addresses=tuple(_network_address(v) for v in s.vips),
        ports=tuple(Port(service_port=sp, target_port=tp) for sp, tp in s.ports.items()),
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=_gateway(s.waypoint, f"{where}.waypoint") if s.waypoint is not None else None,
    )


def _match(m: LocalMatch, where: str) -> Match:
    def strings(specs: list[StringSpec], name: str) -> tuple[StringMatch, ...]:
        return tuple(string_match(s, f"{where}.{name}[{i}]") for i, s in enumerate(specs))

    def nets(texts: list[str], name: str) -> tuple[IpNet, ...]:
        return tuple(_ip_net(t, f"{where}.{name}[{i}]") for i, t in enumerate(texts))

    def sas(texts: list[str], name: str) -> tuple[ServiceAccountMatch, ...]:
        return tuple(_sa(t, f"{where}.{name}[{i}]") for i, t in enumerate(texts))

    return Match(
        namespaces=strings(m.namespaces, "namespaces"),
        not_namespaces=strings(m.not_namespaces, "notNamespaces"),
        principals=strings(m.principals, "principals"),
        not_principals=strings(m.not_principals, "notPrincipals"),
        source_ips=nets(m.source_ips, "sourceIps"),
        not_source_ips=nets(m.not_source_ips, "notSourceIps"),
        destination_ips=nets(m.destination_ips, "destinationIps"),
        not_destination_ips=nets(m.not_destination_ips, "notDestinationIps"),
        destination_ports=tuple(m.destination_ports),
        not_destination_ports=tuple(m.not_destination_ports),
        service_accounts=sas(m.service_accounts, "serviceAccounts"),
        not_service_accounts=sas(m.not_service_accounts, "notServiceAccounts"),
    )


def _policy(p: LocalPolicy, where: str) -> Authorization:
    return Authorization(
        name=p.name,
        namespace=p.namespace,
        scope=Scope[{"Global": "GLOBAL", "Namespace": "NAMESPACE", "WorkloadSelector": "WORKLOAD_SELECTOR"}[p.scope]],
        action=Action.ALLOW if p.action == "Allow" else Action.DENY,
        rules=tuple(
            Rule(
                clauses=tuple(
                    Clause(matches=tuple(_match(m, f"{where}.rules[{r}][{c}][{i}]") for i, m in enumerate(clause)))
                    for c, clause in enumerate(rule)
                )
            )
            for r, rule in enumerate(p.rules)
        ),
        dry_run=p.dry_run,
    )


def decode_local_config(text: str | bytes, source: str = "<local config>") -> LocalConfig:
    """Parse the YAML text into ``LocalConfig``; raises ``LocalConfigError``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LocalConfigError(source, [f"not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    try:
        return msgspec.convert(data, LocalConfig, strict=True)
    except msgspec.ValidationError as e:
        raise LocalConfigError(source, [str(e)]) from None


def build_models(config: LocalConfig) -> tuple[list[Workload | Service], list[Authorization], list[str]]:
    """The models of ``config`` and the problems met building them (``path: what``)."""
    problems = _Problems()
    addresses: list[Workload | Service] = []
    policies: list[Authorization] = []
    for i, w in enumerate(config.workloads):
        try:
            addresses.append(_workload(w, f"workloads[{i}]"))
        except (ValueError, KeyError) as e:
            problems.add(f"workloads[{i}] ({w.name})", str(e))
    for i, s in enumerate(config.services):
        try:
            addresses.append(_service(s, f"services[{i}]"))
        except (ValueError, KeyError) as e:
            problems.add(f"services[{i}] ({s.name})", str(e))
    for i, p in enumerate(config.policies):
        try:
            policies.append(_policy(p, f"policies[{i}]"))
        except (ValueError, KeyError) as e:
            problems.add(f"policies[{i}] ({p.name})", str(e))
    return addresses, policies, problems.items


def apply_local_config(state: ProxyState, config: LocalConfig, source: str = "<local config>") -> ProxyState:
    """``state`` with every resource of ``config`` applied through ``apply_delta``; all or nothing."""
    addresses, policies, problems = build_models(config)
    updates: dict[str, dict[str, bytes]] = {ADDRESS_TYPE_URL: {}, AUTHORIZATION_TYPE_URL: {}}
    for model in addresses:
        name = resource_name(model)
        if name in updates[ADDRESS_TYPE_URL]:
            problems.append(f"{name}: defined twice")
            continue
        try:
            updates[ADDRESS_TYPE_URL][name] = address_to_proto(model).SerializeToString()
        except ConversionError as e:
            problems.append(f"{name}: {e}")
    for policy in policies:
        name = resource_name(policy)
        if name in updates[AUTHORIZATION_TYPE_URL]:
            problems.append(f"policy {name}: defined twice")
            continue
        try:
            updates[AUTHORIZATION_TYPE_URL][name] = authorization_to_proto(policy).SerializeToString()
        except ConversionError as e:
            problems.append(f"policy {name}: {e}")
    new = state
    for type_url, bodies in updates.items():
        new, rejected = apply_delta(new, type_url, bodies, ())
        problems.extend(f"{r.name}: {r.reason}" for r in rejected)
    if problems:
        raise LocalConfigError(source, problems)
    return new


def load_local_config(path: Path, state: ProxyState | None = None) -> ProxyState:
    """Read ``path`` and return ``state`` (default: empty) with its contents; raises ``LocalConfigError``."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise LocalConfigError(path, [f"cannot read it: {e.strerror or e}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise LocalConfigError(path, [f"larger than {MAX_FILE_BYTES} bytes"])
    config = decode_local_config(raw, str(path))
    return apply_local_config(state if state is not None else ProxyState.empty(), config, str(path))
