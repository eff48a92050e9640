"""Validation of single documents: what is accepted, what is defaulted, and what errors say."""

from __future__ import annotations

from typing import Any

import pytest

from meshcore.store import InvalidResource, build_resource, spec_as, status_as
from meshcore.store.schema import AuthorizationPolicySpec, PodSpec, PodStatus, ServiceSpec


def doc(kind: str, name: str = "web", api: str = "v1", **fields: Any) -> dict[str, Any]:
    meta = fields.pop("metadata", {})
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, **meta}, **fields}


def service(**spec: Any) -> dict[str, Any]:
    return doc("Service", spec={"ports": [{"port": 80}], **spec})


def policy(**spec: Any) -> dict[str, Any]:
    return doc("AuthorizationPolicy", api="security.istio.io/v1", spec=spec)


def test_pod_gets_default_namespace_and_service_account_as_the_api_server_would() -> None:
    pod = build_resource(doc("Pod", spec={"nodeName": "node-1"}, status={"podIP": "10.0.0.1"}))
    assert pod.namespace == "default"
    assert pod.spec == {"nodeName": "node-1", "serviceAccountName": "default"}
    assert spec_as(pod, PodSpec).service_account_name == "default"
    assert status_as(pod, PodStatus).pod_ip == "10.0.0.1"


def test_unknown_fields_are_kept_as_kubectl_keeps_them() -> None:
    svc = build_resource(service(sessionAffinity="None", ports=[{"port": 80, "nodePort": 30080}]))
    assert svc.spec["sessionAffinity"] == "None"
    assert svc.spec["ports"][0]["nodePort"] == 30080


def test_namespace_is_cluster_scoped_even_if_the_document_names_one() -> None:
    ns = build_resource(doc("Namespace", "demo", metadata={"namespace": "other", "labels": {"a": "b"}}))
    assert (ns.namespace, ns.labels) == ("", {"a": "b"})


def test_typed_views_give_defaults_the_raw_spec_does_not_hold() -> None:
    ap = build_resource(policy(rules=[{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]))
    typed = spec_as(ap, AuthorizationPolicySpec)
    assert typed.action == "ALLOW"
    assert typed.rules is not None and typed.rules[0].from_ is not None
    assert typed.rules[0].from_[0].source.principals == ["cluster.local/ns/a/sa/b"]
    assert "action" not in ap.spec


def test_service_target_port_may_be_a_number_or_a_container_port_name() -> None:
    svc = build_resource(
        service(
            ports=[
                {"name": "a", "port": 80, "targetPort": "http"},
                {"name": "b", "port": 81, "targetPort": 8081},
            ]
        )
    )
    ports = spec_as(svc, ServiceSpec).ports or []
    assert [p.target_port for p in ports] == ["http", 8081]


def test_pod_ready_reads_the_ready_condition() -> None:
    pod = build_resource(doc("Pod", status={"conditions": [{"type": "Ready", "status": "True"}]}))
    assert status_as(pod, PodStatus).ready


def test_dates_in_yaml_are_stored_as_strings_so_they_read_back_equal() -> None:
    import datetime

    pod = build_resource(doc("Pod", "demo", spec={"nodeSelector": {"when": datetime.date(2024, 1, 2)}}))
    assert pod.spec["nodeSelector"] == {"when": "2024-01-02"}


INVALID = [
    (service(ports=[{"port": "http"}]), "$.spec.ports[0].port: Expected int, got str"),
    (service(ports=[{"port": 0}]), "$.spec.ports[0].port: Expected int >= 1"),
    (
        service(ports=[{"port": 80, "protocol": "HTTP"}]),
        "$.spec.ports[0].protocol: Invalid enum value 'HTTP'",
    ),
    (service(ports=[{"port": 80}, {"port": 81}]), "$.spec.ports: every port needs a name"),
    (service(clusterIP="10.0.0.300"), "$.spec.clusterIP: '10.0.0.300' is not an IP address"),
    (service(ports=[{"port": 80, "targetPort": 70000}]), "$.spec.ports[0].targetPort: 70000 is not a port"),
    (doc("Pod", status={"podIP": "nope"}), "$.status.podIP: 'nope' is not an IP address"),
    (
        doc("Pod", spec={"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}),
        "$.spec.containers[0].ports[0].containerPort: Expected int, got str",
    ),
    (doc("Pod", status={"phase": "Sleeping"}), "$.status.phase: Invalid enum value 'Sleeping'"),
    (
        doc("Pod", metadata={"labels": {"version": 1}}),
        '$.metadata.labels.version: expected a string, got a number (quote it: "1")',
    ),
    (doc("Pod", "Web_1"), "$.metadata.name: 'Web_1' is not a valid name"),
    (doc("Service", "a.b", spec={}), "$.metadata.name: 'a.b' is not a valid name"),
    (doc("Pod", metadata={"namespace": "Demo"}), "$.metadata.namespace: 'Demo' is not a valid name"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {}}, "$.metadata: Object missing required field name"),
    ({"apiVersion": "v1", "metadata": {"name": "x"}}, "$.kind: missing; set it to one of Namespace"),
    (
        doc("StatefulSet", api="apps/v1"),
        "$.kind: unknown kind 'StatefulSet': supported kinds are Namespace, ServiceAccount, Pod",
    ),
    (doc("Pod", api="v2"), "$.apiVersion: 'v2' is not served for Pod; use 'v1'"),
    (policy(action="PERMIT"), "$.spec.action: Invalid enum value 'PERMIT'"),
    (policy(action="CUSTOM"), "$.spec.provider: required when action is CUSTOM"),
    (
        policy(rules=[{"to": [{"operation": {"ports": [8080]}}]}]),
        "$.spec.rules[0].to[0].operation.ports[0]: Expected str, got int",
    ),
    (
        policy(rules=[{"to": [{"operation": {"ports": ["http"]}}]}]),
        "$.spec.rules[0].to[0].operation.ports[0]: 'http' is not a port number",
    ),
    (
        policy(rules=[{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]),
        "$.spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.0/33' is not an IP address or CIDR block",
    ),
    (policy(rules=[{"when": [{"key": "source.ip"}]}]), "$.spec.rules[0].when[0]: needs values or notValues"),
    (
        policy(selector={"matchLabels": {"a": "b"}}, targetRefs=[{"kind": "Service", "name": "s"}]),
        "$.spec: set either selector or targetRef/targetRefs, not both",
    ),
    (
        doc("Gateway", api="gateway.networking.k8s.io/v1", spec={}),
        "$.spec: Object missing required field gatewayClassName",
    ),
    (
        doc("HTTPRoute", api="gateway.networking.k8s.io/v1", spec={"parentRefs": [{"port": 80}]}),
        "$.spec.parentRefs[0]: Object missing required field name",
    ),
    (["not", "a", "mapping"], "$: expected a mapping with apiVersion, kind and metadata, got a list"),
]


@pytest.mark.parametrize(
    ("document", "expected"),
    INVALID,
    ids=[
        "a service port given as a word is refused",
        "port zero is refused",
        "an unknown port protocol is refused",
        "several unnamed service ports are refused",
        "a malformed cluster IP is refused",
        "a target port above 65535 is refused",
        "a malformed pod IP is refused",
        "a container port given as a string is refused",
        "an unknown pod phase is refused",
        "an unquoted numeric label value is refused with a hint to quote it",
        "an upper-case pod name is refused",
        "a dotted service name is refused",
        "an upper-case namespace is refused",
        "a document without a name is refused",
        "a document without a kind is refused",
        "an unsupported kind is refused listing the supported ones",
        "an unserved apiVersion is refused naming the right one",
        "an unknown policy action is refused",
        "a CUSTOM policy without a provider is refused",
        "policy ports given as numbers are refused as Istio refuses them",
        "a named policy port is refused",
        "a bad CIDR in ipBlocks is refused",
        "a when condition without values is refused",
        "a policy with both selector and targetRefs is refused",
        "a gateway without a class is refused",
        "an HTTPRoute parentRef without a name is refused",
        "a YAML list where a document should be is refused",
    ],
)
def test_invalid_document_error_names_source_document_and_field(document: Any, expected: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        build_resource(document, "web.yaml", 2)
    message = str(caught.value)
    assert message.startswith("web.yaml: document 2")
    assert expected in message


def test_error_names_kind_and_namespace_qualified_name() -> None:
    bad = doc("Service", metadata={"namespace": "shop"}, spec={"ports": [{"port": "x"}]})
    with pytest.raises(InvalidResource) as caught:
        build_resource(bad, "services.yaml", 2)
    assert str(caught.value) == (
        "services.yaml: document 2 (Service shop/web): $.spec.ports[0].port: Expected int, got str"
    )
    assert (caught.value.path, caught.value.index) == ("$.spec.ports[0].port", 2)


def test_error_inside_a_list_names_the_item() -> None:
    with pytest.raises(InvalidResource, match=r"^f.yaml: document 1 \(List item 3, Pod default/web\): "):
        build_resource(doc("Pod", status={"podIP": "x"}), "f.yaml", 1, item=3)
