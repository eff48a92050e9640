"""cluster.yaml parsing and validation, and pod validation: defaults, and every refusal names its field."""

from __future__ import annotations

import pytest

from ambientctl.cluster.errors import InvalidClusterSpec
from ambientctl.cluster.spec import (
    API_VERSION,
    ClusterSpec,
    Networking,
    PodPort,
    PodSpec,
    parse_cluster_spec,
    validate_cluster_spec,
    validate_pod,
)


def test_an_empty_file_is_a_two_node_cluster_with_the_am_prefix() -> None:
    spec = parse_cluster_spec("")
    assert spec == ClusterSpec()
    assert (spec.nodes, spec.prefix, spec.networking.pod_subnet) == (2, "am-", "10.244.0.0/16")


def test_a_full_file_is_read_with_kind_style_field_names() -> None:
    text = f"""
apiVersion: {API_VERSION}
kind: Cluster
nodes: 3
prefix: lab-
networking:
  nodeSubnet: 192.168.77.0/24
  podSubnet: 10.50.0.0/16
  serviceSubnet: 10.60.0.0/20
  clusterDomain: mesh.test
"""
    spec = parse_cluster_spec(text)
    assert spec.nodes == 3 and spec.prefix == "lab-"
    assert spec.networking == Networking(
        node_subnet="192.168.77.0/24",
        pod_subnet="10.50.0.0/16",
        service_subnet="10.60.0.0/20",
        cluster_domain="mesh.test",
    )


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("nodes: [", "$", "not valid YAML"),
        ("- 1", "$", "expected a mapping"),
        ("nodez: 3", "$", "unknown field `nodez`"),
        ("nodes: two", "$.nodes", "Expected `int`"),
        ("nodes: 0", "$.nodes", ">= 1"),
        ("nodes: 101", "$.nodes", "<= 100"),
        ("apiVersion: v1", "$.apiVersion", "unsupported"),
        ("kind: Pod", "$.kind", "expected Cluster"),
        ("prefix: am", "$.prefix", "ending in '-'"),
        ("prefix: toolong-", "$.prefix", "not a valid prefix"),
        ("prefix: 1a-", "$.prefix", "not a valid prefix"),
        ("networking: {podSubnet: 10.244.0.1/16}", "$.networking.podSubnet", "host bits set"),
        ("networking: {podSubnet: 'fd00::/48'}", "$.networking.podSubnet", "IPv6"),
        ("networking: {podSubnet: 10.244.0.0/24}", "$.networking.podSubnet", "too small"),
        ("{nodes: 4, networking: {podSubnet: 10.244.0.0/22}}", "$.networking.podSubnet", "fewer than 4"),
        ("{nodes: 6, networking: {nodeSubnet: 172.30.0.0/29}}", "$.networking.nodeSubnet", "no room"),
        ("networking: {serviceSubnet: 10.96.0.0/30}", "$.networking.serviceSubnet", "too small"),
        ("networking: {serviceSubnet: 10.244.128.0/20}", "$.networking.serviceSubnet", "overlaps podSubnet"),
        ("networking: {clusterDomain: Cluster.Local}", "$.networking.clusterDomain", "not a DNS domain"),
        ("networking: {mtu: 9000}", "$.networking", "unknown field `mtu`"),
    ],
    ids=[
        "broken YAML is refused",
        "a list instead of a mapping is refused",
        "a misspelt field is refused rather than ignored",
        "a non-integer node count is refused",
        "zero nodes are refused",
        "more than 100 nodes are refused",
        "an unknown apiVersion is refused",
        "a kind other than Cluster is refused",
        "a prefix without a trailing dash is refused",
        "a prefix too long for 15-byte interface names is refused",
        "a prefix starting with a digit is refused",
        "a subnet with host bits set is refused",
        "an IPv6 pod subnet is refused",
        "a pod subnet smaller than one node's /24 is refused",
        "a pod subnet without a /24 for every node is refused",
        "a node subnet without room for the nodes and istiod is refused",
        "a tiny service subnet is refused",
        "overlapping subnets are refused",
        "an upper-case cluster domain is refused",
        "an unknown networking field is refused",
    ],
)
def test_bad_cluster_specs_are_refused_naming_the_field(text: str, path: str, reason: str) -> None:
    with pytest.raises(InvalidClusterSpec) as caught:
        parse_cluster_spec(text, "c.yaml")
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"c.yaml: {path}: ")


def test_a_spec_built_in_code_is_range_checked_too() -> None:
    with pytest.raises(InvalidClusterSpec, match=r"\$\.nodes: 0 is out of range"):
        validate_cluster_spec(ClusterSpec(nodes=0), "--nodes")


@pytest.mark.parametrize(
    ("pod", "path"),
    [
        (PodSpec("Web", "default", "node-1"), "name"),
        (PodSpec("web", "my.ns", "node-1"), "namespace"),
        (PodSpec("web", "default", "node-1", service_account="SA"), "serviceAccount"),
        (PodSpec("web", "default", "node-1", command=("",)), "command[0]"),
        (
            PodSpec("web", "default", "node-1", ports=(PodPort(port=80), PodPort(port=80, name="x"))),
            "ports[1]",
        ),
    ],
    ids=[
        "an upper-case pod name is refused",
        "a namespace that is not a DNS label is refused",
        "an invalid service account is refused",
        "an empty program name is refused",
        "the same port twice is refused",
    ],
)
def test_bad_pods_are_refused_naming_the_field(pod: PodSpec, path: str) -> None:
    with pytest.raises(InvalidClusterSpec) as caught:
        validate_pod(pod)
    assert caught.value.path == path


def test_a_dotted_pod_name_is_accepted_as_kubernetes_does() -> None:
    validate_pod(PodSpec("web.v1", "default", "node-1", command=("sleep", "1"), ports=(PodPort(port=80),)))
