"""``explain`` agrees with the data plane: the route candidates are exactly what ztunnel's ``build_route``
picks from, refusals carry the same reason and message, and the L4/L7 verdicts are the proxies' own."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambientctl.troubleshoot.explain import (
    DIRECT,
    PASSTHROUGH,
    WAYPOINT,
    ExplainInputError,
    MeshConfig,
    RequestSpec,
    WaypointInfo,
    describe_pod,
    explain,
    mesh_config_from_registry,
    plan_route,
    render,
    render_pod,
    resolve_destination,
    resolve_source,
    to_json,
)
from meshcore.identity import SpiffeId
from meshcore.model import (
    Action,
    GatewayAddress,
    HealthPolicy,
    LoadBalancing,
    LoadBalancingMode,
    Match,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Scope,
    StringMatch,
    WorkloadStatus,
)
from meshcore.model.l7 import L7Action, L7Authorization, L7Operation, L7Rule, L7Target
from meshcore.policy import ConnFacts, evaluate_l4
from meshcore.state import ProxyState
from meshcore.testing.builders import policy, service, workload
from ztunnel.proxy.errors import RouteError
from ztunnel.proxy.routing import build_route

ECHO = "default/echo.default.svc.cluster.local"
WP_SVC = "default/waypoint.default.svc.cluster.local"
CLIENT = workload("client", "10.0.0.1")
WP_BY_VIP = GatewayAddress(address=NetworkAddress("10.96.9.9"))
WP_BY_HOST = GatewayAddress(hostname=NamespacedHostname("default", "waypoint.default.svc.cluster.local"))
WP_SVC_MODEL = service("waypoint", "10.96.9.9", {15008: 15008},
                       subject_alt_names=("spiffe://cluster.local/ns/default/sa/waypoint",))  # fmt: skip


def echo_pod(name: str, ip: str, *ports: Port, **kw: Any) -> Any:
    return workload(name, ip, services={ECHO: ports or (Port(80, 8080),)}, **kw)


def echo_svc(ports: dict[int, int] | None = None, **kw: Any) -> Any:
    return service("echo", "10.96.0.1", ports or {80: 8080}, **kw)


def waypoint_pod(ip: str = "10.0.9.1", **kw: Any) -> Any:
    return workload("waypoint", ip, services={WP_SVC: (Port(15008, 15008),)}, **kw)


def hop_of_route(r: Any) -> tuple[str, str, str | None, tuple[str, ...], str | None]:
    return (r.protocol.value, str(r.next_hop), r.authority, tuple(map(str, r.upstream_ids)),
            (r.waypoint or r.destination_workload).uid if (r.waypoint or r.destination_workload) else None)  # fmt: skip


def hops_of_plan(plan: Any) -> set[tuple[str, str, str | None, tuple[str, ...], str | None]]:
    return {
        (h.protocol, str(h.next_hop), str(h.authority) if h.authority else None, tuple(map(str, h.identities)),
         h.workload.uid if h.workload else None)
        for h in plan.hops
    }  # fmt: skip


def data_plane_routes(state: ProxyState, src: Any, ip: str, port: int, n: int = 6) -> set[Any] | RouteError:
    """Every route ztunnel may pick (pick = each index in turn), or its refusal."""
    out = set()
    for i in range(n):
        try:
            out.add(hop_of_route(build_route(state, src, ip, port, pick=lambda k, i=i: i % k)))
        except RouteError as e:
            return e
    return out


def assert_agrees(state: ProxyState, src: Any, ip: str, port: int) -> Any:
    plan = plan_route(MeshConfig(state), src, ip, port)
    expected = data_plane_routes(state, src, ip, port)
    if isinstance(expected, RouteError):
        assert (plan.error_reason, plan.error) == (expected.reason, str(expected))
    else:
        assert not plan.error, plan.error
        assert hops_of_plan(plan) == expected
    return plan


ROUTES = [
    ([echo_svc(), echo_pod("echo-1", "10.0.1.1")], ("10.96.0.1", 80), DIRECT),
    ([echo_svc(), echo_pod("echo-1", "10.0.1.1"), echo_pod("echo-2", "10.0.1.2")], ("10.96.0.1", 80), DIRECT),
    ([echo_svc(), echo_pod("echo-1", "10.0.1.1", status=WorkloadStatus.UNHEALTHY),
      echo_pod("echo-2", "10.0.1.2")], ("10.96.0.1", 80), DIRECT),
    ([echo_svc(), echo_pod("echo-1", "10.0.1.1")], ("10.96.0.1", 81), ""),
    ([echo_svc()], ("10.96.0.1", 80), ""),
    ([echo_svc(load_balancing=LoadBalancing(mode=LoadBalancingMode.PASSTHROUGH))], ("10.96.0.1", 80), PASSTHROUGH),
    ([echo_svc(), echo_pod("echo-1", "10.0.1.1", hbone=False)], ("10.96.0.1", 80), DIRECT),
    ([workload("server", "10.0.1.1")], ("10.0.1.1", 9000), DIRECT),
    ([], ("192.0.2.7", 443), PASSTHROUGH),
    ([], ("127.0.0.1", 15008), ""),
    ([echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1"), WP_SVC_MODEL, waypoint_pod()],
     ("10.96.0.1", 80), WAYPOINT),
    ([workload("server", "10.0.1.1", waypoint=WP_BY_HOST), WP_SVC_MODEL, waypoint_pod()], ("10.0.1.1", 8080), WAYPOINT),
    ([echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1")], ("10.96.0.1", 80), ""),
    ([workload("server", "10.0.1.1", waypoint=GatewayAddress(address=NetworkAddress("10.0.9.1", "remote")))],
     ("10.0.1.1", 80), ""),
]  # fmt: skip
ROUTE_IDS = [
    "a service with one endpoint goes direct over HBONE to its target port",
    "a service with two endpoints lists both candidates",
    "an unhealthy endpoint is not a candidate",
    "a port the service does not expose is refused as ztunnel refuses it",
    "a service without endpoints is refused with no healthy upstream",
    "a passthrough service without endpoints goes as plain TCP",
    "an endpoint outside the mesh gets plain TCP",
    "a pod dialled by IP goes direct",
    "an unknown address is passthrough",
    "ztunnel's own port on loopback is refused as a self call",
    "a service with a waypoint goes to the waypoint with the VIP as authority",
    "a pod with a waypoint by hostname goes to the waypoint",
    "a waypoint that cannot be resolved is refused, never bypassed",
    "a waypoint on another network is refused",
]


@pytest.mark.parametrize(("models", "dst", "kind"), ROUTES, ids=ROUTE_IDS)
def test_route_agrees_with_build_route(models: list[Any], dst: tuple[str, int], kind: str) -> None:
    state = ProxyState.of(CLIENT, *models)
    plan = assert_agrees(state, CLIENT, *dst)
    assert plan.kind == kind


def test_the_waypoint_itself_goes_direct_as_in_ztunnel() -> None:
    wp = waypoint_pod()
    state = ProxyState.of(wp, WP_SVC_MODEL, workload("server", "10.0.1.1", waypoint=WP_BY_VIP))
    assert assert_agrees(state, wp, "10.0.1.1", 80).kind == DIRECT


@st.composite
def meshes(draw: st.DrawFn) -> tuple[ProxyState, list[str]]:
    n = draw(st.integers(min_value=0, max_value=4))
    svc_ports = draw(st.dictionaries(st.integers(1, 5), st.integers(0, 3), min_size=1, max_size=3))
    waypoint = draw(st.sampled_from([None, WP_BY_VIP, WP_BY_HOST]))
    pods = []
    for i in range(n):
        own = draw(st.lists(st.sampled_from(sorted(svc_ports)), unique=True, max_size=3))
        pods.append(workload(
            f"pod-{i}", f"10.0.1.{i + 1}", hbone=draw(st.booleans()),
            status=draw(st.sampled_from(list(WorkloadStatus))),
            services={ECHO: tuple(Port(p, draw(st.integers(0, 3))) for p in own)},
            waypoint=draw(st.sampled_from([None, WP_BY_VIP])),
        ))  # fmt: skip
    lb = LoadBalancing(health_policy=draw(st.sampled_from(list(HealthPolicy))),
                       mode=draw(st.sampled_from(list(LoadBalancingMode))))  # fmt: skip
    extra = [WP_SVC_MODEL, waypoint_pod(status=draw(st.sampled_from(list(WorkloadStatus))))] if draw(st.booleans()) else []
    return ProxyState.of(CLIENT, echo_svc(svc_ports, load_balancing=lb, waypoint=waypoint), *pods, *extra), [
        p.addresses[0] for p in pods
    ]


@settings(max_examples=150, deadline=None)
@given(mesh=meshes(), port=st.integers(1, 6))
def test_route_agrees_with_build_route_on_random_meshes(mesh: tuple[ProxyState, list[str]], port: int) -> None:
    state, pod_ips = mesh
    for dst in ["10.96.0.1", "10.96.9.9", "192.0.2.1", *pod_ips]:
        assert_agrees(state, CLIENT, dst, port)


# --- policies -----------------------------------------------------------------------------------------

BAD = workload("bad", "10.0.0.2")
DENY_BAD = policy("deny-bad", Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/bad"),)),
                  action=Action.DENY)  # fmt: skip
ALLOW_CLIENT = policy("allow-client", Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/waypoint"),)),
                      Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/client"),)))  # fmt: skip
ALLOW_NOBODY = policy("allow-nobody", Match(namespaces=(StringMatch("exact", "other"),)))


@pytest.mark.parametrize(
    ("policies", "src", "allowed", "decided_by", "matched"),
    [
        ([], CLIENT, True, None, {}),
        ([DENY_BAD], CLIENT, True, None, {"default/deny-bad": None}),
        ([DENY_BAD], BAD, False, "default/deny-bad", {"default/deny-bad": 0}),
        ([ALLOW_CLIENT], CLIENT, True, "default/allow-client", {"default/allow-client": 0}),
        ([ALLOW_NOBODY], CLIENT, False, None, {"default/allow-nobody": None}),
        ([DENY_BAD, ALLOW_CLIENT], BAD, False, "default/deny-bad", {"default/deny-bad": 0, "default/allow-client": None}),
    ],
    ids=[
        "no policy allows",
        "a deny policy for someone else does not match",
        "a deny policy naming the source denies and says which rule",
        "an allow policy naming the source allows",
        "allow policies that do not match deny",
        "deny wins over allow",
    ],
)
def test_l4_verdict_is_evaluate_l4s(
    policies: list[Any], src: Any, allowed: bool, decided_by: str | None, matched: dict[str, int | None]
) -> None:
    server = echo_pod("echo-1", "10.0.1.1")
    state = ProxyState.of(CLIENT, BAD, echo_svc(), server, *policies)
    e = explain(MeshConfig(state), src, "10.96.0.1", 80)
    (v,) = e.l4
    facts = ConnFacts(src_ip=src.addresses[0], src_port=0, dst_ip="10.0.1.1", dst_port=8080, src_identity=src.identity)
    assert v.decision == evaluate_l4(state.policies_for(server), facts)
    assert (v.decision.allowed, v.decision.policy, e.allowed) == (allowed, decided_by, allowed)
    assert {m.policy: m.rule for m in v.policies} == matched


def test_the_rule_that_matched_is_named() -> None:
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"), ALLOW_CLIENT)
    (v,) = explain(MeshConfig(state), CLIENT, "10.96.0.1", 80).l4
    assert [(m.policy, m.matched, m.rule) for m in v.policies] == [("default/allow-client", True, 0)]
    # ALLOW_CLIENT has one rule of one clause with two matches: the second match holds.
    two_rules = policy("two", Match(namespaces=(StringMatch("exact", "x"),)))
    two_rules = msgspec.structs.replace(two_rules, rules=two_rules.rules + ALLOW_CLIENT.rules)
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"), two_rules)
    (v,) = explain(MeshConfig(state), CLIENT, "10.96.0.1", 80).l4
    assert [(m.matched, m.rule) for m in v.policies] == [(True, 1)]


GET_ONLY = L7Authorization(
    name="get-only", namespace="default", action=L7Action.ALLOW,
    targets=(L7Target("service", "echo.default.svc.cluster.local"),),
    rules=(L7Rule(operations=(L7Operation(methods=(StringMatch("exact", "GET"),)),)),),
)  # fmt: skip


def waypoint_mesh(*policies: Any) -> MeshConfig:
    state = ProxyState.of(CLIENT, echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1"),
                          WP_SVC_MODEL, waypoint_pod(), *policies)  # fmt: skip
    return MeshConfig(state, (GET_ONLY,), (WaypointInfo("default/waypoint", WP_BY_VIP),))


@pytest.mark.parametrize(
    ("request_", "l7_allowed", "verdict"),
    [(RequestSpec("GET", "/"), True, True), (RequestSpec("POST", "/"), False, False), (None, None, None)],
    ids=["GET is allowed by the L7 policy", "POST is denied with 403 at the waypoint",
         "without a request the outcome depends on it"],
)
def test_through_a_waypoint_l7_decides_and_l4_sees_the_waypoint(
    request_: RequestSpec | None, l7_allowed: bool | None, verdict: bool | None
) -> None:
    e = explain(waypoint_mesh(DENY_BAD), CLIENT, "10.96.0.1", 80, request_)
    assert e.route.kind == WAYPOINT and e.route.gateway == "default/waypoint"
    assert e.l7 is not None and [m.policy for m in e.l7.policies] == ["default/get-only"]
    assert (e.l7.decision.allowed if e.l7.decision else None) == l7_allowed
    (v,) = e.l4
    assert v.facts.src_identity == SpiffeId("cluster.local", "default", "waypoint")
    assert v.facts.src_ip == "10.0.9.1" and (v.facts.dst_ip, v.facts.dst_port) == ("10.0.1.1", 8080)
    assert e.allowed is verdict
    text = "\n".join(render(e))
    assert "through waypoint default/waypoint" in text
    if l7_allowed is False:
        assert "403 RBAC: access denied" in text
    assert to_json(e)["allowed"] is verdict


def test_a_refused_route_is_denied_and_says_why() -> None:
    e = explain(MeshConfig(ProxyState.of(CLIENT, echo_svc())), CLIENT, "10.96.0.1", 80)
    assert e.allowed is False and e.route.error_reason == "NoHealthyUpstream"
    assert any("REFUSED by the source ztunnel (NoHealthyUpstream)" in line for line in render(e))


# --- names and registry ---------------------------------------------------------------------------------


def test_names_resolve_to_addresses() -> None:
    state = ProxyState.of(CLIENT, echo_svc({80: 8080, 90: 9090}), echo_pod("echo-1", "10.0.1.1"))
    assert resolve_source(state, "default/client") == CLIENT
    assert resolve_source(state, "pod/default/client") == CLIENT
    assert resolve_source(state, "client") == CLIENT
    assert resolve_source(state, "10.0.0.1") == CLIENT
    assert resolve_destination(state, "svc/default/echo") == ("10.96.0.1", 80)
    assert resolve_destination(state, "echo.default:90") == ("10.96.0.1", 90)
    assert resolve_destination(state, "echo.default.svc.cluster.local") == ("10.96.0.1", 80)
    assert resolve_destination(state, "echo") == ("10.96.0.1", 80)
    assert resolve_destination(state, "pod/default/echo-1:8080") == ("10.0.1.1", 8080)
    assert resolve_destination(state, "10.9.9.9:7") == ("10.9.9.9", 7)


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        ("default/nobody", "echo", "no workload default/nobody"),
        ("default/client", "nothing.here", "is not a service with an address"),
        ("default/client", "pod/default/echo-1", "give the port"),
        ("default/client", "10.9.9.9", "give the port"),
    ],
    ids=["an unknown pod", "an unknown service", "a pod without a port", "an IP without a port"],
)
def test_bad_names_say_what_to_write(source: str, destination: str, message: str) -> None:
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"))
    with pytest.raises(ExplainInputError, match=message):
        resolve_source(state, source)
        resolve_destination(state, destination)


def test_registry_documents_become_the_same_models() -> None:
    models = [CLIENT, echo_svc(waypoint=WP_BY_VIP), echo_pod("echo-1", "10.0.1.1"), DENY_BAD]
    registry = {
        "workloads": msgspec.to_builtins([CLIENT, models[2]]),
        "services": msgspec.to_builtins([models[1]]),
        "policies": msgspec.to_builtins([DENY_BAD]),
        "l7Policies": msgspec.to_builtins([GET_ONLY]),
        "waypoints": [{"namespace": "default", "name": "waypoint", "address": msgspec.to_builtins(WP_BY_VIP)},
                      {"namespace": "default", "name": "not-ready", "address": None}],
    }  # fmt: skip
    config = mesh_config_from_registry(registry)
    assert config.state.workloads == ProxyState.of(*models).workloads
    assert config.state.find_service(ECHO) == models[1]
    assert config.state.policies == ProxyState.of(*models).policies
    assert config.l7_policies == (GET_ONLY,)
    assert config.waypoints == (WaypointInfo("default/waypoint", WP_BY_VIP),)


def test_scope_global_policies_apply_as_in_the_proxy() -> None:
    glob = policy("deny-all", Match(namespaces=(StringMatch("presence", ""),)), action=Action.DENY, scope=Scope.GLOBAL)
    state = ProxyState.of(CLIENT, echo_svc(), echo_pod("echo-1", "10.0.1.1"), glob)
    assert explain(MeshConfig(state), CLIENT, "10.96.0.1", 80).allowed is False


def test_a_pod_alone_lists_its_services_waypoint_and_policies() -> None:
    selected = msgspec.structs.replace(DENY_BAD, scope=Scope.WORKLOAD_SELECTOR)
    server = echo_pod("echo-1", "10.0.1.1", authorization_policies=(selected.key, "default/not-here"))
    config = waypoint_mesh(selected)
    config = MeshConfig(config.state.updated(put=[server]), config.l7_policies, config.waypoints)
    summary = describe_pod(config, server)
    assert [s.key for s in summary.services] == [ECHO]
    assert [p.key for p in summary.l4_policies] == ["default/deny-bad"]
    assert [p.key for p in summary.l7_policies] == ["default/get-only"]
    assert summary.missing_policies == ("default/not-here",)
    text = "\n".join(render_pod(summary))
    assert "DENY  default/deny-bad (selector, 1 rule(s))" in text
    assert "default/not-here (named by the workload but not received" in text
    assert "ALLOW default/get-only" in text and "uses waypoint" in text
