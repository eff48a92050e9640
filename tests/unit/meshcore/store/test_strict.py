"""Strict decoding and Kubernetes' metadata rules: every shape the API server refuses has a row here."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.store import InvalidResource, build_resource
from meshcore.store.fields import FIELDS, label_value_problem, qualified_name_problem, unknown_fields


def doc(kind: str, name: str = "web", api: str = "v1", **fields: Any) -> dict[str, Any]:
    meta = fields.pop("metadata", {})
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, **meta}, **fields}


def pod(**spec: Any) -> dict[str, Any]:
    return doc("Pod", spec={"containers": [{"name": "c", "image": "x"}], **spec})


def container(**fields: Any) -> dict[str, Any]:
    return doc("Pod", spec={"containers": [{"name": "c", "image": "x", **fields}]})


def service(name: str = "web", **spec: Any) -> dict[str, Any]:
    return doc("Service", name, spec={"ports": [{"port": 80}], **spec})


def policy(**spec: Any) -> dict[str, Any]:
    return doc("AuthorizationPolicy", api="security.istio.io/v1", spec=spec)


REJECTED = [
    (
        "a misspelled policy selector is refused instead of becoming namespace-wide",
        policy(selectr={"matchLabels": {"app": "details"}}, action="DENY", rules=[{}]),
        'strict decoding error: unknown field "spec.selectr" (did you mean "selector"?)',
    ),
    (
        "a misspelled principal in a policy rule is refused with its path",
        policy(rules=[{"from": [{"source": {"principal": ["cluster.local/ns/a/sa/b"]}}]}]),
        'unknown field "spec.rules[0].from[0].source.principal" (did you mean "principals"?)',
    ),
    (
        "a misspelled matchLabels is refused",
        policy(selector={"matchLabel": {"app": "a"}}),
        'unknown field "spec.selector.matchLabel"',
    ),
    (
        "a misspelled container image is refused",
        container(imagee="nginx"),
        'unknown field "spec.containers[0].imagee" (did you mean "image"?)',
    ),
    (
        "an env entry with a misspelled valueFrom is refused",
        container(env=[{"name": "A", "valuefrom": {}}]),
        'unknown field "spec.containers[0].env[0].valuefrom"',
    ),
    (
        "a probe with an unknown handler is refused",
        container(readinessProbe={"httpget": {"port": 80}}),
        'unknown field "spec.containers[0].readinessProbe.httpget"',
    ),
    ("an unknown pod spec field is refused", pod(nodename="n"), 'unknown field "spec.nodename"'),
    (
        "an unknown top-level field is refused",
        {**pod(), "specs": {}},
        'unknown field "specs" (did you mean "spec"?)',
    ),
    (
        "misspelled metadata labels are refused",
        doc("Pod", metadata={"lables": {"app": "a"}}),
        'unknown field "metadata.lables" (did you mean "labels"?)',
    ),
    (
        "a service with port instead of ports is refused",
        doc("Service", spec={"port": 80}),
        'unknown field "spec.port" (did you mean "ports"?)',
    ),
    (
        "an unknown field in a service port is refused",
        service(ports=[{"port": 80, "targetport": 8080}]),
        'unknown field "spec.ports[0].targetport" (did you mean "targetPort"?)',
    ),
    ("a service account with a spec is refused", doc("ServiceAccount", spec={}), 'unknown field "spec"'),
    ("an unknown namespace spec field is refused", doc("Namespace", spec={"x": 1}), 'unknown field "spec.x"'),
    (
        "every unknown field of a document is listed",
        pod(zzz="n", yyy=True),
        'strict decoding error: unknown field "spec.zzz", unknown field "spec.yyy"',
    ),
    (
        "an unknown gateway listener field is refused",
        doc(
            "Gateway",
            api="gateway.networking.k8s.io/v1",
            spec={
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "m", "port": 1, "protocol": "HBONE", "prot": 2}],
            },
        ),
        'unknown field "spec.listeners[0].prot"',
    ),
    (
        "a service without ports is refused",
        doc("Service", spec={"selector": {"app": "a"}}),
        "$.spec.ports: required",
    ),
    ("a service without a spec is refused", doc("Service"), "$.spec.ports: required"),
    ("a service name starting with a digit is refused", service("1web"), "RFC 1035 label"),
    ("a pod name over 253 characters is refused", doc("Pod", "a" * 254), "at most 253"),
    ("a namespace name over 63 characters is refused", doc("Namespace", "a" * 64), "at most 63"),
    (
        "a pod in a namespace named like a path is refused",
        doc("Pod", metadata={"namespace": "a/b"}),
        "not a valid name",
    ),
    (
        "a label key starting with a dash is refused",
        doc("Pod", metadata={"labels": {"-app": "a"}}),
        "$.metadata.labels.-app: invalid label '-app': the name part",
    ),
    (
        "a label key with an upper-case prefix is refused",
        doc("Pod", metadata={"labels": {"Example.com/app": "a"}}),
        "the prefix must be a DNS subdomain",
    ),
    (
        "a label key with an empty prefix is refused",
        doc("Pod", metadata={"labels": {"/app": "a"}}),
        "the prefix before '/' must not be empty",
    ),
    (
        "a label value over 63 characters is refused",
        doc("Pod", metadata={"labels": {"app": "a" * 64}}),
        "is not a valid label value",
    ),
    (
        "a label value with a blank is refused",
        doc("Pod", metadata={"labels": {"app": "my app"}}),
        "'my app' is not a valid label value",
    ),
    (
        "an annotation key with two slashes is refused",
        doc("Pod", metadata={"annotations": {"a/b/c": "x"}}),
        "$.metadata.annotations: invalid key 'a/b/c'",
    ),
    (
        "a service selector with an invalid value is refused",
        service(selector={"app": "a b"}),
        "$.spec.selector.app: invalid label",
    ),
    (
        "a policy selector with an invalid label key is refused",
        policy(selector={"matchLabels": {"a b": "c"}}),
        "$.spec.selector.matchLabels.a b: invalid label",
    ),
]


@pytest.mark.parametrize(("document", "expected"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_the_api_server_would_refuse_it_and_so_do_we(document: Any, expected: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        build_resource(document, "f.yaml", 1)
    assert expected in str(caught.value)


ACCEPTED = [
    ("a headless service needs no ports", doc("Service", spec={"clusterIP": "None", "selector": {"a": "b"}})),
    (
        "an ExternalName service needs no ports",
        doc("Service", spec={"type": "ExternalName", "externalName": "x.y"}),
    ),
    (
        "prefixed label keys and empty values are valid",
        doc("Pod", metadata={"labels": {"app.kubernetes.io/name": "web", "tier": "", "a_b.c": "V-1_x.y"}}),
    ),
    (
        "what get -o yaml prints applies again",
        doc(
            "Pod",
            metadata={"uid": "u", "resourceVersion": "3", "creationTimestamp": "2024-01-01T00:00:00Z"},
            spec={"nodeName": "n"},
            status={"phase": "Running", "startTime": "x", "containerStatuses": [{"name": "c"}]},
        ),
    ),
    (
        "an upstream pod spec with fields the mesh does not read is valid",
        pod(
            containers=[
                {
                    "name": "details",
                    "image": "docker.io/istio/examples-bookinfo-details-v1:1.20.2",
                    "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 9080}],
                    "env": [{"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "resources": {"requests": {"cpu": "10m"}},
                    "securityContext": {"runAsUser": 1000},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 9080}, "periodSeconds": 5},
                }
            ],
            volumes=[{"name": "tmp", "emptyDir": {}}],
            terminationGracePeriodSeconds=30,
        ),
    ),
    (
        "a service account may list secrets",
        doc("ServiceAccount", secrets=[{"name": "s"}], automountServiceAccountToken=False),
    ),
]


@pytest.mark.parametrize("document", [r[1] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_valid_kubernetes_shapes_are_accepted(document: Any) -> None:
    build_resource(document)


def test_every_kind_with_a_tree_defines_the_document_envelope() -> None:
    for kind, tree in FIELDS.items():
        assert {"apiVersion", "kind", "metadata"} <= set(tree), kind


def test_a_kind_without_a_tree_still_gets_its_top_level_checked() -> None:
    assert unknown_fields("SomeFutureKind", {"apiVersion": "v1", "kind": "X", "metdata": {}}) == [
        '"metdata" (did you mean "metadata"?)'
    ]


@given(st.text(max_size=80))
def test_label_key_check_never_raises_and_accepts_only_bounded_keys(key: str) -> None:
    problem = qualified_name_problem(key)
    if problem is None:
        prefix, _, name = key.rpartition("/")
        assert 1 <= len(name) <= 63 and len(prefix) <= 253


@given(st.text(max_size=80))
def test_label_value_check_never_raises_and_accepts_only_short_values(value: str) -> None:
    if label_value_problem(value) is None:
        assert len(value) <= 63 and " " not in value


def test_an_unknown_restart_policy_is_refused() -> None:
    with pytest.raises(InvalidResource, match=r"\$.spec.restartPolicy: Invalid enum value 'Sometimes'"):
        build_resource(pod(restartPolicy="Sometimes"))
