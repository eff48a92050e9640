"""The pure plan: layout, names, steps, the kube-proxy ruleset, hosts files and address allocation."""

from __future__ import annotations

import pytest

from ambientctl.cluster.errors import AddressConflict, AddressExhausted
from ambientctl.cluster.plan import (
    MAX_NETNS_NAME,
    AddAddress,
    AddRoute,
    ApplyNftables,
    CreateNetns,
    CreateVeth,
    SetSysctl,
    WriteNetnsFile,
    allocate_pod_ip,
    allocate_vip,
    build_layout,
    check_vip,
    plan_cluster,
    plan_pod,
    plan_services,
    pod_host_veth,
    pod_netns_name,
    pod_record,
    render_hosts,
    render_kube_proxy,
)
from ambientctl.cluster.spec import ClusterSpec, Networking, PodSpec, ServicePort
from ambientctl.cluster.state import ServiceRecord

SPEC = ClusterSpec(nodes=2, prefix="am-")
LAYOUT = build_layout(SPEC)
NODE1, NODE2 = LAYOUT.nodes


def svc(name: str, ns: str, vip: str, endpoints: tuple[str, ...], *ports: ServicePort) -> ServiceRecord:
    return ServiceRecord(
        name=name,
        namespace=ns,
        vip=vip,
        ports=ports or (ServicePort(port=80, target_port=8080),),
        endpoints=endpoints,
    )


def test_layout_numbers_nodes_from_one_and_puts_istiod_on_the_last_fabric_address() -> None:
    assert LAYOUT.fabric_netns == "am-fabric" and LAYOUT.bridge == "am-br0"
    assert LAYOUT.istiod_ip == "172.30.0.254"
    assert [(n.name, n.netns, n.ip, n.pod_cidr, n.pod_gateway, n.fabric_veth) for n in LAYOUT.nodes] == [
        ("node-1", "am-node-1", "172.30.0.1", "10.244.1.0/24", "10.244.1.1", "am-n1"),
        ("node-2", "am-node-2", "172.30.0.2", "10.244.2.0/24", "10.244.2.1", "am-n2"),
    ]
    assert LAYOUT.find_node("node-2") is NODE2 and LAYOUT.find_node("node-3") is None


def test_layout_follows_custom_subnets() -> None:
    spec = ClusterSpec(
        nodes=1, prefix="x-", networking=Networking(node_subnet="192.168.5.0/28", pod_subnet="10.8.0.0/20")
    )
    layout = build_layout(spec)
    assert layout.istiod_ip == "192.168.5.14"
    assert (layout.nodes[0].ip, layout.nodes[0].pod_cidr) == ("192.168.5.1", "10.8.1.0/24")


def test_pod_names_are_readable_when_short_and_hashed_when_long() -> None:
    assert pod_netns_name("am-", "default", "web") == "am-pod-default-web"
    long_a = pod_netns_name("am-", "namespace-with-a-long-name", "pod-with-an-even-longer-name-a")
    long_b = pod_netns_name("am-", "namespace-with-a-long-name", "pod-with-an-even-longer-name-b")
    assert long_a != long_b
    assert len(long_a) <= MAX_NETNS_NAME and long_a.startswith("am-pod-namespace-with")


@pytest.mark.parametrize(
    "prefix", ["am-", "t1x9-", "abcde-"], ids=["default", "test prefix", "longest prefix"]
)
def test_node_side_veth_names_fit_in_15_bytes_and_differ_per_pod(prefix: str) -> None:
    a = pod_host_veth(prefix, "default", "web")
    b = pod_host_veth(prefix, "default", "web2")
    assert len(a) <= 15 and a.startswith(prefix + "v") and a != b
    assert pod_host_veth(prefix, "default", "web") == a  # stable: the same pod always gets the same name


def test_the_cluster_plan_touches_only_prefixed_namespaces_never_the_host() -> None:
    steps = plan_cluster(LAYOUT)
    assert all(step.netns.startswith("am-") for step in steps)
    assert [s.netns for s in steps if isinstance(s, CreateNetns)] == ["am-fabric", "am-node-1", "am-node-2"]
    assert CreateVeth("am-fabric", "am-n1", "am-node-1", "eth0") in steps


def test_nodes_route_each_others_pod_cidrs_and_forward() -> None:
    steps = plan_cluster(LAYOUT)
    assert AddRoute("am-node-1", "10.244.2.0/24", gateway="172.30.0.2") in steps
    assert AddRoute("am-node-2", "10.244.1.0/24", gateway="172.30.0.1") in steps
    assert not any(
        isinstance(s, AddRoute) and s.netns == "am-node-1" and s.dst == "10.244.1.0/24" for s in steps
    )
    assert SetSysctl("am-node-1", "net/ipv4/ip_forward", "1") in steps
    assert AddAddress("am-fabric", "am-br0", "172.30.0.254", 24) in steps


def test_the_cluster_plan_ends_with_empty_service_rules_on_every_node() -> None:
    rules = [s for s in plan_cluster(LAYOUT) if isinstance(s, ApplyNftables)]
    assert [r.netns for r in rules] == ["am-node-1", "am-node-2"]
    assert rules[0].ruleset == render_kube_proxy("am-kube-proxy", ())


def test_a_pod_gets_a_slash_32_and_a_default_route_via_its_nodes_gateway() -> None:
    record = pod_record(LAYOUT, NODE1, PodSpec("web", "shop", "node-1"), "10.244.1.7")
    steps = plan_pod(LAYOUT, NODE1, record, [])
    veth = pod_host_veth("am-", "shop", "web")
    assert record.netns == "am-pod-shop-web" and record.host_veth == veth and record.node_ip == "172.30.0.1"
    assert steps[0] == CreateNetns("am-pod-shop-web")
    for expected in (
        CreateVeth("am-node-1", veth, "am-pod-shop-web", "eth0"),
        AddAddress("am-node-1", veth, "10.244.1.1", 32),
        AddAddress("am-pod-shop-web", "eth0", "10.244.1.7", 32),
        AddRoute("am-pod-shop-web", "10.244.1.1/32", ifname="eth0"),
        AddRoute("am-pod-shop-web", "0.0.0.0/0", gateway="10.244.1.1", ifname="eth0"),
        AddRoute("am-node-1", "10.244.1.7/32", ifname=veth),
    ):
        assert expected in steps


def test_services_rewrite_rules_on_every_node_and_hosts_of_every_pod() -> None:
    record = pod_record(LAYOUT, NODE2, PodSpec("web", "shop", "node-2"), "10.244.2.2")
    services = [svc("echo", "shop", "10.96.0.1", ("10.244.2.2",))]
    steps = plan_services(LAYOUT, [record], services)
    assert sum(isinstance(s, ApplyNftables) for s in steps) == 2
    hosts = {s.netns: s.content for s in steps if isinstance(s, WriteNetnsFile) and s.filename == "hosts"}
    assert set(hosts) == {"am-node-1", "am-node-2", "am-pod-shop-web"}
    assert "10.96.0.1\techo.shop.svc.cluster.local echo.shop.svc echo.shop echo\n" in hosts["am-pod-shop-web"]


GOLDEN_RULESET = """\
# Service VIPs of the local cluster (kube-proxy style). Managed by ambientctl; do not edit.
table inet am-kube-proxy {}
delete table inet am-kube-proxy
table inet am-kube-proxy {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump hairpin
\t}
\tchain services {
\t\tip daddr 10.96.0.1 tcp dport 80 numgen random mod 2 vmap { 0 : goto ep/default/echo/tcp/80/0, \
1 : goto ep/default/echo/tcp/80/1 } comment "default/echo:80/TCP"
\t\tip daddr 10.96.0.2 udp dport 53 goto ep/kube/dns/udp/53/0 comment "kube/dns:53/UDP"
\t}
\tchain ep/default/echo/tcp/80/0 {
\t\tmeta l4proto tcp dnat ip to 10.244.1.2:8080 comment "default/echo:80/TCP -> 10.244.1.2:8080"
\t}
\tchain ep/default/echo/tcp/80/1 {
\t\tmeta l4proto tcp dnat ip to 10.244.2.2:8080 comment "default/echo:80/TCP -> 10.244.2.2:8080"
\t}
\tchain ep/kube/dns/udp/53/0 {
\t\tmeta l4proto udp dnat ip to 10.244.2.2:5353 comment "kube/dns:53/UDP -> 10.244.2.2:5353"
\t}
\tchain hairpin {
\t\tip saddr 10.244.1.2 ip daddr 10.244.1.2 masquerade
\t\tip saddr 10.244.2.2 ip daddr 10.244.2.2 masquerade
\t}
}
"""


def test_the_kube_proxy_ruleset_spreads_over_endpoints_and_replaces_its_table_atomically() -> None:
    services = [
        svc(
            "dns",
            "kube",
            "10.96.0.2",
            ("10.244.2.2",),
            ServicePort(port=53, target_port=5353, protocol="UDP"),
        ),
        svc("echo", "default", "10.96.0.1", ("10.244.1.2", "10.244.2.2")),
        svc("idle", "default", "10.96.0.3", ()),
    ]
    assert render_kube_proxy("am-kube-proxy", services) == GOLDEN_RULESET


@pytest.mark.parametrize(
    ("namespace", "expected_line"),
    [
        ("shop", "10.96.0.1\techo.shop.svc.cluster.local echo.shop.svc echo.shop echo"),
        ("other", "10.96.0.1\techo.shop.svc.cluster.local echo.shop.svc echo.shop"),
        (None, "10.96.0.1\techo.shop.svc.cluster.local echo.shop.svc echo.shop"),
    ],
    ids=[
        "a pod in the service's namespace also resolves the short name",
        "a pod in another namespace needs the namespace in the name",
        "a node has no namespace and no short names",
    ],
)
def test_hosts_files_name_services_as_kubernetes_dns_does(namespace: str | None, expected_line: str) -> None:
    lines = render_hosts(LAYOUT, [svc("echo", "shop", "10.96.0.1", ())], namespace).splitlines()
    assert expected_line in lines
    assert "127.0.0.1\tlocalhost" in lines


def test_nodes_resolve_istiod_on_the_fabric_until_a_service_of_that_name_exists() -> None:
    istiod = "172.30.0.254\tistiod.istio-system.svc.cluster.local istiod.istio-system.svc istiod.istio-system"
    assert istiod in render_hosts(LAYOUT, [], None).splitlines()
    assert istiod not in render_hosts(LAYOUT, [], "default").splitlines()
    with_service = render_hosts(LAYOUT, [svc("istiod", "istio-system", "10.96.0.9", ())], None)
    assert "172.30.0.254" not in with_service and "10.96.0.9\tistiod.istio-system" in with_service


def test_pod_addresses_start_after_the_gateway_and_skip_used_ones() -> None:
    assert allocate_pod_ip(NODE1, []) == "10.244.1.2"
    assert allocate_pod_ip(NODE1, ["10.244.1.2", "10.244.1.4"]) == "10.244.1.3"


def test_a_full_node_refuses_another_pod() -> None:
    used = [f"10.244.1.{i}" for i in range(2, 255)]
    with pytest.raises(AddressExhausted, match="10.244.1.0/24"):
        allocate_pod_ip(NODE1, used)


def test_vips_are_allocated_lowest_first() -> None:
    assert allocate_vip(LAYOUT, []) == "10.96.0.1"
    assert allocate_vip(LAYOUT, ["10.96.0.1"]) == "10.96.0.2"


@pytest.mark.parametrize(
    ("vip", "taken", "reason"),
    [
        ("10.97.0.1", [], "come from 10.96.0.0/16"),
        ("10.96.0.0", [], "come from"),
        ("10.96.255.255", [], "come from"),
        ("not-an-ip", [], "not an IPv4 address"),
        ("10.96.0.5", ["10.96.0.5"], "another service"),
    ],
    ids=[
        "a VIP outside the service subnet is refused",
        "the network address is refused",
        "the broadcast address is refused",
        "garbage is refused",
        "another service's VIP is refused",
    ],
)
def test_chosen_vips_are_checked(vip: str, taken: list[str], reason: str) -> None:
    with pytest.raises(AddressConflict, match=reason):
        check_vip(LAYOUT, vip, taken)


def test_a_free_vip_in_the_subnet_is_accepted() -> None:
    check_vip(LAYOUT, "10.96.3.4", ["10.96.0.1"])
