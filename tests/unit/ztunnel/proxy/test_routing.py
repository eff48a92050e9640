"""Table tests for build_route: services, pods, passthrough, waypoints, and every refusal."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.model import (
    GatewayAddress,
    HealthPolicy,
    LoadBalancing,
    LoadBalancingMode,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Workload,
    WorkloadStatus,
)
from meshcore.state import ProxyState
from meshcore.testing.builders import service, workload
from ztunnel.proxy.errors import (
    InvalidDestination,
    NoHealthyUpstream,
    RouteError,
    SelfCall,
    UnknownServicePort,
    UnknownWaypoint,
)
from ztunnel.proxy.routing import Protocol, Route, RouteKind, SockAddr, build_route

ECHO = "default/echo.default.svc.cluster.local"
WP_SVC = "default/waypoint.default.svc.cluster.local"
CLIENT = workload("client", "10.0.0.1")


def echo_pod(name: str, ip: str, *ports: Port, **kw: Any) -> Workload:
    """A pod backing the echo service; ``ports`` are its own mappings (default 80 -> 8080)."""
    return workload(name, ip, services={ECHO: ports or (Port(80, 8080),)}, **kw)


def echo_svc(ports: dict[int, int] | None = None, **kw: Any) -> Any:
    return service("echo", "10.96.0.1", ports or {80: 8080}, **kw)


def waypoint_pod(ip: str = "10.0.9.1", **kw: Any) -> Workload:
    return workload("waypoint", ip, services={WP_SVC: (Port(15008, 15008),)}, **kw)


WP_SVC_MODEL = service(
    "waypoint",
    "10.96.9.9",
    {15008: 15008},
    subject_alt_names=("spiffe://cluster.local/ns/default/sa/waypoint",),
)
WP_BY_VIP = GatewayAddress(address=NetworkAddress("10.96.9.9"))
WP_BY_HOST = GatewayAddress(hostname=NamespacedHostname("default", "waypoint.default.svc.cluster.local"))


def sid(sa: str, ns: str = "default") -> str:
    return str(SpiffeId("cluster.local", ns, sa))


def summary(r: Route) -> dict[str, Any]:
    """The route as plain values, so a table row states the whole expected decision."""
    return {
        "protocol": r.protocol,
        "kind": r.kind,
        "next_hop": str(r.next_hop),
        "authority": r.authority,
        "ids": [str(i) for i in r.upstream_ids],
        "workload": r.destination_workload.name if r.destination_workload else None,
        "service": r.destination_service.key if r.destination_service else None,
        "waypoint": r.waypoint.name if r.waypoint else None,
    }


def expect(
    protocol: Protocol,
    kind: RouteKind,
    next_hop: str,
    authority: str | None = None,
    ids: list[str] | None = None,
    workload: str | None = None,
    service: str | None = None,
    waypoint: str | None = None,
) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "kind": kind,
        "next_hop": next_hop,
        "authority": authority,
        "ids": ids or [],
        "workload": workload,
        "service": service,
        "waypoint": waypoint,
    }


HBONE, TCP = Protocol.HBONE, Protocol.TCP
DIRECT, WAYPOINT, PASSTHROUGH = RouteKind.DIRECT, RouteKind.WAYPOINT, RouteKind.PASSTHROUGH
FIRST = 0  # pick index


ROUTE_CASES = [
    pytest.param(
        [workload("server", "10.0.1.1")],
        ("10.0.1.1", 8080),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("server")], "server"),
        id="a pod IP in the mesh gets HBONE to that pod's 15008 expecting its own identity",
    ),
    pytest.param(
        [workload("legacy", "10.0.2.1", hbone=False)],
        ("10.0.2.1", 8080),
        FIRST,
        expect(TCP, DIRECT, "10.0.2.1:8080", workload="legacy"),
        id="a known pod outside the mesh gets plain TCP to the pod as dialled",
    ),
    pytest.param(
        [workload("native", "10.0.2.2", hbone=False, native_tunnel=True)],
        ("10.0.2.2", 9000),
        FIRST,
        expect(HBONE, DIRECT, "10.0.2.2:15008", "10.0.2.2:9000", [sid("native")], "native"),
        id="a pod that terminates HBONE natively gets HBONE",
    ),
    pytest.param(
        [],
        ("192.0.2.7", 443),
        FIRST,
        expect(TCP, PASSTHROUGH, "192.0.2.7:443"),
        id="an IP unknown to the mesh is passed through as plain TCP",
    ),
    pytest.param(
        [workload("server", "10.0.1.1", status=WorkloadStatus.UNHEALTHY)],
        ("10.0.1.1", 8080),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("server")], "server"),
        id="a pod dialled by IP is used even when unhealthy (health only steers service load balancing)",
    ),
    pytest.param(
        [echo_svc(), echo_pod("echo-1", "10.0.1.1")],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("echo-1")], "echo-1", ECHO),
        id="a service VIP picks an endpoint and translates the service port to its target port",
    ),
    pytest.param(
        [echo_svc({80: 0}), echo_pod("echo-1", "10.0.1.1", Port(80, 9090))],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:9090", [sid("echo-1")], "echo-1", ECHO),
        id="the endpoint's own port mapping (a resolved named targetPort) wins over the service's",
    ),
    pytest.param(
        [echo_svc({80: 8080}), echo_pod("echo-1", "10.0.1.1", Port(80, 0))],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("echo-1")], "echo-1", ECHO),
        id="an endpoint mapping of 0 falls back to the service's target port",
    ),
    pytest.param(
        [echo_svc({80: 0}), workload("echo-1", "10.0.1.1", services={ECHO: ()})],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:80", [sid("echo-1")], "echo-1", ECHO),
        id="target port 0 everywhere means the service port itself",
    ),
    pytest.param(
        [echo_svc({80: 8080}), workload("echo-1", "10.0.1.1", services={ECHO: ()})],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("echo-1")], "echo-1", ECHO),
        id="an endpoint listing no ports serves the service's numeric target port",
    ),
    pytest.param(
        [
            echo_svc({80: 0, 81: 0}),
            echo_pod("echo-1", "10.0.1.1", Port(81, 9191)),
            echo_pod("echo-2", "10.0.1.2", Port(80, 9090)),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.2:15008", "10.0.1.2:9090", [sid("echo-2")], "echo-2", ECHO),
        id="an endpoint that lacks the service's named port is skipped",
    ),
    pytest.param(
        [
            echo_svc(),
            echo_pod("echo-1", "10.0.1.1", status=WorkloadStatus.UNHEALTHY),
            echo_pod("echo-2", "10.0.1.2"),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.2:15008", "10.0.1.2:8080", [sid("echo-2")], "echo-2", ECHO),
        id="unhealthy endpoints are skipped",
    ),
    pytest.param(
        [
            echo_svc(load_balancing=LoadBalancing(health_policy=HealthPolicy.ALLOW_ALL)),
            echo_pod("echo-1", "10.0.1.1", status=WorkloadStatus.UNHEALTHY),
            echo_pod("echo-2", "10.0.1.2"),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("echo-1")], "echo-1", ECHO),
        id="with health policy ALLOW_ALL an unhealthy endpoint may be chosen",
    ),
    pytest.param(
        [
            echo_svc(),
            echo_pod("echo-1", "10.0.1.1"),
            echo_pod("echo-2", "10.0.1.2"),
            echo_pod("echo-3", "10.0.1.3"),
        ],
        ("10.96.0.1", 80),
        2,
        expect(HBONE, DIRECT, "10.0.1.3:15008", "10.0.1.3:8080", [sid("echo-3")], "echo-3", ECHO),
        id="pick chooses among the usable endpoints in arrival order",
    ),
    pytest.param(
        [
            echo_svc(),
            echo_pod("echo-1", "10.0.1.1", network="remote"),
            echo_pod("echo-2", "10.0.1.2"),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.2:15008", "10.0.1.2:8080", [sid("echo-2")], "echo-2", ECHO),
        id="endpoints on another network are skipped (no network gateway support yet)",
    ),
    pytest.param(
        [echo_svc(), echo_pod("echo-1", "10.0.1.1", hbone=False)],
        ("10.96.0.1", 80),
        FIRST,
        expect(TCP, DIRECT, "10.0.1.1:8080", workload="echo-1", service=ECHO),
        id="a service endpoint outside the mesh gets plain TCP to its target port",
    ),
    pytest.param(
        [
            echo_svc(
                subject_alt_names=("spiffe://cluster.local/ns/default/sa/echo-canary", "not-a-spiffe-id")
            ),
            echo_pod("echo-1", "10.0.1.1"),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(
            HBONE,
            DIRECT,
            "10.0.1.1:15008",
            "10.0.1.1:8080",
            [sid("echo-1"), sid("echo-canary")],
            "echo-1",
            ECHO,
        ),
        id="the service's SPIFFE subject alt names are accepted alongside the endpoint's identity",
    ),
    pytest.param(
        [echo_svc(load_balancing=LoadBalancing(mode=LoadBalancingMode.PASSTHROUGH))],
        ("10.96.0.1", 80),
        FIRST,
        expect(TCP, PASSTHROUGH, "10.96.0.1:80", service=ECHO),
        id="a PASSTHROUGH-mode service with no endpoints passes the connection through to the VIP",
    ),
    pytest.param(
        [echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1"), WP_SVC_MODEL, waypoint_pod()],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, WAYPOINT, "10.0.9.1:15008", "10.96.0.1:80", [sid("waypoint")], None, ECHO, "waypoint"),
        id="a service with a waypoint sends HBONE to the waypoint with the VIP and service port as authority",
    ),
    pytest.param(
        [
            echo_svc(waypoint=GatewayAddress(address=NetworkAddress("10.0.9.1"), hbone_mtls_port=15009)),
            waypoint_pod(),
        ],
        ("10.96.0.1", 80),
        FIRST,
        expect(HBONE, WAYPOINT, "10.0.9.1:15009", "10.96.0.1:80", [sid("waypoint")], None, ECHO, "waypoint"),
        id="a waypoint named by its pod address is dialled there on its advertised HBONE port",
    ),
    pytest.param(
        [workload("server", "10.0.1.1", waypoint=WP_BY_HOST), WP_SVC_MODEL, waypoint_pod()],
        ("10.0.1.1", 8080),
        FIRST,
        expect(
            HBONE, WAYPOINT, "10.0.9.1:15008", "10.0.1.1:8080", [sid("waypoint")], "server", None, "waypoint"
        ),
        id="a pod with a workload waypoint (named by hostname) is reached through the waypoint",
    ),
    pytest.param(
        [
            workload("server", "10.0.1.1", hbone=False, waypoint=WP_BY_VIP),
            WP_SVC_MODEL,
            waypoint_pod(hbone=False),
        ],
        ("10.0.1.1", 8080),
        FIRST,
        expect(
            HBONE, WAYPOINT, "10.0.9.1:15008", "10.0.1.1:8080", [sid("waypoint")], "server", None, "waypoint"
        ),
        id="traffic to a waypoint is always HBONE whatever the tunnel protocols involved",
    ),
    pytest.param(
        [
            echo_svc(waypoint=WP_BY_VIP),
            echo_pod("echo-1", "10.0.1.1", waypoint=WP_BY_VIP),
            WP_SVC_MODEL,
            waypoint_pod(),
        ],
        ("10.0.1.1", 8080),
        FIRST,
        expect(
            HBONE, WAYPOINT, "10.0.9.1:15008", "10.0.1.1:8080", [sid("waypoint")], "echo-1", None, "waypoint"
        ),
        id="dialling a service's endpoint by pod IP uses the pod's own waypoint",
    ),
    pytest.param(
        [
            workload("ipv6", "fd00::1:1"),
        ],
        ("fd00:0::1:1", 8080),
        FIRST,
        expect(HBONE, DIRECT, "[fd00::1:1]:15008", "[fd00::1:1]:8080", [sid("ipv6")], "ipv6"),
        id="an IPv6 pod is found by any spelling of its address and gets bracketed addresses",
    ),
    pytest.param(
        [
            service("dual", "fd00:96::1", {80: 8080}),
            msgspec.structs.replace(
                workload("dual-1", "10.0.1.1", services={"default/dual.default.svc.cluster.local": ()}),
                addresses=("10.0.1.1", "fd00::1:1"),
            ),
        ],
        ("fd00:96::1", 80),
        FIRST,
        expect(
            HBONE,
            DIRECT,
            "[fd00::1:1]:15008",
            "[fd00::1:1]:8080",
            [sid("dual-1")],
            "dual-1",
            "default/dual.default.svc.cluster.local",
        ),
        id="a dual-stack endpoint is dialled on the address family the app used",
    ),
    pytest.param(
        [workload("server", "10.0.1.1")],
        ("::ffff:10.0.1.1", 8080),
        FIRST,
        expect(HBONE, DIRECT, "10.0.1.1:15008", "10.0.1.1:8080", [sid("server")], "server"),
        id="an IPv4-mapped IPv6 destination is routed as the IPv4 pod it names",
    ),
    pytest.param(
        [workload("server", "127.0.0.2")],
        ("127.0.0.2", 8080),
        FIRST,
        expect(HBONE, DIRECT, "127.0.0.2:15008", "127.0.0.2:8080", [sid("server")], "server"),
        id="a loopback pod address (dedicated-mode tests) is routed like any pod",
    ),
]


@pytest.mark.parametrize(("models", "dst", "index", "expected"), ROUTE_CASES)
def test_build_route(models: list[Any], dst: tuple[str, int], index: int, expected: dict[str, Any]) -> None:
    state = ProxyState.of(CLIENT, *models)
    route = build_route(state, CLIENT, *dst, pick=lambda n: index)
    assert summary(route) == expected


REFUSAL_CASES = [
    pytest.param(
        [echo_svc({80: 8080}), echo_pod("echo-1", "10.0.1.1")],
        ("10.96.0.1", 81),
        UnknownServicePort,
        "exposes ports [80], not 81",
        id="a port the service does not expose is refused, not passed through",
    ),
    pytest.param(
        [echo_svc()],
        ("10.96.0.1", 80),
        NoHealthyUpstream,
        "it has no endpoints",
        id="a service with no endpoints is refused",
    ),
    pytest.param(
        [echo_svc(), echo_pod("echo-1", "10.0.1.1", status=WorkloadStatus.UNHEALTHY)],
        ("10.96.0.1", 80),
        NoHealthyUpstream,
        "1 unhealthy",
        id="a service whose endpoints are all unhealthy is refused and says so",
    ),
    pytest.param(
        [echo_svc(), echo_pod("echo-1", "10.0.1.1", network="remote")],
        ("10.96.0.1", 80),
        NoHealthyUpstream,
        "1 on another network",
        id="a service whose only endpoint is on another network is refused and says so",
    ),
    pytest.param(
        [echo_svc({80: 0}), echo_pod("echo-1", "10.0.1.1", Port(81, 9191))],
        ("10.96.0.1", 80),
        NoHealthyUpstream,
        "1 not serving the port",
        id="a service whose endpoints lack the named target port is refused",
    ),
    pytest.param(
        [echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1")],
        ("10.96.0.1", 80),
        UnknownWaypoint,
        "is unknown to this proxy",
        id="a service waypoint this proxy does not know is refused rather than bypassed",
    ),
    pytest.param(
        [
            workload("server", "10.0.1.1", waypoint=WP_BY_VIP),
            WP_SVC_MODEL,
            waypoint_pod(status=WorkloadStatus.UNHEALTHY),
        ],
        ("10.0.1.1", 8080),
        UnknownWaypoint,
        "has no healthy workload",
        id="a workload waypoint with no healthy pod is refused rather than bypassed",
    ),
    pytest.param(
        [
            workload(
                "server", "10.0.1.1", waypoint=GatewayAddress(address=NetworkAddress("10.0.9.1", "remote"))
            ),
        ],
        ("10.0.1.1", 8080),
        UnknownWaypoint,
        "cross-network waypoints",
        id="a waypoint on another network is refused",
    ),
    pytest.param(
        [workload("server", "10.0.1.1", waypoint=GatewayAddress())],
        ("10.0.1.1", 8080),
        UnknownWaypoint,
        "neither address nor hostname",
        id="a waypoint with neither address nor hostname is refused",
    ),
    pytest.param(
        [], ("127.0.0.1", 15008), SelfCall, "own listeners", id="loopback to the HBONE port is a self call"
    ),
    pytest.param(
        [], ("::1", 15001), SelfCall, "own listeners", id="IPv6 loopback to the outbound port is a self call"
    ),
    pytest.param(
        [], ("echo.default", 80), InvalidDestination, "not an IP", id="a host name is not a destination"
    ),
    pytest.param([], ("10.0.1.1", 0), InvalidDestination, "outside 1..65535", id="port 0 is refused"),
    pytest.param(
        [], ("10.0.1.1", 70000), InvalidDestination, "outside 1..65535", id="a port above 65535 is refused"
    ),
    pytest.param(
        [], ("fe80::1%eth0", 80), InvalidDestination, "zone", id="a zone-scoped IPv6 destination is refused"
    ),
]


@pytest.mark.parametrize(("models", "dst", "error", "fragment"), REFUSAL_CASES)
def test_build_route_refuses(
    models: list[Any], dst: tuple[str, int], error: type[RouteError], fragment: str
) -> None:
    state = ProxyState.of(CLIENT, *models)
    with pytest.raises(error) as info:
        build_route(state, CLIENT, *dst, pick=lambda n: 0)
    assert fragment in str(info.value)
    assert info.value.reason == error.__name__


def test_the_waypoint_itself_goes_direct_instead_of_looping() -> None:
    wp = waypoint_pod()
    state = ProxyState.of(wp, WP_SVC_MODEL, workload("server", "10.0.1.1", waypoint=WP_BY_VIP))
    route = build_route(state, wp, "10.0.1.1", 8080)
    assert (route.kind, route.next_hop, route.authority) == (DIRECT, ("10.0.1.1", 15008), "10.0.1.1:8080")


def test_hbone_port_is_configurable() -> None:
    state = ProxyState.of(CLIENT, workload("server", "127.0.0.2"))
    route = build_route(state, CLIENT, "127.0.0.2", 8080, hbone_port=25008)
    assert route.next_hop == SockAddr("127.0.0.2", 25008)
    assert route.authority == "127.0.0.2:8080"


def test_default_pick_spreads_connections_over_endpoints() -> None:
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"), echo_pod("echo-2", "10.0.1.2"))
    chosen = Counter(build_route(state, CLIENT, "10.96.0.1", 80).next_hop.ip for _ in range(400))
    assert set(chosen) == {"10.0.1.1", "10.0.1.2"}
    assert min(chosen.values()) > 100  # uniform: ~200 each; below 100 is vanishingly unlikely


def test_a_pick_outside_the_candidates_is_a_bug() -> None:
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"))
    with pytest.raises(ValueError, match="must return an index"):
        build_route(state, CLIENT, "10.96.0.1", 80, pick=lambda n: n)


def test_lookups_use_the_source_network() -> None:
    remote_client = msgspec.structs.replace(CLIENT, network="remote")
    state = ProxyState.of(remote_client, workload("server", "10.0.1.1"))
    route = build_route(state, remote_client, "10.0.1.1", 8080)
    assert route.kind == PASSTHROUGH  # 10.0.1.1 on the default network is not this network's pod


def test_sockaddr_is_a_plain_tuple_for_the_pool() -> None:
    assert SockAddr("10.0.0.1", 15008) == ("10.0.0.1", 15008)
    assert hash(SockAddr("10.0.0.1", 15008)) == hash(("10.0.0.1", 15008))
    assert str(SockAddr("fd00::1", 80)) == "[fd00::1]:80"


# --- property: fail closed -------------------------------------------------------------------------


@st.composite
def meshes(draw: st.DrawFn) -> tuple[ProxyState, list[str]]:
    """A small random mesh of pods (in or out of the mesh, healthy or not) behind one service."""
    n = draw(st.integers(min_value=0, max_value=5))
    svc_ports = draw(st.dictionaries(st.integers(1, 5), st.integers(0, 3), min_size=1, max_size=3))
    pods = []
    for i in range(n):
        own = draw(st.lists(st.sampled_from(sorted(svc_ports)), unique=True, max_size=3))
        pods.append(
            workload(
                f"pod-{i}",
                f"10.0.1.{i + 1}",
                hbone=draw(st.booleans()),
                status=draw(st.sampled_from(list(WorkloadStatus))),
                services={ECHO: tuple(Port(p, draw(st.integers(0, 3))) for p in own)},
            )
        )
    policy = draw(st.sampled_from(list(HealthPolicy)))
    svc = echo_svc(svc_ports, load_balancing=LoadBalancing(health_policy=policy))
    return ProxyState.of(CLIENT, svc, *pods), [p.addresses[0] for p in pods]


@settings(max_examples=200, deadline=None)
@given(mesh=meshes(), port=st.integers(1, 6), index=st.integers(0, 10))
def test_mesh_destinations_never_get_plaintext(
    mesh: tuple[ProxyState, list[str]], port: int, index: int
) -> None:
    state, pod_ips = mesh
    for dst in ["10.96.0.1", *pod_ips]:
        try:
            route = build_route(state, CLIENT, dst, port, pick=lambda n: index % n)
        except (NoHealthyUpstream, UnknownServicePort):
            continue
        target = route.destination_workload
        assert target is not None
        if target.in_mesh:
            assert route.protocol is HBONE and route.upstream_ids[0] == target.identity
            assert route.next_hop.port == 15008 and route.hbone_target is not None
            assert route.hbone_target.ip == route.next_hop.ip == target.addresses[0]
        else:
            assert route.protocol is TCP and route.upstream_ids == ()
        if route.destination_service is not None:
            assert route.destination_service.key == ECHO
            lb = route.destination_service.load_balancing
            assert target.healthy or (lb is not None and lb.health_policy == HealthPolicy.ALLOW_ALL)
