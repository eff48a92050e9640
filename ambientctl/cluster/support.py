"""Which fields of a Pod or Service the local cluster implements, so ``apply`` can name the others.

The store accepts every field Kubernetes defines (strict decoding refuses only unknown ones), but the
local cluster realises a subset: a field it would ignore must be named in a warning on apply, never
dropped silently. ``IMPLEMENTED`` holds, per kind, the tree of implemented fields (``True``: the whole
value is honoured; a ``dict``: walk into it; a one-element ``list``: each item against that tree). Every
container and init container runs (its own process); of ``securityContext`` only ``runAsUser``,
``runAsGroup`` and ``runAsNonRoot`` are implemented (pod and container level), the rest is named; an
image without command is named (containers: the stand-in serves; init containers: complete at once).
``unimplemented_fields``
returns kubectl-style paths (``spec.containers[0].resources``). Pure: keep it in step with
``kubelet.pod_spec_from_resource`` and ``kubelet.select_endpoints``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.store import Resource

_RUN_AS: dict[str, Any] = {"runAsUser": True, "runAsGroup": True, "runAsNonRoot": True}

_CONTAINER: dict[str, Any] = {
    "name": True,
    "securityContext": _RUN_AS,
    "image": True,  # named in the warning when no command is given (see below)
    "command": True,
    "args": True,
    "workingDir": True,
    "readinessProbe": True,
    "imagePullPolicy": True,  # nothing is pulled: nothing to ignore
    "env": [{"name": True, "value": True, "valueFrom": {"fieldRef": True}}],
    "ports": [{"name": True, "containerPort": True, "protocol": True}],
}
# Kubernetes refuses probes on init containers; a readinessProbe there is named, not run.
_INIT_CONTAINER = {k: v for k, v in _CONTAINER.items() if k != "readinessProbe"}

IMPLEMENTED: dict[str, dict[str, Any]] = {
    "Pod": {
        "nodeName": True,
        "serviceAccountName": True,
        "hostNetwork": True,  # refused when true, with the reason, when the pod is run
        "restartPolicy": True,
        "terminationGracePeriodSeconds": True,  # SIGTERM, that long, then SIGKILL (Cluster.remove_pod)
        "securityContext": _RUN_AS,
        "containers": [_CONTAINER],
        "initContainers": [_INIT_CONTAINER],
    },
    "Service": {
        "selector": True,
        "ports": [{"name": True, "port": True, "targetPort": True, "protocol": True, "appProtocol": True}],
        "clusterIP": True,
        "clusterIPs": True,
        "type": True,  # anything but ClusterIP is named below
        "ipFamilies": True,
        "ipFamilyPolicy": True,
        "internalTrafficPolicy": True,
    },
}


def unimplemented_fields(resource: Resource) -> list[str]:
    """Paths of the fields of a Pod/Service spec the local cluster would ignore (empty for other kinds)."""
    if resource.kind == "Deployment":
        return _deployment_fields(resource)
    tree = IMPLEMENTED.get(resource.kind)
    if tree is None:
        return []
    found: list[str] = []
    spec = resource.spec
    if resource.kind == "Pod":
        for group, stand_in in (
            ("initContainers", "an init container without command completes at once"),
            ("containers", "the stand-in HTTP server answers on its containerPorts"),
        ):
            for i, container in enumerate(spec.get(group) or ()):
                if not isinstance(container, Mapping):
                    continue
                image = container.get("image")
                if image and image != "local" and not container.get("command") and not container.get("args"):
                    found.append(
                        f"spec.{group}[{i}].image {image} (images are not run: {stand_in}; "
                        "give command/args to run a host command)"
                    )
        _walk(tree, spec, "spec", found)
    else:
        _walk(tree, spec, "spec", found)
        kind = spec.get("type", "ClusterIP")
        if kind != "ClusterIP":
            found.append(f"spec.type {kind} (the local cluster programs a ClusterIP only)")
        for i, port in enumerate(spec.get("ports") or ()):
            if isinstance(port, Mapping) and port.get("protocol") == "SCTP":
                found.append(f"spec.ports[{i}].protocol SCTP (TCP and UDP only)")
    return found


_DEPLOYMENT: dict[str, Any] = {
    "replicas": True,
    "selector": True,
    "strategy": True,
    "paused": True,
    "template": {"metadata": {"labels": True, "annotations": True}, "spec": True},
}


def _deployment_fields(deployment: Resource) -> list[str]:
    """The Deployment's own fields, then its pod template's as a Pod's (paths under spec.template)."""
    found: list[str] = []
    _walk(_DEPLOYMENT, deployment.spec, "spec", found)
    template = deployment.spec.get("template")
    if isinstance(template, Mapping) and isinstance(template.get("spec"), Mapping):
        as_pod = Resource(
            kind="Pod", name=deployment.name, namespace=deployment.namespace, spec=dict(template["spec"])
        )
        found.extend(f"spec.template.{path}" for path in unimplemented_fields(as_pod))
    return found


def _walk(tree: Any, value: Any, path: str, found: list[str]) -> None:
    if tree is True:
        return
    if isinstance(tree, list):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(tree[0], item, f"{path}[{i}]", found)
        return
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        if key in tree:
            _walk(tree[key], item, f"{path}.{key}", found)
        elif item not in (None, [], {}):
            found.append(f"{path}.{key}")
