"""PURE: from what the operator asked (spec, pods, services) to the network objects that realise it.

Topology (P is the spec's prefix, "am-" by default; nothing is ever created in the host netns)::

    netns P+"fabric": bridge P+"br0" 172.30.0.254/24  <- istiod_lite listens here (and nodes reach it)
       |  veth P+"n1" (fabric side)      |  veth P+"n2"
    netns P+"node-1": eth0 172.30.0.1    netns P+"node-2": eth0 172.30.0.2     ip_forward=1
       routes: 10.244.2.0/24 via 172.30.0.2, 10.96.0.0/16 via 172.30.0.254; nft "inet P+kube-proxy"
       |  veth P+"v<hash>" 10.244.1.1/32 (one per pod, node side; the same gateway address on each)
    netns P+"pod-<ns>-<name>": eth0 10.244.1.k/32, route 10.244.1.1 dev eth0, default via 10.244.1.1

Pods have /32 addresses so every packet, even to a pod on the same node, crosses the node netns: that
is where the kube-proxy-style DNAT for service VIPs runs (prerouting for pods, output for the node's own
processes). Names resolve through /etc/netns/<netns>/hosts, which `ip netns exec` bind-mounts over
/etc/hosts. Everything here returns values (``Step`` lists, ruleset text); ``net.py`` carries them out.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import AddressConflict, AddressExhausted
from .spec import NODE_POD_PREFIXLEN, ClusterSpec, PodSpec
from .state import PodRecord, ServiceRecord

UPLINK = "eth0"  # a node's link to the fabric, and a pod's link to its node (inside their own netns)
ISTIOD_NAMESPACE = "istio-system"
ISTIOD_SERVICE = "istiod"
# Netns names are file names; past this length a pod's is shortened with a hash (still unique).
MAX_NETNS_NAME = 48
HOSTS_HEADER = "# Managed by ambientctl cluster: rewritten whenever services change. Do not edit."


# --- layout ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeLayout:
    name: str  # "node-1": what Pod.spec.nodeName says
    index: int  # 1-based
    netns: str
    ip: str  # on the node's eth0, in the node subnet
    pod_cidr: str  # the /24 this node routes to its pods
    pod_gateway: str  # first host of pod_cidr: on every node-side pod veth, the pods' default gateway
    fabric_veth: str  # the fabric-side end of the node's uplink (on the bridge)


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    prefix: str
    fabric_netns: str
    bridge: str
    istiod_ip: str  # on the bridge: reachable from every node netns without a route
    node_prefixlen: int
    service_subnet: str
    cluster_domain: str
    kube_proxy_table: str  # nft table name in every node netns
    nodes: tuple[NodeLayout, ...]

    def find_node(self, name: str) -> NodeLayout | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def netns_names(self) -> tuple[str, ...]:
        """The fabric's and nodes' namespaces (pods' are in the state)."""
        return (self.fabric_netns, *(n.netns for n in self.nodes))


def build_layout(spec: ClusterSpec) -> ClusterLayout:
    """Names and addresses of everything the cluster itself (not its pods) is made of."""
    p = spec.prefix
    node_net = ipaddress.IPv4Network(spec.networking.node_subnet)
    pod_nets = ipaddress.IPv4Network(spec.networking.pod_subnet).subnets(new_prefix=NODE_POD_PREFIXLEN)
    next(pod_nets)  # the 0th /24 is never a node's (10.244.0.0/24 looks like a network address)
    nodes = []
    for i in range(1, spec.nodes + 1):
        pod_net = next(pod_nets)
        nodes.append(
            NodeLayout(
                name=f"node-{i}",
                index=i,
                netns=f"{p}node-{i}",
                ip=str(node_net.network_address + i),
                pod_cidr=str(pod_net),
                pod_gateway=str(pod_net.network_address + 1),
                fabric_veth=f"{p}n{i}",
            )
        )
    return ClusterLayout(
        prefix=p,
        fabric_netns=f"{p}fabric",
        bridge=f"{p}br0",
        istiod_ip=str(node_net.broadcast_address - 1),
        node_prefixlen=node_net.prefixlen,
        service_subnet=spec.networking.service_subnet,
        cluster_domain=spec.networking.cluster_domain,
        kube_proxy_table=f"{p}kube-proxy",
        nodes=tuple(nodes),
    )


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]


def pod_netns_name(prefix: str, namespace: str, name: str) -> str:
    """``<prefix>pod-<ns>-<name>``, or a truncated form ending in a hash of both when that is too long."""
    full = f"{prefix}pod-{namespace}-{name}"
    if len(full) <= MAX_NETNS_NAME:
        return full
    suffix = "-" + _short_hash(namespace, name)
    return full[: MAX_NETNS_NAME - len(suffix)].rstrip("-.") + suffix


def pod_host_veth(prefix: str, namespace: str, name: str) -> str:
    """The node-side veth of a pod: ``<prefix>v<8 hex>`` (at most 15 bytes, unique per pod)."""
    return f"{prefix}v{_short_hash(namespace, name)}"


# --- steps ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateNetns:
    netns: str

    def describe(self) -> str:
        return f"create network namespace {self.netns}"


@dataclass(frozen=True, slots=True)
class SetSysctl:
    netns: str
    key: str  # under /proc/sys, e.g. "net/ipv4/ip_forward"
    value: str

    def describe(self) -> str:
        return f"set {self.key.replace('/', '.')}={self.value} in {self.netns}"


@dataclass(frozen=True, slots=True)
class CreateBridge:
    netns: str
    ifname: str

    def describe(self) -> str:
        return f"create bridge {self.ifname} in {self.netns}"


@dataclass(frozen=True, slots=True)
class CreateVeth:
    netns: str
    ifname: str
    peer_netns: str
    peer_ifname: str

    def describe(self) -> str:
        return f"create veth {self.ifname} in {self.netns} (peer {self.peer_ifname} in {self.peer_netns})"


@dataclass(frozen=True, slots=True)
class SetMaster:
    netns: str
    ifname: str
    master: str

    def describe(self) -> str:
        return f"attach {self.ifname} to {self.master} in {self.netns}"


@dataclass(frozen=True, slots=True)
class AddAddress:
    netns: str
    ifname: str
    address: str
    prefixlen: int

    def describe(self) -> str:
        return f"add {self.address}/{self.prefixlen} to {self.ifname} in {self.netns}"


@dataclass(frozen=True, slots=True)
class LinkUp:
    netns: str
    ifname: str

    def describe(self) -> str:
        return f"bring {self.ifname} up in {self.netns}"


@dataclass(frozen=True, slots=True)
class AddRoute:
    netns: str
    dst: str  # CIDR; "0.0.0.0/0" is the default route
    gateway: str | None = None
    ifname: str | None = None  # with no gateway: a link-scope route out of this interface

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.ifname}" if self.ifname else ""
        return f"add route {self.dst}{via}{dev} in {self.netns}"


@dataclass(frozen=True, slots=True)
class WriteNetnsFile:
    """A file `ip netns exec` bind-mounts over /etc/<filename> (written in place: running pods see it)."""

    netns: str
    filename: str  # "hosts" or "resolv.conf"
    content: str

    def describe(self) -> str:
        return f"write /etc/netns/{self.netns}/{self.filename}"


@dataclass(frozen=True, slots=True)
class ApplyNftables:
    """A whole table, replaced atomically by one `nft -f` transaction."""

    netns: str
    ruleset: str

    def describe(self) -> str:
        return f"apply the service rules (nftables) in {self.netns}"


Step = (
    CreateNetns
    | SetSysctl
    | CreateBridge
    | CreateVeth
    | SetMaster
    | AddAddress
    | LinkUp
    | AddRoute
    | WriteNetnsFile
    | ApplyNftables
)


def plan_cluster(layout: ClusterLayout) -> list[Step]:
    """Fabric, bridge, nodes and their routes, plus empty service rules and hosts files."""
    steps: list[Step] = [CreateNetns(layout.fabric_netns), *(CreateNetns(n.netns) for n in layout.nodes)]
    steps += [
        LinkUp(layout.fabric_netns, "lo"),
        CreateBridge(layout.fabric_netns, layout.bridge),
        AddAddress(layout.fabric_netns, layout.bridge, layout.istiod_ip, layout.node_prefixlen),
        LinkUp(layout.fabric_netns, layout.bridge),
    ]
    for node in layout.nodes:
        steps += [
            LinkUp(node.netns, "lo"),
            SetSysctl(node.netns, "net/ipv4/ip_forward", "1"),
            CreateVeth(layout.fabric_netns, node.fabric_veth, node.netns, UPLINK),
            SetMaster(layout.fabric_netns, node.fabric_veth, layout.bridge),
            LinkUp(layout.fabric_netns, node.fabric_veth),
            AddAddress(node.netns, UPLINK, node.ip, layout.node_prefixlen),
            LinkUp(node.netns, UPLINK),
        ]
        steps += [
            AddRoute(node.netns, other.pod_cidr, gateway=other.ip) for other in layout.nodes if other != node
        ]
        # The node's own processes reach VIPs through the output-hook DNAT, which needs a route to exist
        # before it runs; pods' packets are DNATed in prerouting and never use it.
        steps.append(AddRoute(node.netns, layout.service_subnet, gateway=layout.istiod_ip))
    # istiod_lite (in the fabric) answers pods too, as pods reach istiod on Kubernetes: a waypoint pod
    # dials its CA (:15011) and xDS (:15012) from its own netns.
    steps += [AddRoute(layout.fabric_netns, node.pod_cidr, gateway=node.ip) for node in layout.nodes]
    steps += plan_services(layout, (), ())
    return steps


def plan_pod(
    layout: ClusterLayout, node: NodeLayout, record: PodRecord, services: Sequence[ServiceRecord]
) -> list[Step]:
    """One pod: its netns, the veth to its node, addresses, routes and its hosts/resolv.conf."""
    pod_ns, veth = record.netns, record.host_veth
    return [
        CreateNetns(pod_ns),
        LinkUp(pod_ns, "lo"),
        CreateVeth(node.netns, veth, pod_ns, UPLINK),
        AddAddress(node.netns, veth, node.pod_gateway, 32),
        LinkUp(node.netns, veth),
        AddAddress(pod_ns, UPLINK, record.ip, 32),
        LinkUp(pod_ns, UPLINK),
        AddRoute(pod_ns, f"{node.pod_gateway}/32", ifname=UPLINK),
        AddRoute(pod_ns, "0.0.0.0/0", gateway=node.pod_gateway, ifname=UPLINK),
        AddRoute(node.netns, f"{record.ip}/32", ifname=veth),
        WriteNetnsFile(pod_ns, "hosts", render_hosts(layout, services, record.spec.namespace)),
        WriteNetnsFile(pod_ns, "resolv.conf", render_resolv_conf(layout, record.spec.namespace)),
    ]


def plan_services(
    layout: ClusterLayout, pods: Iterable[PodRecord], services: Sequence[ServiceRecord]
) -> list[Step]:
    """Service rules on every node and the hosts files of every node and pod, for this set of services."""
    ruleset = render_kube_proxy(layout.kube_proxy_table, services)
    steps: list[Step] = []
    for node in layout.nodes:
        steps.append(ApplyNftables(node.netns, ruleset))
        steps.append(WriteNetnsFile(node.netns, "hosts", render_hosts(layout, services, None)))
        steps.append(WriteNetnsFile(node.netns, "resolv.conf", render_resolv_conf(layout, None)))
    steps += [
        WriteNetnsFile(p.netns, "hosts", render_hosts(layout, services, p.spec.namespace)) for p in pods
    ]
    return steps


# --- rendered files -------------------------------------------------------------------------------------


def render_kube_proxy(table: str, services: Sequence[ServiceRecord]) -> str:
    """The nft ruleset that makes VIPs work for non-mesh traffic, as kube-proxy's nftables mode does.

    One rule per service port in ``services``: ``numgen random mod N`` picks one of N endpoint chains,
    each a DNAT to one pod. A pod reaching itself through a VIP is masqueraded (hairpin), or it would
    drop its own address arriving from outside. The file first creates then deletes the table, so one
    `nft -f` replaces it whole (applying twice = once) or, on any error, changes nothing.
    """
    service_rules: list[str] = []
    endpoint_chains: list[str] = []
    hairpins: set[str] = set()
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        for port in sorted(svc.ports, key=lambda p: (p.protocol, p.port)):
            proto = port.protocol.lower()
            label = f"{svc.namespace}/{svc.name}:{port.port}/{port.protocol}"
            if not svc.endpoints:
                continue  # no endpoints: no DNAT (a connection to the VIP fails, it is never misrouted)
            chains = [
                f"ep/{svc.namespace}/{svc.name}/{proto}/{port.port}/{i}" for i in range(len(svc.endpoints))
            ]
            if len(chains) == 1:
                verdict = f"goto {chains[0]}"
            else:
                arms = ", ".join(f"{i} : goto {c}" for i, c in enumerate(chains))
                verdict = f"numgen random mod {len(chains)} vmap {{ {arms} }}"
            service_rules.append(f'ip daddr {svc.vip} {proto} dport {port.port} {verdict} comment "{label}"')
            for chain, ip in zip(chains, svc.endpoints, strict=True):
                target = f"{ip}:{port.target_port}"
                endpoint_chains.append(
                    f"\tchain {chain} {{\n"
                    f'\t\tmeta l4proto {proto} dnat ip to {target} comment "{label} -> {target}"\n'
                    "\t}"
                )
                hairpins.add(ip)
    lines = [
        "# Service VIPs of the local cluster (kube-proxy style). Managed by ambientctl; do not edit.",
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tjump hairpin",
        "\t}",
        "\tchain services {",
        *(f"\t\t{rule}" for rule in service_rules),
        "\t}",
        *endpoint_chains,
        "\tchain hairpin {",
        *(
            f"\t\tip saddr {ip} ip daddr {ip} masquerade"
            for ip in sorted(hairpins, key=ipaddress.IPv4Address)
        ),
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_hosts(layout: ClusterLayout, services: Sequence[ServiceRecord], namespace: str | None) -> str:
    """/etc/hosts for a pod of ``namespace`` (short names for its own namespace), or a node (``None``).

    Every service answers to ``<svc>.<ns>.svc.<domain>``, ``<svc>.<ns>.svc`` and ``<svc>.<ns>``, and in
    its own namespace also to ``<svc>``; nodes also know istiod_lite's name on the fabric address.
    """
    domain = layout.cluster_domain
    lines = [HOSTS_HEADER, "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    names = {(s.namespace, s.name) for s in services}
    if namespace is None and (ISTIOD_NAMESPACE, ISTIOD_SERVICE) not in names:
        lines.append(f"{layout.istiod_ip}\t{_service_names(ISTIOD_SERVICE, ISTIOD_NAMESPACE, domain)}")
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        entry = _service_names(svc.name, svc.namespace, domain)
        if svc.namespace == namespace:
            entry += f" {svc.name}"
        lines.append(f"{svc.vip}\t{entry}")
    return "\n".join(lines) + "\n"


def _service_names(name: str, namespace: str, domain: str) -> str:
    return f"{name}.{namespace}.svc.{domain} {name}.{namespace}.svc {name}.{namespace}"


def render_resolv_conf(layout: ClusterLayout, namespace: str | None) -> str:
    """No reachable DNS server in the cluster: fail unknown names fast instead of timing out on the
    host's resolver; the search list is Kubernetes' (used once a DNS proxy answers on 127.0.0.1)."""
    domain = layout.cluster_domain
    search = f"{namespace}.svc.{domain} svc.{domain} {domain}" if namespace else f"svc.{domain} {domain}"
    return f"# Managed by ambientctl cluster.\nsearch {search}\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


# --- address allocation ---------------------------------------------------------------------------------


def allocate_pod_ip(node: NodeLayout, used: Iterable[str]) -> str:
    """The lowest free pod address of the node's /24 (the gateway, .1, is never given out)."""
    taken = set(used) | {node.pod_gateway}
    for host in ipaddress.IPv4Network(node.pod_cidr).hosts():
        if str(host) not in taken:
            return str(host)
    raise AddressExhausted(f"pod address on {node.name}", node.pod_cidr)


def allocate_vip(layout: ClusterLayout, used: Iterable[str]) -> str:
    """The lowest free service VIP."""
    taken = set(used)
    for host in ipaddress.IPv4Network(layout.service_subnet).hosts():
        if str(host) not in taken:
            return str(host)
    raise AddressExhausted("service VIP", layout.service_subnet)


def check_vip(layout: ClusterLayout, vip: str, taken: Iterable[str]) -> None:
    """A VIP the caller chose must be a host of the service subnet and not another service's."""
    try:
        address = ipaddress.IPv4Address(vip)
    except ValueError:
        raise AddressConflict(vip, "not an IPv4 address") from None
    network = ipaddress.IPv4Network(layout.service_subnet)
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise AddressConflict(vip, f"service VIPs come from {network}")
    if vip in set(taken):
        raise AddressConflict(vip, "another service already has it")


def pod_record(layout: ClusterLayout, node: NodeLayout, pod: PodSpec, ip: str) -> PodRecord:
    """Where a pod lives: its netns, node-side veth and address (no process yet)."""
    return PodRecord(
        spec=pod,
        ip=ip,
        netns=pod_netns_name(layout.prefix, pod.namespace, pod.name),
        host_veth=pod_host_veth(layout.prefix, pod.namespace, pod.name),
        node_ip=node.ip,
    )
