"""Strict decoding and Kubernetes' metadata rules, as the API server applies them before anything is stored.

The API server refuses a field its schema does not know (``kubectl apply`` fails with ``strict decoding
error: unknown field "spec.selectr"``); a typo must never become a weaker object (an AuthorizationPolicy
whose misspelled ``selector`` is dropped selects the whole namespace). ``FIELDS`` holds, per kind, the
tree of field names Kubernetes, Istio and Gateway API define (whether or not the mesh reads them), and
``unknown_fields`` walks a document against it. A tree node is a ``dict`` (an object with exactly these
fields), a one-element ``list`` (a list of such objects) or ``OPAQUE`` (a value not walked: free-form
maps such as labels, and subtrees the mesh never reads whose schema is large: volumes, affinity,
tolerations, security contexts, lifecycle hooks, TLS settings, ``status``). Kinds without a tree here
get their top level and ``metadata`` checked; their ``spec`` is strict through their own Structs
(``traffic_schema``: HTTPRoute, GRPCRoute, VirtualService, DestinationRule, rate limits).

Also here, pure and shared by ``schema``: label keys and values and annotation keys as Kubernetes
validates them (qualified names, 63/253 characters), and DNS-1035 labels (Service names).
Invariant: every function is pure and returns problems instead of raising; ``schema`` turns them into
``InvalidResource``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Final

# A subtree that is not walked (see the module doc).
OPAQUE: Final = None

Tree = dict[str, Any] | list[Any] | None

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

METADATA: dict[str, Tree] = {
    **dict.fromkeys(
        (
            "name generateName namespace selfLink uid resourceVersion generation creationTimestamp "
            "deletionTimestamp deletionGracePeriodSeconds labels annotations finalizers managedFields"
        ).split(),
        OPAQUE,
    ),
    # Kubernetes' OwnerReference (the store keeps these; a misspelled one must not silently lose its owner).
    "ownerReferences": [
        dict.fromkeys("apiVersion kind name uid controller blockOwnerDeletion".split(), OPAQUE)
    ],
}

_PROBE: dict[str, Tree] = {
    "exec": {"command": OPAQUE},
    "httpGet": {
        "path": OPAQUE,
        "port": OPAQUE,
        "host": OPAQUE,
        "scheme": OPAQUE,
        "httpHeaders": [{"name": OPAQUE, "value": OPAQUE}],
    },
    "tcpSocket": {"port": OPAQUE, "host": OPAQUE},
    "grpc": {"port": OPAQUE, "service": OPAQUE},
    **dict.fromkeys(
        "initialDelaySeconds timeoutSeconds periodSeconds successThreshold failureThreshold "
        "terminationGracePeriodSeconds".split(),
        OPAQUE,
    ),
}

_ENV_VAR: dict[str, Tree] = {
    "name": OPAQUE,
    "value": OPAQUE,
    "valueFrom": {
        "fieldRef": {"apiVersion": OPAQUE, "fieldPath": OPAQUE},
        "resourceFieldRef": {"containerName": OPAQUE, "resource": OPAQUE, "divisor": OPAQUE},
        "configMapKeyRef": {"name": OPAQUE, "key": OPAQUE, "optional": OPAQUE},
        "secretKeyRef": {"name": OPAQUE, "key": OPAQUE, "optional": OPAQUE},
    },
}

CONTAINER: dict[str, Tree] = {
    "name": OPAQUE,
    "image": OPAQUE,
    "command": OPAQUE,
    "args": OPAQUE,
    "workingDir": OPAQUE,
    "ports": [
        {"name": OPAQUE, "hostPort": OPAQUE, "containerPort": OPAQUE, "protocol": OPAQUE, "hostIP": OPAQUE}
    ],
    "env": [_ENV_VAR],
    "envFrom": OPAQUE,
    "resources": {"limits": OPAQUE, "requests": OPAQUE, "claims": OPAQUE},
    "livenessProbe": _PROBE,
    "readinessProbe": _PROBE,
    "startupProbe": _PROBE,
    **dict.fromkeys(
        "resizePolicy restartPolicy volumeMounts volumeDevices lifecycle terminationMessagePath "
        "terminationMessagePolicy imagePullPolicy securityContext stdin stdinOnce tty".split(),
        OPAQUE,
    ),
}

POD_SPEC: dict[str, Tree] = {
    "containers": [CONTAINER],
    "initContainers": [CONTAINER],
    **dict.fromkeys(
        "volumes ephemeralContainers restartPolicy terminationGracePeriodSeconds activeDeadlineSeconds "
        "dnsPolicy nodeSelector serviceAccountName serviceAccount automountServiceAccountToken nodeName "
        "hostNetwork hostPID hostIPC shareProcessNamespace securityContext imagePullSecrets hostname "
        "subdomain affinity schedulerName tolerations hostAliases priorityClassName priority dnsConfig "
        "readinessGates runtimeClassName enableServiceLinks preemptionPolicy overhead "
        "topologySpreadConstraints setHostnameAsFQDN os hostUsers schedulingGates resourceClaims "
        "resources".split(),
        OPAQUE,
    ),
}

SERVICE_SPEC: dict[str, Tree] = {
    "ports": [
        dict.fromkeys("name protocol appProtocol port targetPort nodePort".split(), OPAQUE),
    ],
    **dict.fromkeys(
        "selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP "
        "loadBalancerSourceRanges externalName externalTrafficPolicy healthCheckNodePort "
        "publishNotReadyAddresses sessionAffinityConfig ipFamilies ipFamilyPolicy "
        "allocateLoadBalancerNodePorts loadBalancerClass internalTrafficPolicy trafficDistribution".split(),
        OPAQUE,
    ),
}

_TARGET_REF: dict[str, Tree] = dict.fromkeys(("group", "kind", "name", "namespace"), OPAQUE)

AUTHORIZATION_POLICY_SPEC: dict[str, Tree] = {
    "selector": {"matchLabels": OPAQUE},
    "targetRef": _TARGET_REF,
    "targetRefs": [_TARGET_REF],
    "action": OPAQUE,
    "provider": {"name": OPAQUE},
    "rules": [
        {
            "from": [
                {
                    "source": dict.fromkeys(
                        (
                            "principals notPrincipals requestPrincipals notRequestPrincipals namespaces "
                            "notNamespaces serviceAccounts notServiceAccounts ipBlocks notIpBlocks "
                            "remoteIpBlocks notRemoteIpBlocks"
                        ).split(),
                        OPAQUE,
                    )
                }
            ],
            "to": [
                {
                    "operation": dict.fromkeys(
                        "hosts notHosts ports notPorts methods notMethods paths notPaths".split(), OPAQUE
                    )
                }
            ],
            "when": [{"key": OPAQUE, "values": OPAQUE, "notValues": OPAQUE}],
        }
    ],
}

GATEWAY_SPEC: dict[str, Tree] = {
    "gatewayClassName": OPAQUE,
    "listeners": [
        {
            "name": OPAQUE,
            "hostname": OPAQUE,
            "port": OPAQUE,
            "protocol": OPAQUE,
            "tls": OPAQUE,
            "allowedRoutes": {
                "namespaces": {"from": OPAQUE, "selector": OPAQUE},
                "kinds": [{"group": OPAQUE, "kind": OPAQUE}],
            },
        }
    ],
    "addresses": [{"type": OPAQUE, "value": OPAQUE}],
    "infrastructure": {"labels": OPAQUE, "annotations": OPAQUE, "parametersRef": OPAQUE},
    "backendTLS": OPAQUE,
}

DEPLOYMENT_SPEC: dict[str, Tree] = {
    "replicas": OPAQUE,
    "selector": {"matchLabels": OPAQUE, "matchExpressions": OPAQUE},
    "template": {"metadata": METADATA, "spec": POD_SPEC},
    "strategy": {"type": OPAQUE, "rollingUpdate": {"maxUnavailable": OPAQUE, "maxSurge": OPAQUE}},
    **dict.fromkeys("minReadySeconds revisionHistoryLimit paused progressDeadlineSeconds".split(), OPAQUE),
}


_OBJECT_REFERENCE: dict[str, Tree] = dict.fromkeys(
    "kind namespace name uid apiVersion resourceVersion fieldPath".split(), OPAQUE
)

# v1 Event: its fields sit at the top level, beside metadata (no spec, no status).
EVENT: dict[str, Tree] = {
    "apiVersion": OPAQUE,
    "kind": OPAQUE,
    "metadata": METADATA,
    "involvedObject": _OBJECT_REFERENCE,
    "related": _OBJECT_REFERENCE,
    "source": {"component": OPAQUE, "host": OPAQUE},
    "series": {"count": OPAQUE, "lastObservedTime": OPAQUE},
    **dict.fromkeys(
        "type reason message count firstTimestamp lastTimestamp eventTime action reportingComponent "
        "reportingInstance".split(),
        OPAQUE,
    ),
}


def _document(spec: Tree, **extra: Tree) -> dict[str, Tree]:
    return {
        "apiVersion": OPAQUE,
        "kind": OPAQUE,
        "metadata": METADATA,
        "spec": spec,
        "status": OPAQUE,
        **extra,
    }


# kind -> the document's tree. Kinds missing here get _TOP_LEVEL (spec and status not walked).
FIELDS: dict[str, dict[str, Tree]] = {
    "Namespace": _document({"finalizers": OPAQUE}),
    "ServiceAccount": {
        "apiVersion": OPAQUE,
        "kind": OPAQUE,
        "metadata": METADATA,
        "secrets": OPAQUE,
        "imagePullSecrets": OPAQUE,
        "automountServiceAccountToken": OPAQUE,
    },
    "Pod": _document(POD_SPEC),
    "Service": _document(SERVICE_SPEC),
    "AuthorizationPolicy": _document(AUTHORIZATION_POLICY_SPEC),
    "Gateway": _document(GATEWAY_SPEC),
    "Deployment": _document(DEPLOYMENT_SPEC),
    "Event": EVENT,
}
_TOP_LEVEL = _document(OPAQUE)


def unknown_fields(kind: str, doc: Mapping[str, Any]) -> list[str]:
    """Every field of ``doc`` its kind does not define, as kubectl names them (``spec.containers[0].imagee``),
    each followed by a close known name when there is one (``spec.selectr (did you mean "selector"?)``)."""
    found: list[str] = []
    _walk(FIELDS.get(kind, _TOP_LEVEL), doc, "", found)
    return found


def strict_decoding_error(unknown: list[str]) -> str:
    """kubectl's wording for ``unknown_fields``' result."""
    return "strict decoding error: " + ", ".join(f"unknown field {u}" for u in unknown)


def _walk(tree: Tree, value: Any, path: str, found: list[str]) -> None:
    if tree is OPAQUE:
        return
    if isinstance(tree, list):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(tree[0], item, f"{path}[{i}]", found)
        return
    if not isinstance(value, Mapping):
        return  # a type error: schema's typed decoding names it
    for key, item in value.items():
        here = f"{path}.{key}" if path else str(key)
        if key not in tree:
            close = difflib.get_close_matches(str(key), list(tree), n=1, cutoff=0.75)
            found.append(f'"{here}"' + (f' (did you mean "{close[0]}"?)' if close else ""))
            continue
        _walk(tree[key], item, here, found)


# --- metadata rules ---------------------------------------------------------------------------------------


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label or annotation key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"{key!r}: the prefix before '/' must not be empty"
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return (
            f"{key!r}: the prefix must be a DNS subdomain (lower-case letters, digits, '-' and '.', "
            "at most 253 characters)"
        )
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return (
            f"{key!r}: the name part must be 1-63 characters of letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty is valid), or None."""
    if value and (len(value) > 63 or not _NAME_PART.match(value)):
        return (
            f"{value!r} is not a valid label value: at most 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (or empty)"
        )
    return None


def label_map_problem(labels: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(key, reason)`` for the first invalid label (key or value) of a label map or selector."""
    for key, value in labels.items():
        problem = qualified_name_problem(str(key))
        if problem is None and isinstance(value, str):
            problem = label_value_problem(value)
        if problem is not None:
            return str(key), problem
    return None


def dns1035_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS-1035 label (what Kubernetes requires of Service names), or None."""
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        return (
            f"{name!r} is not a valid Service name: use at most 63 lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit (RFC 1035 label)"
        )
    return None
