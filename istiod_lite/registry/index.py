"""The registry snapshot: every cluster resource -> Istio's workloads, services and policies (pure).

``compute`` is a full recompute from all resources (about 0.3 s for 10,000 pods and 1,000 services;
``bench/registry_compute.py``) and the reference ``incremental.update`` is tested against; ``diff`` gives
the push layer only what changed. Both share ``build_pod``, so one pod converts the same either way. Lookups avoid O(pods x services): Services and selector policies are indexed per
namespace by one label pair of their selector, so a pod only checks the selectors that share a label
with it. Selector policies in the root namespace apply to matching pods of every namespace.
Waypoints (``registry.waypoints``): Gateways of class ``istio-waypoint`` are read first; each pod's
Workload gets its waypoint from ``bind_workload``, and each Service from ``bind_service`` once the
service accounts of its endpoints are known. ``waypoints`` and ``waypoint_bindings`` are the debug view.

Invariants: a snapshot is immutable (read-only mappings) and can be shared between threads and pushes;
one bad resource is skipped or replaced by a fail-closed stand-in and reported in ``problems``, never
aborting the others. ``compute`` does no I/O and no logging: the caller logs and counts problems.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

import msgspec

from istiod_lite.registry.errors import InvalidPod, Problem, RegistryError
from istiod_lite.registry.l7policies import compile_l7_policy
from istiod_lite.registry.policies import PolicyInfo, convert_policy
from istiod_lite.registry.services import ServiceInfo, build_service
from istiod_lite.registry.waypoints import (
    UNBOUND,
    Binding,
    SimpleWaypointTable,
    Source,
    Waypoint,
    WaypointTable,
    bind_service,
    bind_workload,
    binding_problem,
    gateway_problems,
    namespace_problem,
    waypoint_from_gateway,
)
from istiod_lite.registry.workloads import build_workload, is_active, pod_service_account
from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.model import Authorization, Scope, Service, Workload
from meshcore.model.l7 import L7Authorization
from meshcore.store.resource import Resource, ResourceRef

WORKLOAD = "workload"
SERVICE = "service"
AUTHORIZATION = "authorization"

_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")

_T = TypeVar("_T")
Value = Workload | Service | Authorization


class InvalidSettings(ValueError):
    """A registry setting (trust domain, cluster id...) that cannot work; fix the istiod_lite config."""


class SelectorIndex(Generic[_T]):
    """Items carrying a label selector, found by the labels they select.

    Each non-empty selector is filed under one of its (key, value) pairs, so ``matching`` only tests the
    selectors sharing a label with the object. An empty selector selects everything.
    """

    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, str], list[tuple[Mapping[str, str], _T]]] = defaultdict(list)
        self._select_all: list[_T] = []

    def add(self, selector: Mapping[str, str], item: _T) -> None:
        if not selector:
            self._select_all.append(item)
            return
        self._by_pair[next(iter(selector.items()))].append((selector, item))

    def matching(self, labels: Mapping[str, str]) -> list[_T]:
        found = list(self._select_all)
        for pair in labels.items():
            for selector, item in self._by_pair.get(pair, ()):
                if all(labels.get(k) == v for k, v in selector.items()):
                    found.append(item)
        return found


@dataclass(frozen=True, slots=True)
class ScheduledPod:
    """Where a pod runs and as whom: what the CA needs to authorize a node's certificate requests."""

    namespace: str
    name: str
    uid: str  # the Kubernetes object uid ("" when the store has none)
    node: str  # "" until scheduled
    identity: SpiffeId


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """One consistent view of the mesh. Mappings are read-only; keys are the xDS resource names."""

    workloads: Mapping[str, Workload] = field(default_factory=lambda: MappingProxyType({}))
    services: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))
    policies: Mapping[str, Authorization] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[Problem, ...] = ()
    # (namespace, name) -> every active pod, in the mesh or not, with or without an IP.
    pods: Mapping[tuple[str, str], ScheduledPod] = field(default_factory=lambda: MappingProxyType({}))
    identities_by_node: Mapping[str, frozenset[SpiffeId]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    # "ns/name" -> every Gateway of class istio-waypoint (refused ones too, with the reason).
    waypoints: Mapping[str, Waypoint] = field(default_factory=lambda: MappingProxyType({}))
    # xDS name (workload uid, service key) -> its waypoint decision, for every workload and Service
    # for which something asked for a waypoint (bound or not, with the reason): the debug view.
    waypoint_bindings: Mapping[str, Binding] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # "ns/name" -> the waypoints' L7 policies (AuthorizationPolicies with targetRefs), for waypoints.
    l7_policies: Mapping[str, L7Authorization] = field(default_factory=lambda: MappingProxyType({}))

    def identities_on_node(self, node: str) -> frozenset[SpiffeId]:
        """Identities of the active pods scheduled on ``node``, in the mesh or not.

        As Istio's node authorizer does, mesh membership is not required: the ztunnel on a node may ask
        for any identity a pod there runs as. Succeeded/Failed pods are not counted.
        """
        if not node:
            return frozenset()
        return self.identities_by_node.get(node, frozenset())

    def find_pod(self, namespace: str, name: str) -> ScheduledPod | None:
        return self.pods.get((namespace, name))


def compute(
    resources: Iterable[Resource],
    *,
    trust_domain: str = "cluster.local",
    cluster_id: str = "Kubernetes",
    network: str = "",
    root_namespace: str = "istio-system",
    domain_suffix: str = "cluster.local",
) -> RegistrySnapshot:
    """Build the snapshot from all resources; kinds the registry does not use are ignored.

    Raises ``InvalidSettings`` only for bad settings; bad resources end up in ``problems``.
    """
    check_settings(trust_domain, cluster_id)

    namespace_labels: dict[str, Mapping[str, str]] = {}
    pods: list[Resource] = []
    service_resources: list[Resource] = []
    policy_resources: list[Resource] = []
    gateways: list[tuple[Resource, Waypoint]] = []
    for r in resources:
        if r.kind == "Pod":
            pods.append(r)
        elif r.kind == "Service":
            service_resources.append(r)
        elif r.kind == "AuthorizationPolicy":
            policy_resources.append(r)
        elif r.kind == "Namespace":
            namespace_labels[r.name] = r.labels
        elif r.kind == "Gateway":
            wp = waypoint_from_gateway(r, network=network, domain_suffix=domain_suffix)
            if wp is not None:
                gateways.append((r, wp))
    problems: list[Problem] = []
    waypoints = SimpleWaypointTable(wp for _, wp in gateways)
    by_namespace: dict[str, dict[str, Waypoint]] = defaultdict(dict)
    for r, wp in gateways:
        by_namespace[r.namespace][r.name] = wp
    for namespace, named in by_namespace.items():
        refs = {name: ResourceRef("Gateway", namespace, name) for name in named}
        for found in gateway_problems(refs, named).values():
            problems.extend(found)
    for name, labels in namespace_labels.items():
        ns_problem = namespace_problem(ResourceRef("Namespace", "", name), labels, waypoints)
        if ns_problem is not None:
            problems.append(ns_problem)

    services: dict[str, Service] = {}
    service_infos: list[ServiceInfo] = []
    service_index: dict[str, SelectorIndex[ServiceInfo]] = defaultdict(SelectorIndex)
    for r in service_resources:
        try:
            info = build_service(
                r,
                network=network,
                domain_suffix=domain_suffix,
                namespace_labels=namespace_labels.get(r.namespace),
            )
        except RegistryError as e:
            problems.append(e.to_problem())
            continue
        services[info.service.key] = info.service
        service_infos.append(info)
        if info.selector:  # a Service without a selector has manually managed endpoints: none here
            service_index[r.namespace].add(info.selector, info)

    policies: dict[str, Authorization] = {}
    l7_policies: dict[str, L7Authorization] = {}
    policy_index: dict[str, SelectorIndex[str]] = defaultdict(SelectorIndex)
    for r in policy_resources:
        compiled = compile_l7_policy(r, cluster_domain=domain_suffix)
        problems.extend(compiled.problems)
        if compiled.authorization is not None:
            l7_policies[compiled.authorization.key] = compiled.authorization
        converted, found = convert_policy(r, root_namespace=root_namespace)
        problems.extend(found)
        if converted is None:
            continue
        _add_policy(converted, policies, policy_index)
    root_policies = policy_index.get(root_namespace)

    workloads: dict[str, Workload] = {}
    bindings: dict[str, Binding] = {}
    scheduled: dict[tuple[str, str], ScheduledPod] = {}
    by_node: dict[str, set[SpiffeId]] = defaultdict(set)
    for pod in pods:
        entry = build_pod(
            pod,
            namespace_labels=namespace_labels.get(pod.namespace, {}),
            services=service_index.get(pod.namespace),
            policies=policy_index.get(pod.namespace),
            root_policies=root_policies if pod.namespace != root_namespace else None,
            trust_domain=trust_domain,
            cluster_id=cluster_id,
            network=network,
            waypoints=waypoints,
        )
        problems.extend(entry.problems)
        if entry.scheduled is not None:
            scheduled[(pod.namespace, pod.name)] = entry.scheduled
            if entry.scheduled.node:
                by_node[entry.scheduled.node].add(entry.scheduled.identity)
        if entry.workload is not None:
            workloads[entry.workload.uid] = entry.workload
            if entry.binding.source != Source.NONE:
                bindings[entry.workload.uid] = entry.binding

    accounts: dict[str, set[str]] = defaultdict(set)  # service key -> accounts its endpoints run as
    for wl in workloads.values():
        for key in wl.services:
            accounts[key].add(wl.service_account)
    for info in service_infos:
        service, binding, found_problem = bind_service_info(
            info, namespace_labels.get(info.service.namespace, {}), accounts.get(info.service.key, ()), waypoints
        )
        services[info.service.key] = service
        if binding.source != Source.NONE:
            bindings[info.service.key] = binding
        if found_problem is not None:
            problems.append(found_problem)

    return RegistrySnapshot(
        workloads=MappingProxyType(workloads),
        services=MappingProxyType(services),
        policies=MappingProxyType(policies),
        problems=tuple(problems),
        pods=MappingProxyType(scheduled),
        identities_by_node=MappingProxyType({n: frozenset(ids) for n, ids in by_node.items()}),
        waypoints=MappingProxyType({wp.key: wp for _, wp in gateways}),
        waypoint_bindings=MappingProxyType(bindings),
        l7_policies=MappingProxyType(l7_policies),
    )


def check_settings(trust_domain: str, cluster_id: str) -> None:
    """Raise ``InvalidSettings`` for a trust domain or cluster id that cannot name workloads."""
    if not _TRUST_DOMAIN_RE.match(trust_domain):
        raise InvalidSettings(f"trust domain {trust_domain!r} must be a lower-case DNS name")
    if not cluster_id or "/" in cluster_id:
        raise InvalidSettings(f"cluster id {cluster_id!r} must be non-empty and contain no '/'")


@dataclass(frozen=True, slots=True)
class PodEntry:
    """What one pod contributes: where it runs (None if inactive or nameless), its Workload, problems,
    and its waypoint decision (``UNBOUND`` when it has no Workload)."""

    scheduled: ScheduledPod | None
    workload: Workload | None
    problems: tuple[Problem, ...]
    binding: Binding = UNBOUND


_NO_POD = PodEntry(None, None, ())


def build_pod(
    pod: Resource,
    *,
    namespace_labels: Mapping[str, str],
    services: SelectorIndex[ServiceInfo] | None,
    policies: SelectorIndex[str] | None,
    root_policies: SelectorIndex[str] | None,
    trust_domain: str,
    cluster_id: str,
    network: str,
    waypoints: WaypointTable,
) -> PodEntry:
    """One pod against its namespace's Service and policy indexes (``root_policies``: the root
    namespace's selector policies, None for pods of the root namespace itself) and the known waypoints.
    Never raises for bad input.
    """
    if not is_active(pod):
        return _NO_POD
    try:
        identity = SpiffeId(trust_domain, pod.namespace, pod_service_account(pod))
    except (InvalidPod, InvalidSpiffeId) as e:
        return PodEntry(None, None, (InvalidPod(pod.ref, f"cannot form the pod's identity: {e}").to_problem(),))
    node = pod.spec.get("nodeName") or ""
    node = node if isinstance(node, str) else ""
    scheduled = ScheduledPod(pod.namespace, pod.name, pod.uid, node, identity)

    keys = policies.matching(pod.labels) if policies is not None else []
    if root_policies is not None:
        keys += root_policies.matching(pod.labels)
    binding = bind_workload(
        namespace=pod.namespace,
        labels=pod.labels,
        service_account=identity.service_account,
        namespace_labels=namespace_labels,
        waypoints=waypoints,
    )
    try:
        workload, found = build_workload(
            pod,
            namespace_labels=namespace_labels,
            services=services.matching(pod.labels) if services is not None else (),
            policy_keys=sorted(keys),
            trust_domain=trust_domain,
            cluster_id=cluster_id,
            network=network,
            waypoint=binding.waypoint,
        )
    except RegistryError as e:
        return PodEntry(scheduled, None, (e.to_problem(),))
    if workload is None:
        return PodEntry(scheduled, None, tuple(found))
    label_problem = binding_problem(pod.ref, binding)
    if label_problem is not None:
        found.append(label_problem)
    return PodEntry(scheduled, workload, tuple(found), binding)


def bind_service_info(
    info: ServiceInfo,
    namespace_labels: Mapping[str, str],
    service_accounts: Iterable[str],
    waypoints: WaypointTable,
) -> tuple[Service, Binding, Problem | None]:
    """A converted Service with its waypoint bound, the decision, and the problem of its own label."""
    service = info.service
    binding = bind_service(
        namespace=service.namespace,
        request=info.waypoint_request,
        namespace_labels=namespace_labels,
        service_accounts=frozenset(service_accounts),
        waypoints=waypoints,
    )
    if binding.waypoint != service.waypoint:
        service = msgspec.structs.replace(service, waypoint=binding.waypoint)
    return service, binding, binding_problem(ResourceRef("Service", service.namespace, service.name), binding)


def _add_policy(
    info: PolicyInfo, policies: dict[str, Authorization], index: dict[str, SelectorIndex[str]]
) -> None:
    auth = info.authorization
    policies[auth.key] = auth
    if auth.scope == Scope.WORKLOAD_SELECTOR and info.selector is not None:
        index[auth.namespace].add(info.selector, auth.key)


def diff(
    old: RegistrySnapshot, new: RegistrySnapshot
) -> tuple[dict[str, dict[str, Value]], dict[str, set[str]]]:
    """What the push layer must send: (changed or added by type, removed names by type).

    Types are ``"workload"``, ``"service"`` and ``"authorization"``; every type key is present.
    """
    changed: dict[str, dict[str, Value]] = {}
    removed: dict[str, set[str]] = {}
    pairs: tuple[tuple[str, Mapping[str, Value], Mapping[str, Value]], ...] = (
        (WORKLOAD, old.workloads, new.workloads),
        (SERVICE, old.services, new.services),
        (AUTHORIZATION, old.policies, new.policies),
    )
    for kind, before, after in pairs:
        changed[kind] = {name: value for name, value in after.items() if before.get(name) != value}
        removed[kind] = {name for name in before if name not in after}
    return changed, removed


def diff_l7(
    old: RegistrySnapshot, new: RegistrySnapshot
) -> tuple[dict[str, L7Authorization], set[str]]:
    """The waypoints' L7 policies to push: (changed or added by name, removed names)."""
    before, after = old.l7_policies, new.l7_policies
    return (
        {name: value for name, value in after.items() if before.get(name) != value},
        {name for name in before if name not in after},
    )
