"""LOCAL_XDS_PATH files: decoded strictly, validated like xDS, applied all or nothing."""

from __future__ import annotations

import pytest

from meshcore.identity import SpiffeId
from meshcore.model import Action, Scope, StringMatch, TunnelProtocol, WorkloadStatus, WorkloadType
from meshcore.state import ProxyState
from ztunnel.proxy.local_config import (
    LocalConfigError,
    apply_local_config,
    decode_local_config,
    load_local_config,
    string_match,
)

GOOD = """
workloads:
- name: echo
  namespace: apps
  serviceAccount: echo-sa
  workloadIps: [10.0.0.2]
  node: node-2
  workloadType: deployment
  services: {apps/echo.apps.svc.cluster.local: {80: 8080}}
- {name: legacy, workloadIps: [10.0.0.9], protocol: TCP, status: Unhealthy}
services:
- {name: echo, namespace: apps, vips: [10.96.0.10, net1/10.96.0.11], ports: {80: 8080}, subjectAltNames: [spiffe://cluster.local/ns/apps/sa/extra]}
policies:
- name: deny-sleep
  namespace: apps
  scope: Namespace
  action: Deny
  rules: [[[{principals: [cluster.local/ns/apps/sa/sleep], sourceIps: [10.1.0.0/16], notDestinationPorts: [9090]}]]]
- {name: allow-all, scope: Global}
"""


def load(text: str) -> ProxyState:
    return apply_local_config(ProxyState.empty(), decode_local_config(text))


def test_a_complete_file_becomes_workloads_services_and_policies():
    state = load(GOOD)
    echo = state.find_workload("Kubernetes//Pod/apps/echo")
    assert echo is not None and echo.identity == SpiffeId("cluster.local", "apps", "echo-sa")
    assert (echo.addresses, echo.node, echo.tunnel_protocol) == (("10.0.0.2",), "node-2", TunnelProtocol.HBONE)
    assert echo.workload_type is WorkloadType.DEPLOYMENT and echo.canonical_name == "echo"
    assert [p.target_port for p in echo.services["apps/echo.apps.svc.cluster.local"]] == [8080]
    legacy = state.find_workload_by_addr("10.0.0.9")
    assert legacy is not None and legacy.tunnel_protocol is TunnelProtocol.NONE
    assert legacy.status is WorkloadStatus.UNHEALTHY
    svc = state.find_service_by_vip("10.96.0.11", "net1")
    assert svc is not None and svc.hostname == "echo.apps.svc.cluster.local"
    assert state.endpoints(svc.key)[0][0] is echo
    deny = state.policies["apps/deny-sleep"]
    assert (deny.action, deny.scope) == (Action.DENY, Scope.NAMESPACE)
    match = deny.rules[0].clauses[0].matches[0]
    assert match.principals == (StringMatch("exact", "cluster.local/ns/apps/sa/sleep"),)
    assert (match.source_ips[0].address, match.source_ips[0].length, match.not_destination_ports) == ("10.1.0.0", 16, (9090,))
    assert state.policies["/allow-all"].scope == Scope.GLOBAL


def test_an_empty_file_is_an_empty_mesh():
    assert len(load("").workloads) == 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("*", StringMatch("presence")),
        ("*.svc", StringMatch("suffix", ".svc")),
        ("ns/*", StringMatch("prefix", "ns/")),
        ("a/b", StringMatch("exact", "a/b")),
        ({"Exact": "x"}, StringMatch("exact", "x")),
        ({"Presence": ""}, StringMatch("presence")),
    ],
    ids=["a star means presence", "a leading star means suffix", "a trailing star means prefix",
         "anything else is exact", "ztunnel's Exact form", "ztunnel's Presence form"],
)
def test_string_matches_accept_istio_syntax_and_ztunnels_form(spec, expected):
    assert string_match(spec, "here") == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("workloads: [{name: x, surprise: 1}]", "unknown field `surprise`"),
        ("workloads: [{name: x, workloadIps: [10.0.0.300]}]", "is not an IP address"),
        ("workloads: [{name: x, protocol: QUIC}]", "$.workloads[0].protocol"),
        ("services: [{name: s, vips: [nope]}]", "is not an IP address"),
        ("policies: [{name: p, namespace: d, rules: [[[{sourceIps: [zz]}]]]}]", "rules[0][0][0].sourceIps[0]"),
        ("policies: [{name: p, namespace: d, rules: [[[{serviceAccounts: [justsa]}]]]}]", "namespace/serviceaccount"),
        ("workloads: [{name: x}, {name: x}]", "defined twice"),
        ("workloads: [1, 2", "not valid YAML"),
        ("workloads: [{name: x, namespace: Bad_NS}]", "invalid identity"),
    ],
    ids=[
        "an unknown key is refused",
        "a bad workload ip is refused with its path",
        "an unknown protocol is refused with its path",
        "a bad service vip is refused",
        "a bad cidr names the match that holds it",
        "a service account without namespace is refused",
        "a workload defined twice is refused",
        "broken yaml is refused",
        "an identity xds would refuse is refused",
    ],
)
def test_bad_files_are_refused_whole_with_every_problem_named(text, problem):
    with pytest.raises(LocalConfigError) as err:
        load(text)
    assert problem in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(LocalConfigError) as err:
        load("workloads: [{name: a, workloadIps: [x]}, {name: b, workloadIps: [y]}]")
    assert len(err.value.problems) == 2


def test_load_reads_the_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD)
    assert len(load_local_config(path).workloads) == 2
    with pytest.raises(LocalConfigError, match="cannot read it"):
        load_local_config(tmp_path / "missing.yaml")
    path.write_text("workloads: [{name: x, workloadIps: [bad]}]")
    with pytest.raises(LocalConfigError, match=str(path)):
        load_local_config(path)


def test_the_documented_example_file_loads():
    from pathlib import Path

    example = Path(__file__).resolve().parents[4] / "examples" / "ztunnel-local.yaml"
    state = load_local_config(example)
    assert {w.name for w in state.workloads.values()} == {"client", "echo"} and len(state.policies) == 1
