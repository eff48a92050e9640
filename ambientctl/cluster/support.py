"""Which fields of a Pod or Service the local cluster implements, so ``apply`` can name the others.

The store accepts every field Kubernetes defines (strict decoding refuses only unknown ones), but the
local cluster realises a subset: a field it would ignore must be named in a warning on apply, never
dropped silently. ``IMPLEMENTED`` holds, per kind, the tree of implemented fields (``True``: the whole
value is honoured; a ``dict``: walk into it; a one-element ``list``: each item against that tree). Only
the first container of a pod runs; a further container is named as a whole. ``unimplemented_fields``
returns kubectl-style paths (``spec.containers[0].resources``). Pure: keep it in step with
``kubelet.pod_spec_from_resource`` and ``kubelet.select_endpoints``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.store import Resource

_CONTAINER: dict[str, Any] = {
    "name": True,
    "image": True,  # named in the warning when no command is given (see below)
    "command": True,
    "args": True,
    "workingDir": True,
    "readinessProbe": True,
    "imagePullPolicy": True,  # nothing is pulled: nothing to ignore
    "env": [{"name": True, "value": True, "valueFrom": {"fieldRef": True}}],
    "ports": [{"name": True, "containerPort": True, "protocol": True}],
}

IMPLEMENTED: dict[str, dict[str, Any]] = {
    "Pod": {
        "nodeName": True,
        "serviceAccountName": True,
        "hostNetwork": True,  # refused when true, with the reason, when the pod is run
        "restartPolicy": True,
        "containers": [_CONTAINER],
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
        containers = spec.get("containers")
        if isinstance(containers, list):
            found.extend(
                f"spec.containers[{i}] (only the first container runs)" for i in range(1, len(containers))
            )
            first = containers[0] if containers and isinstance(containers[0], Mapping) else {}
            if first.get("image") and not first.get("command") and not first.get("args"):
                found.append(
                    f"spec.containers[0].image {first['image']} (images are not run: the stand-in HTTP server "
                    "answers on its containerPorts; give command/args to run a host command)"
                )
        _walk(
            tree,
            {**spec, "containers": containers[:1] if isinstance(containers, list) else containers},
            "spec",
            found,
        )
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
