"""What a stored Pod manifest runs as on the local cluster: the downward API in env, workingDir, and the
stand-in for an image the local cluster cannot run."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from ambientctl.cluster.errors import InvalidClusterSpec
from ambientctl.cluster.kubelet import (
    STANDIN_MODULE,
    config_error_status,
    container_env,
    pod_spec_from_resource,
)
from ambientctl.cluster.podstatus import display_status, ready_counts
from meshcore.store import Resource, build_resource


def pod(container: dict[str, Any], **spec: Any) -> Resource:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "web", "version": "v2"},
            "annotations": {"team": "a"},
        },
        "spec": {"serviceAccountName": "shopper", "containers": [{"name": "c", **container}], **spec},
    }
    return build_resource(doc)


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


FIELDS = [
    ("the pod name", "metadata.name", "web"),
    ("the namespace", "metadata.namespace", "shop"),
    ("a label", "metadata.labels['version']", "v2"),
    ("an annotation", "metadata.annotations['team']", "a"),
    ("a missing label as empty", "metadata.labels['nope']", ""),
    ("the node", "spec.nodeName", "node-2"),
    ("the service account", "spec.serviceAccountName", "shopper"),
]


@pytest.mark.parametrize(
    ("path", "value"), [f[1:] for f in FIELDS], ids=[f"fieldRef gives {f[0]}" for f in FIELDS]
)
def test_field_refs_resolve_from_the_pod(path: str, value: str) -> None:
    resource = pod({"command": ["sleep", "1"]})
    assert container_env([field("X", path)], "pod shop/web", resource, "node-2") == ({"X": value}, {})


def test_pod_and_host_ip_are_left_for_when_the_pod_exists_and_a_later_literal_wins() -> None:
    resource = pod({"command": ["sleep", "1"]})
    entries = [
        field("IP", "status.podIP"),
        field("HOST", "status.hostIP"),
        field("A", "status.podIP"),
        {"name": "A", "value": "x"},
    ]
    assert container_env(entries, "pod shop/web", resource, "n") == (
        {"A": "x"},
        {"IP": "podIP", "HOST": "hostIP"},
    )


REFUSED = [
    (
        "a ConfigMap reference is refused",
        {"configMapKeyRef": {"name": "c", "key": "k"}},
        "ConfigMaps, Secrets",
    ),
    ("a resourceFieldRef is refused", {"resourceFieldRef": {"resource": "limits.cpu"}}, "resourceFieldRef"),
    (
        "an unsupported field path is refused",
        {"fieldRef": {"fieldPath": "status.phase"}},
        "unsupported field path 'status.phase'",
    ),
]


@pytest.mark.parametrize(("value_from", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_value_from_sources_the_local_cluster_cannot_give_are_refused(
    value_from: dict[str, Any], words: str
) -> None:
    resource = pod({"command": ["sleep", "1"]})
    with pytest.raises(InvalidClusterSpec, match=words):
        container_env([{"name": "X", "valueFrom": value_from}], "pod shop/web", resource, "n")


def test_an_image_without_a_command_runs_the_stand_in_on_its_tcp_container_ports() -> None:
    spec = pod(
        {
            "image": "docker.io/istio/examples-bookinfo-details-v1:1.20.2",
            "ports": [{"containerPort": 9080}, {"containerPort": 53, "protocol": "UDP"}],
        }
    )
    got = pod_spec_from_resource(spec, "node-1")
    assert got.command == (sys.executable, "-m", STANDIN_MODULE, "--port", "9080")
    assert got.env["POD_VERSION"] == "v2"


def test_a_command_runs_as_given_in_its_working_directory() -> None:
    got = pod_spec_from_resource(
        pod({"image": "x", "command": ["sleep"], "args": ["1"], "workingDir": "/tmp"}), "n"
    )
    assert (got.command, got.working_dir) == (("sleep", "1"), "/tmp")


def test_a_relative_working_directory_is_refused() -> None:
    with pytest.raises(InvalidClusterSpec, match="workingDir: must be an absolute path"):
        pod_spec_from_resource(pod({"command": ["sleep"], "workingDir": "tmp"}), "n")


def many(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None, **spec: Any) -> Resource:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"version": "v2"}, "uid": "u1"},
        "spec": {"containers": containers, **({"initContainers": init} if init else {}), **spec},
    }
    return build_resource(doc)


def test_each_container_and_init_container_is_its_own_process_with_its_own_env() -> None:
    got = pod_spec_from_resource(
        many(
            [
                {"name": "app", "command": ["sleep", "9"], "env": [field("ME", "metadata.name")]},
                {"name": "side", "image": "proxy", "ports": [{"containerPort": 15000}], "workingDir": "/srv"},
            ],
            [{"name": "setup", "command": ["true"], "env": [{"name": "STEP", "value": "1"}]}],
        ),
        "node-1",
    )
    assert [c.name for c in got.init_containers] == ["setup"]
    assert got.init_containers[0].env == {"STEP": "1"}
    app, side = got.containers
    assert (app.command, app.env) == (("sleep", "9"), {"ME": "web"})
    assert side.command == (sys.executable, "-m", STANDIN_MODULE, "--port", "15000")  # its own ports only
    assert side.working_dir == "/srv"
    assert [c.name for c in got.first_containers()] == ["setup"]


SECURITY = [
    ("the pod's runAsUser applies to a container without one", {"runAsUser": 1000}, {}, (1000, None)),
    (
        "a container's runAsUser and runAsGroup win over the pod's",
        {"runAsUser": 1000, "runAsGroup": 1000},
        {"runAsUser": 2000, "runAsGroup": 3000},
        (2000, 3000),
    ),
    ("runAsNonRoot with a non-zero uid runs", {"runAsNonRoot": True}, {"runAsUser": 65534}, (65534, None)),
    ("no securityContext runs as root", {}, {}, (None, None)),
]


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "ids"), [r[1:] for r in SECURITY], ids=[r[0] for r in SECURITY]
)
def test_security_context_sets_the_containers_user_and_group(
    pod_sc: dict[str, Any], container_sc: dict[str, Any], ids: tuple[int | None, int | None]
) -> None:
    container: dict[str, Any] = {"name": "c", "command": ["sleep", "1"]}
    if container_sc:
        container["securityContext"] = container_sc
    got = pod_spec_from_resource(many([container], securityContext=pod_sc), "n")
    assert (got.containers[0].run_as_user, got.containers[0].run_as_group) == ids


NON_ROOT = [
    (
        "runAsNonRoot without a uid is refused",
        {"runAsNonRoot": True},
        "container has runAsNonRoot and image will run as root",
    ),
    (
        "runAsNonRoot with uid 0 is refused",
        {"runAsNonRoot": True, "runAsUser": 0},
        "runAsUser breaks non-root policy",
    ),
    ("a negative uid is refused", {"runAsUser": -1}, "not a user or group id"),
    ("a uid given as text is refused", {"runAsGroup": "1000"}, "not a user or group id"),
]


@pytest.mark.parametrize(("sc", "words"), [r[1:] for r in NON_ROOT], ids=[r[0] for r in NON_ROOT])
def test_a_container_that_would_break_its_security_context_is_refused(sc: dict[str, Any], words: str) -> None:
    resource = many([{"name": "c", "command": ["sleep", "1"], "securityContext": sc}])
    with pytest.raises(InvalidClusterSpec, match=words) as refused:
        pod_spec_from_resource(resource, "n")
    assert "containers[0].securityContext" in str(refused.value)


def test_a_pod_refused_for_its_spec_shows_create_container_config_error() -> None:
    resource = many([{"name": "c", "image": "app:1", "securityContext": {"runAsNonRoot": True}}])
    with pytest.raises(InvalidClusterSpec) as refused:
        pod_spec_from_resource(resource, "n")
    status = config_error_status(resource, str(refused.value))
    assert display_status(status) == "CreateContainerConfigError"
    assert status["phase"] == "Pending" and ready_counts(status) == (0, 1)
    assert (
        "runAsNonRoot and image will run as root"
        in status["containerStatuses"][0]["state"]["waiting"]["message"]
    )
