"""Which Pod/Service fields the local cluster names as ignored on apply: one row per shape."""

from __future__ import annotations

from typing import Any

import pytest

from ambientctl.cluster.support import unimplemented_fields
from meshcore.store import build_resource


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": list(containers), **spec},
    }


def service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}], **spec},
    }


RUN = {"name": "c", "command": ["sleep", "1"]}

CASES = [
    (
        "a pod with a command, env values and ports is fully implemented",
        pod({**RUN, "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]}),
        [],
    ),
    ("a second container and an init container are implemented", pod(RUN, RUN, initContainers=[RUN]), []),
    (
        "runAsUser, runAsGroup and runAsNonRoot are implemented, other securityContext fields are named",
        pod(
            {**RUN, "securityContext": {"runAsUser": 1, "runAsGroup": 2, "privileged": True}},
            securityContext={"runAsNonRoot": True, "runAsUser": 1, "fsGroup": 3},
        ),
        ["spec.containers[0].securityContext.privileged", "spec.securityContext.fsGroup"],
    ),
    (
        "an init container's image without a command is named, as is its readinessProbe",
        pod(RUN, initContainers=[{"name": "i", "image": "busybox", "readinessProbe": {"exec": {}}}]),
        [
            "spec.initContainers[0].image busybox (images are not run: an init container without command "
            "completes at once; give command/args to run a host command)",
            "spec.initContainers[0].readinessProbe",
        ],
    ),
    (
        "container resources are named",
        pod({**RUN, "resources": {"limits": {"cpu": "1"}}}),
        ["spec.containers[0].resources"],
    ),
    (
        "an env valueFrom secret is named, a fieldRef is implemented",
        pod(
            {
                **RUN,
                "env": [
                    {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
            }
        ),
        ["spec.containers[0].env[1].valueFrom.secretKeyRef"],
    ),
    ("pod volumes are named", pod(RUN, volumes=[{"name": "v", "emptyDir": {}}]), ["spec.volumes"]),
    (
        "an image without a command is named",
        pod({"name": "c", "image": "nginx"}),
        [
            "spec.containers[0].image nginx (images are not run: the stand-in HTTP server answers on its "
            "containerPorts; give command/args to run a host command)"
        ],
    ),
    (
        "a service with selector and named ports is fully implemented",
        service(selector={"a": "b"}, ports=[{"name": "h", "port": 80, "targetPort": "http"}]),
        [],
    ),
    (
        "a NodePort service is named",
        service(type="NodePort"),
        ["spec.type NodePort (the local cluster programs a ClusterIP only)"],
    ),
    ("session affinity is named", service(sessionAffinity="ClientIP"), ["spec.sessionAffinity"]),
    (
        "an SCTP port is named",
        service(ports=[{"port": 80, "protocol": "SCTP"}]),
        ["spec.ports[0].protocol SCTP (TCP and UDP only)"],
    ),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unimplemented_fields(doc: dict[str, Any], expected: list[str]) -> None:
    assert unimplemented_fields(build_resource(doc)) == expected


def test_a_deployment_names_its_own_fields_and_its_templates_pod_fields() -> None:
    deployment = build_resource(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "replicas": 2,
                "minReadySeconds": 5,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{**RUN, "resources": {}}, RUN], "volumes": [{"name": "v"}]},
                },
            },
        }
    )
    assert unimplemented_fields(deployment) == [
        "spec.minReadySeconds",
        "spec.template.spec.volumes",
    ]


def test_other_kinds_have_nothing_to_warn_about() -> None:
    ns = build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}})
    assert unimplemented_fields(ns) == []
