"""Validation of one Kubernetes-shaped document into a ``Resource``.

One msgspec Struct per kind describes the fields the mesh reads; ``msgspec.convert`` type-checks them and
names the failing field (``$.spec.ports[0].port``). First, strict decoding as the API server does it: a
field the kind does not define is refused (``fields.unknown_fields``: ``strict decoding error: unknown
field "spec.selectr"``), so a typo never weakens an object. Fields the kind defines but the mesh does not
model are kept: the stored ``spec``/``status`` are the document's own dicts (normalised through JSON),
never the Structs. Names, namespaces, label keys/values and annotation keys are checked as Kubernetes
checks them (DNS-1123/1035, qualified names, lengths); a Service needs ports unless headless or
ExternalName. The only defaulting is what the Kubernetes API server itself does and the mesh relies
on: ``metadata.namespace`` -> ``default`` for namespaced kinds and ``spec.serviceAccountName`` ->
``default`` for pods.

Readers of stored resources (the registry, the CLI) get typed views with ``spec_as``/``status_as``.
Every failure is an ``InvalidResource`` naming source, document, kind/name and field. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .errors import InvalidResource
from .fields import (
    dns1035_problem,
    label_map_problem,
    qualified_name_problem,
    strict_decoding_error,
    unknown_fields,
)
from .limits import ANNOTATIONS_HINT, MAX_ANNOTATIONS_BYTES, annotations_over_limit
from .resource import KINDS, TOP_LEVEL_KINDS, OwnerReference, Resource
from .traffic_schema import (
    DestinationRuleSpec,
    GRPCRouteSpec,
    HTTPLocalRateLimitPolicySpec,
    HTTPRouteSpec,
    VirtualServiceSpec,
    destination_rule_problem,
    http_route_problem,
    virtual_service_problem,
)

# Accepted apiVersions per API group ("" is the core group). Versions Istio and Gateway API still serve.
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "": ("v1",),
    "security.istio.io": ("v1", "v1beta1"),
    "gateway.networking.k8s.io": ("v1", "v1beta1"),
    "networking.istio.io": ("v1", "v1beta1", "v1alpha3"),
    "policy.ambientmesh.io": ("v1alpha1",),
    "apps": ("v1",),
}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Kinds whose names must be DNS-1123 labels (they become DNS labels: <svc>.<ns>.svc.cluster.local).
_LABEL_NAMED_KINDS = frozenset({"Namespace", "Service"})

PortNumber = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP", "SCTP"]


class _K8s(msgspec.Struct, rename="camel", frozen=True):
    """Kubernetes field naming (camelCase); unknown fields are ignored here and kept in the raw dict."""


# --- metadata -----------------------------------------------------------------------------------------


class ObjectMeta(_K8s, frozen=True):
    name: str
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None


# --- Pod ------------------------------------------------------------------------------------------------


class ContainerPort(_K8s, frozen=True):
    container_port: PortNumber
    name: str | None = None
    protocol: Protocol = "TCP"


class Container(_K8s, frozen=True):
    name: str
    image: str | None = None
    ports: list[ContainerPort] | None = None


class PodSpec(_K8s, frozen=True):
    node_name: str | None = None
    service_account_name: str = "default"
    containers: list[Container] | None = None
    # Host-network pods share the node's netns: ambient cannot capture them.
    host_network: bool = False
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"


class PodCondition(_K8s, frozen=True):
    type: str
    status: Literal["True", "False", "Unknown"]


class PodIP(_K8s, frozen=True):
    ip: str


class PodStatus(_K8s, frozen=True):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    pod_ip: str | None = msgspec.field(name="podIP", default=None)
    pod_ips: list[PodIP] | None = msgspec.field(name="podIPs", default=None)
    host_ip: str | None = msgspec.field(name="hostIP", default=None)
    conditions: list[PodCondition] | None = None

    @property
    def ready(self) -> bool:
        """The pod's ``Ready`` condition is ``True``."""
        return any(c.type == "Ready" and c.status == "True" for c in self.conditions or ())


# --- Service --------------------------------------------------------------------------------------------


class ServicePort(_K8s, frozen=True):
    port: PortNumber
    name: str | None = None
    # A number, or the name of a container port on the selected pods.
    target_port: int | str | None = None
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class ServiceSpec(_K8s, frozen=True):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] | None = None
    # "None" makes a headless service (no VIP); absent means "not allocated".
    cluster_ip: str | None = msgspec.field(name="clusterIP", default=None)
    cluster_ips: list[str] | None = msgspec.field(name="clusterIPs", default=None)
    type: str = "ClusterIP"


# --- AuthorizationPolicy (security.istio.io) ---------------------------------------------------------


class Source(_K8s, frozen=True):
    principals: list[str] | None = None
    not_principals: list[str] | None = None
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    service_accounts: list[str] | None = None
    not_service_accounts: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None


class Operation(_K8s, frozen=True):
    # Istio's CRD types ports as strings ("8080"); numbers are refused as Istio refuses them.
    ports: list[str] | None = None
    not_ports: list[str] | None = None
    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None


class RuleFrom(_K8s, frozen=True):
    source: Source


class RuleTo(_K8s, frozen=True):
    operation: Operation


class Condition(_K8s, frozen=True):
    key: str
    values: list[str] | None = None
    not_values: list[str] | None = None


class Rule(_K8s, frozen=True):
    from_: list[RuleFrom] | None = msgspec.field(name="from", default=None)
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class WorkloadSelector(_K8s, frozen=True):
    match_labels: dict[str, str] | None = None


class PolicyTargetReference(_K8s, frozen=True):
    kind: str
    name: str
    group: str = ""
    namespace: str | None = None


class AuthorizationPolicySpec(_K8s, frozen=True):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: dict[str, Any] | None = None
    rules: list[Rule] | None = None


# --- Gateway API ----------------------------------------------------------------------------------------


class Listener(_K8s, frozen=True):
    name: str
    port: PortNumber
    protocol: str
    hostname: str | None = None
    allowed_routes: dict[str, Any] | None = None


class GatewaySpec(_K8s, frozen=True):
    gateway_class_name: str
    listeners: list[Listener] | None = None
    addresses: list[dict[str, Any]] | None = None


class ParentReference(_K8s, frozen=True):
    name: str
    group: str | None = None
    kind: str | None = None
    namespace: str | None = None
    section_name: str | None = None
    port: PortNumber | None = None


# HTTPRoute, GRPCRoute, VirtualService, DestinationRule, HTTPLocalRateLimitPolicy: strict, in traffic_schema.


# --- whole documents ------------------------------------------------------------------------------------


class _Document(_K8s, frozen=True):
    api_version: str
    kind: str
    metadata: ObjectMeta


class _PlainDocument(_Document, frozen=True):
    spec: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


class _PodDocument(_Document, frozen=True):
    spec: PodSpec | None = None
    status: PodStatus | None = None


class _ServiceDocument(_Document, frozen=True):
    spec: ServiceSpec | None = None
    status: dict[str, Any] | None = None


class _AuthorizationPolicyDocument(_Document, frozen=True):
    spec: AuthorizationPolicySpec | None = None
    status: dict[str, Any] | None = None


class _GatewayDocument(_Document, frozen=True):
    spec: GatewaySpec
    status: dict[str, Any] | None = None


class _HTTPRouteDocument(_Document, frozen=True):
    spec: HTTPRouteSpec | None = None
    status: dict[str, Any] | None = None


class _GRPCRouteDocument(_Document, frozen=True):
    spec: GRPCRouteSpec | None = None
    status: dict[str, Any] | None = None


class _VirtualServiceDocument(_Document, frozen=True):
    spec: VirtualServiceSpec | None = None
    status: dict[str, Any] | None = None


class _DestinationRuleDocument(_Document, frozen=True):
    spec: DestinationRuleSpec
    status: dict[str, Any] | None = None


class _RateLimitDocument(_Document, frozen=True):
    spec: HTTPLocalRateLimitPolicySpec
    status: dict[str, Any] | None = None


# --- Deployment (apps/v1) --------------------------------------------------------------------------------


class LabelSelectorRequirement(_K8s, frozen=True):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(_K8s, frozen=True):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class TemplateMeta(_K8s, frozen=True):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PodTemplate(_K8s, frozen=True):
    metadata: TemplateMeta | None = None
    spec: PodSpec | None = None


IntOrPercent = int | str


class RollingUpdate(_K8s, frozen=True):
    max_surge: IntOrPercent = "25%"
    max_unavailable: IntOrPercent = "25%"


class DeploymentStrategy(_K8s, frozen=True):
    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    rolling_update: RollingUpdate | None = None


class DeploymentSpec(_K8s, frozen=True):
    selector: LabelSelector
    template: PodTemplate
    replicas: Annotated[int, msgspec.Meta(ge=0)] = 1
    strategy: DeploymentStrategy | None = None
    paused: bool = False


class _DeploymentDocument(_Document, frozen=True):
    spec: DeploymentSpec
    status: dict[str, Any] | None = None


# --- Event (v1) ------------------------------------------------------------------------------------------


class ObjectReference(_K8s, frozen=True):
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    api_version: str | None = None
    field_path: str | None = None


class EventSource(_K8s, frozen=True):
    component: str | None = None
    host: str | None = None


class _EventDocument(_Document, frozen=True):
    involved_object: ObjectReference
    type: Literal["Normal", "Warning"] | None = None
    reason: str | None = None
    message: str | None = None
    count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    source: EventSource | None = None
    reporting_component: str | None = None


_DOCUMENT_TYPES: dict[str, type[_Document]] = {
    "Namespace": _PlainDocument,
    "ServiceAccount": _PlainDocument,
    "Pod": _PodDocument,
    "Service": _ServiceDocument,
    "AuthorizationPolicy": _AuthorizationPolicyDocument,
    "Gateway": _GatewayDocument,
    "HTTPRoute": _HTTPRouteDocument,
    "GRPCRoute": _GRPCRouteDocument,
    "VirtualService": _VirtualServiceDocument,
    "DestinationRule": _DestinationRuleDocument,
    "HTTPLocalRateLimitPolicy": _RateLimitDocument,
    "Deployment": _DeploymentDocument,
    "Event": _EventDocument,
}


class _Problem(Exception):
    """Internal: one validation failure at ``path``; turned into ``InvalidResource`` with the context."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def build_resource(doc: object, source: str = "-", index: int = 1, *, item: int | None = None) -> Resource:
    """Validate one parsed YAML/JSON document into a ``Resource`` (``resource_version`` 0, no uid).

    ``source``/``index`` (1-based) and ``item`` (1-based position inside a ``kind: List``) only label
    errors. Raises ``InvalidResource``.
    """
    what = _describe(doc)
    if item is not None:
        what = f"List item {item}" + (f", {what}" if what else "")
    try:
        return _build(doc)
    except _Problem as p:
        raise InvalidResource(source, index, p.reason, what=what, path=p.path) from None


def _build(doc: object) -> Resource:
    if not isinstance(doc, Mapping):
        raise _Problem("$", f"expected a mapping with apiVersion, kind and metadata, got {_type_name(doc)}")
    kind = doc.get("kind")
    if kind is None:
        raise _Problem("$.kind", f"missing; set it to one of {', '.join(KINDS)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _Problem("$.kind", f"unknown kind {kind!r}: supported kinds are {', '.join(KINDS)}")
    expected_api, namespaced = KINDS[kind]

    unknown = unknown_fields(kind, doc)
    if unknown:
        raise _Problem("", strict_decoding_error(unknown))
    _check_string_map(doc, ("metadata", "labels"))
    _check_string_map(doc, ("metadata", "annotations"))
    try:
        typed = msgspec.convert(doc, _DOCUMENT_TYPES[kind])
    except msgspec.ValidationError as e:
        raise _problem_from_msgspec(e) from None

    _check_api_version(kind, typed.api_version, expected_api)
    meta = typed.metadata
    _check_name("$.metadata.name", meta.name, label=kind in _LABEL_NAMED_KINDS)
    if kind == "Service" and (problem := dns1035_problem(meta.name)):
        raise _Problem("$.metadata.name", problem)
    _check_labels("$.metadata.labels", meta.labels)
    for key in meta.annotations or {}:
        if problem := qualified_name_problem(key):
            raise _Problem("$.metadata.annotations", f"invalid key {problem}")
    over = annotations_over_limit(meta.annotations or {})
    if over is not None:
        raise _Problem(
            "$.metadata.annotations",
            f"{over} bytes in total, over the limit of {MAX_ANNOTATIONS_BYTES} bytes; {ANNOTATIONS_HINT}",
        )
    _check_owner_references(meta.owner_references or [])
    if namespaced:
        namespace = meta.namespace or "default"
        _check_name("$.metadata.namespace", namespace, label=True)
    else:
        # kubectl ignores metadata.namespace on cluster-scoped objects; so do we.
        namespace = ""
    _KIND_CHECKS.get(kind, _no_check)(typed)

    if kind in TOP_LEVEL_KINDS:
        own = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        spec, status = _normalise("$", own), {}
    else:
        spec = _normalise("$.spec", doc.get("spec"))
        status = _normalise("$.status", doc.get("status"))
    if kind == "Pod" and "serviceAccountName" not in spec:
        # The API server's defaulting: every pod runs as some service account.
        spec["serviceAccountName"] = "default"
    return Resource(
        kind=kind,
        name=meta.name,
        namespace=namespace,
        api_version=typed.api_version,
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        spec=spec,
        status=status,
        owner_references=tuple(meta.owner_references or ()),
    )


_T = TypeVar("_T", bound=msgspec.Struct)


def spec_as(resource: Resource, spec_type: type[_T]) -> _T:
    """A typed view of a stored resource's spec, e.g. ``spec_as(pod, PodSpec).service_account_name``."""
    return _view(resource, resource.spec, spec_type, "$.spec")


def status_as(resource: Resource, status_type: type[_T]) -> _T:
    """A typed view of a stored resource's status, e.g. ``status_as(pod, PodStatus).pod_ip``."""
    return _view(resource, resource.status, status_type, "$.status")


def _view(resource: Resource, value: dict[str, Any], type_: type[_T], prefix: str) -> _T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as e:
        p = _problem_from_msgspec(e)
        raise InvalidResource(
            "store", 1, p.reason, what=str(resource.ref), path=prefix + p.path.removeprefix("$")
        ) from None


# --- checks msgspec cannot express ---------------------------------------------------------------------


def _no_check(_typed: Any) -> None:
    return None


def _check_pod(typed: _PodDocument) -> None:
    if typed.spec and typed.spec.service_account_name:
        _check_name("$.spec.serviceAccountName", typed.spec.service_account_name, label=False)
    status = typed.status
    if status is None:
        return
    if status.pod_ip:
        _check_ip("$.status.podIP", status.pod_ip)
    if status.host_ip:
        _check_ip("$.status.hostIP", status.host_ip)
    for i, pip in enumerate(status.pod_ips or ()):
        _check_ip(f"$.status.podIPs[{i}].ip", pip.ip)


def _check_service(typed: _ServiceDocument) -> None:
    spec = typed.spec
    headless = spec is not None and spec.cluster_ip == "None"
    if not (spec and spec.ports) and not headless and not (spec and spec.type == "ExternalName"):
        raise _Problem(
            "$.spec.ports", "required: a Service needs at least one port (e.g. ports: [{port: 80}])"
        )
    if spec is None:
        return
    _check_labels("$.spec.selector", spec.selector)
    if spec.cluster_ip not in (None, "", "None"):
        _check_ip("$.spec.clusterIP", spec.cluster_ip or "")
    for i, ip in enumerate(spec.cluster_ips or ()):
        if ip != "None":
            _check_ip(f"$.spec.clusterIPs[{i}]", ip)
    for i, port in enumerate(spec.ports or ()):
        target = port.target_port
        path = f"$.spec.ports[{i}].targetPort"
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise _Problem(path, f"{target} is not a port number (1-65535)")
        if isinstance(target, str) and not target:
            raise _Problem(path, "empty; give a port number or the name of a container port")
    if len(spec.ports or ()) > 1 and any(not p.name for p in spec.ports or ()):
        raise _Problem("$.spec.ports", "every port needs a name when a service has more than one port")


def _check_authorization_policy(typed: _AuthorizationPolicyDocument) -> None:
    spec = typed.spec
    if spec is None:
        return
    if spec.selector is not None and (spec.target_ref is not None or spec.target_refs):
        raise _Problem("$.spec", "set either selector or targetRef/targetRefs, not both")
    if spec.selector is not None:
        _check_labels("$.spec.selector.matchLabels", spec.selector.match_labels)
    if spec.action == "CUSTOM" and not spec.provider:
        raise _Problem("$.spec.provider", "required when action is CUSTOM")
    for r, rule in enumerate(spec.rules or ()):
        for f, frm in enumerate(rule.from_ or ()):
            src = frm.source
            for field in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
                for b, block in enumerate(getattr(src, field) or ()):
                    _check_cidr(f"$.spec.rules[{r}].from[{f}].source.{_camel(field)}[{b}]", block)
        for t, to in enumerate(rule.to or ()):
            op = to.operation
            for field in ("ports", "not_ports"):
                for p, port in enumerate(getattr(op, field) or ()):
                    if not (port.isdigit() and 1 <= int(port) <= 65535):
                        raise _Problem(
                            f"$.spec.rules[{r}].to[{t}].operation.{_camel(field)}[{p}]",
                            f"{port!r} is not a port number (1-65535)",
                        )
        for w, cond in enumerate(rule.when or ()):
            if not cond.values and not cond.not_values:
                raise _Problem(f"$.spec.rules[{r}].when[{w}]", "needs values or notValues")


def _spec_check(check: Callable[[Any], tuple[str, str] | None]) -> Callable[[Any], None]:
    def run(typed: Any) -> None:
        problem = check(typed.spec)
        if problem is not None:
            raise _Problem(*problem)

    return run


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a label selector (matchLabels and matchExpressions, all of them)."""
    if any(labels.get(k) != v for k, v in (selector.match_labels or {}).items()):
        return False
    for req in selector.match_expressions or ():
        present = req.key in labels
        if req.operator == "In" and labels.get(req.key) not in (req.values or ()):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in (req.values or ()):
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def _check_deployment(typed: _DeploymentDocument) -> None:
    spec = typed.spec
    selector = spec.selector
    if not selector.match_labels and not selector.match_expressions:
        raise _Problem("$.spec.selector", "empty: a Deployment selects its pods by labels (matchLabels)")
    _check_labels("$.spec.selector.matchLabels", selector.match_labels)
    for i, req in enumerate(selector.match_expressions or ()):
        if req.operator in ("In", "NotIn") and not req.values:
            raise _Problem(
                f"$.spec.selector.matchExpressions[{i}].values", f"required for operator {req.operator}"
            )
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            raise _Problem(
                f"$.spec.selector.matchExpressions[{i}].values", f"must be empty for {req.operator}"
            )
    labels = (spec.template.metadata.labels if spec.template.metadata else None) or {}
    _check_labels("$.spec.template.metadata.labels", labels)
    if not selector_matches(selector, labels):
        raise _Problem(
            "$.spec.template.metadata.labels",
            "`selector` does not match template `labels`: give the template every label the selector names",
        )
    rolling = spec.strategy.rolling_update if spec.strategy else None
    if rolling is not None:
        for field, value in (("maxSurge", rolling.max_surge), ("maxUnavailable", rolling.max_unavailable)):
            if isinstance(value, str) and not re.fullmatch(r"\d+%", value):
                raise _Problem(
                    f"$.spec.strategy.rollingUpdate.{field}", f"{value!r}: give a number or a percentage"
                )
            if isinstance(value, int) and value < 0:
                raise _Problem(f"$.spec.strategy.rollingUpdate.{field}", "must not be negative")
        if rolling.max_surge in (0, "0%") and rolling.max_unavailable in (0, "0%"):
            raise _Problem("$.spec.strategy.rollingUpdate", "maxSurge and maxUnavailable may not both be 0")
    if spec.template.spec is None or not spec.template.spec.containers:
        raise _Problem("$.spec.template.spec.containers", "required: a pod template needs a container")
    if spec.template.spec.restart_policy != "Always":
        raise _Problem(
            "$.spec.template.spec.restartPolicy", "a Deployment's pods must use restartPolicy Always"
        )


_KIND_CHECKS: dict[str, Callable[[Any], None]] = {
    "Pod": _check_pod,
    "Service": _check_service,
    "AuthorizationPolicy": _check_authorization_policy,
    "Deployment": _check_deployment,
    "HTTPRoute": _spec_check(http_route_problem),
    "VirtualService": _spec_check(virtual_service_problem),
    "DestinationRule": _spec_check(destination_rule_problem),
}


def _check_api_version(kind: str, api_version: str, expected: str) -> None:
    group, _, version = api_version.rpartition("/")
    expected_group = expected.rpartition("/")[0]
    if group != expected_group or version not in API_VERSIONS.get(group, ()):
        raise _Problem("$.apiVersion", f"{api_version!r} is not served for {kind}; use {expected!r}")


def name_problem(name: str, *, label: bool) -> str | None:
    """Why ``name`` is not a valid object name (``label``: a DNS-1123 label, else subdomain), or None."""
    if label:
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            return (
                f"{name!r} is not a valid name: use at most 63 lower-case letters, digits and '-', "
                "starting and ending with a letter or digit (RFC 1123 label)"
            )
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return (
            f"{name!r} is not a valid name: use at most 253 lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (RFC 1123 subdomain)"
        )
    return None


def _check_name(path: str, name: str, *, label: bool) -> None:
    problem = name_problem(name, label=label)
    if problem:
        raise _Problem(path, problem)


def _check_owner_references(refs: list[OwnerReference]) -> None:
    """The API server's rules: apiVersion, kind, name and uid set; at most one controller."""
    for i, ref in enumerate(refs):
        for field in ("api_version", "kind", "name", "uid"):
            if not getattr(ref, field):
                raise _Problem(
                    f"$.metadata.ownerReferences[{i}].{_camel(field)}",
                    "must not be empty (an owner reference names its owner by apiVersion, kind, name and uid)",
                )
    controllers = [f"{r.kind}/{r.name}" for r in refs if r.controller]
    if len(controllers) > 1:
        raise _Problem(
            "$.metadata.ownerReferences",
            f"only one reference can have controller set to true, found it on {', '.join(controllers)}",
        )


def _check_labels(path: str, labels: Mapping[str, str] | None) -> None:
    bad = label_map_problem(labels or {})
    if bad is not None:
        raise _Problem(f"{path}.{bad[0]}", f"invalid label {bad[1]}")


def _check_ip(path: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _Problem(path, f"{value!r} is not an IP address") from None


def _check_cidr(path: str, value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Problem(path, f"{value!r} is not an IP address or CIDR block") from None


def _check_string_map(doc: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Label/annotation values must be strings; say which key, since msgspec only says ``[...]``."""
    value: Any = doc
    for key in keys:
        if not isinstance(value, Mapping):
            return
        value = value.get(key)
    if not isinstance(value, Mapping):
        return
    path = "$." + ".".join(keys)
    for k, v in value.items():
        if not isinstance(k, str):
            raise _Problem(path, f"key {k!r} must be a string")
        if not isinstance(v, str):
            hint = f' (quote it: "{_yaml_scalar(v)}")' if isinstance(v, bool | int | float) else ""
            raise _Problem(f"{path}.{k}", f"expected a string, got {_type_name(v)}{hint}")


def _normalise(path: str, value: object) -> dict[str, Any]:
    """A JSON-clean copy (dates and numbers-as-keys become strings), so a stored value reads back equal."""
    if value is None:
        return {}
    try:
        out = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as e:
        raise _Problem(path, f"cannot be represented as JSON: {e}") from None
    if not isinstance(out, dict):  # unreachable after the Struct check, kept as a guard
        raise _Problem(path, f"expected a mapping, got {_type_name(value)}")
    return out


def _problem_from_msgspec(e: msgspec.ValidationError) -> _Problem:
    # msgspec says "Expected `int`, got `str` - at `$.spec.ports[0].port`" (or "... - at `key` in `$.x`").
    message = str(e)
    reason, sep, where = message.partition(" - at ")
    reason = reason.replace("`", "")
    if not sep:
        return _Problem("$", reason)
    if where.startswith("`key` in "):
        return _Problem(where.removeprefix("`key` in ").strip("`"), f"a key: {reason}")
    return _Problem(where.strip("`"), reason)


def _describe(doc: object) -> str:
    """``Kind ns/name`` from a raw document, as far as it can be read (for error messages)."""
    if not isinstance(doc, Mapping):
        return ""
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(kind, str) or not isinstance(name, str):
        return kind if isinstance(kind, str) else ""
    namespaced = KINDS.get(kind, ("", True))[1]
    if not namespaced:
        return f"{kind} {name}"
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"{kind} {ns if isinstance(ns, str) and ns else 'default'}/{name}"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _yaml_scalar(value: bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
