"""Incremental registry updates: a batch of changed and deleted resources -> the next snapshot (pure).

``update(state, changed, deleted)`` recomputes only what the batch can affect and returns the new state
with exactly what ``diff`` would report between the two snapshots, at a cost that follows the size of the
change, not of the cluster (one pod on 10,000: well under a millisecond; ``compute`` takes ~0.3 s):

- a Pod -> that pod's Workload, its ``ScheduledPod`` and its node's identities;
- a Service -> that Service, and the pods of its namespace its old or new selector matches (only when the
  selector, ports or key changed: a new VIP alone touches no Workload);
- a Namespace whose labels changed -> its pods and Services;
- an AuthorizationPolicy -> that policy, and the pods its old or new selector matches when which pods it
  selects changed (every namespace for a root-namespace policy); a rules-only edit touches no Workload;
- a waypoint Gateway whose waypoint changed (address, traffic type, service account...; not its status
  conditions) -> the pods of its namespace, the pods that name its namespace in
  ``istio.io/use-waypoint-namespace`` (or whose namespace does), and the waypoint binding of every Service
  (a cheap lookup each); a Gateway of another class touches nothing;
- a pod whose Workload joins or leaves a Service, or changes service account -> that Service's waypoint
  binding when the set of accounts its endpoints run as changed (per-service-account waypoints).

Invariants: the result always equals a full ``compute`` of the same resources (property-tested); a state
is never mutated once returned (copy-on-write per table and per namespace), so old snapshots stay valid
for readers; problems are kept per source resource and replaced when that resource is recomputed.
No I/O, no logging, no clock: the caller logs ``fresh_problems`` and pushes the returned changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from istiod_lite.registry.errors import Problem, RegistryError, Severity
from istiod_lite.registry.index import (
    AUTHORIZATION,
    SERVICE,
    WORKLOAD,
    PodEntry,
    RegistrySnapshot,
    ScheduledPod,
    SelectorIndex,
    Value,
    bind_service_info,
    build_pod,
    check_settings,
)
from istiod_lite.registry.l7policies import compile_l7_policy
from istiod_lite.registry.policies import PolicyInfo, convert_policy
from istiod_lite.registry.services import ServiceInfo, ServicePortSpec, build_service, service_hostname
from istiod_lite.registry.waypoints import (
    USE_WAYPOINT_NAMESPACE,
    Binding,
    Source,
    Waypoint,
    gateway_problems,
    namespace_problem,
    service_account_waypoints,
    waypoint_from_gateway,
)
from istiod_lite.registry.workloads import pod_uid
from meshcore.identity import SpiffeId
from meshcore.model import Authorization, Scope, Service, Workload
from meshcore.model.l7 import L7Authorization
from meshcore.store.resource import Resource, ResourceRef

Changes = dict[str, dict[str, Value]]
Removals = dict[str, set[str]]

_K = TypeVar("_K")
_V = TypeVar("_V")

_USED_KINDS = frozenset({"Namespace", "Pod", "Service", "AuthorizationPolicy", "Gateway"})
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """What ``compute`` takes as keyword arguments, checked once (raises ``InvalidSettings``)."""

    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    network: str = ""
    root_namespace: str = "istio-system"
    domain_suffix: str = "cluster.local"

    def __post_init__(self) -> None:
        check_settings(self.trust_domain, self.cluster_id)


@dataclass(frozen=True, slots=True)
class _Namespace:
    """Everything of one namespace the registry needs to recompute its pods. Never mutated."""

    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    pods: Mapping[str, Resource] = field(default_factory=dict)
    services: Mapping[str, Resource] = field(default_factory=dict)
    service_infos: Mapping[str, ServiceInfo] = field(default_factory=dict)  # the Services that converted
    service_index: SelectorIndex[ServiceInfo] = field(default_factory=SelectorIndex)
    policy_infos: Mapping[str, PolicyInfo] = field(default_factory=dict)  # the policies for ztunnel
    policy_index: SelectorIndex[str] = field(default_factory=SelectorIndex)
    gateways: Mapping[str, Waypoint] = field(default_factory=dict)  # the istio-waypoint Gateways, by name
    account_waypoints: Mapping[str, Waypoint] = field(default_factory=dict)  # service account -> waypoint

    def is_empty(self) -> bool:
        return not (self.labels or self.pods or self.services or self.policy_infos or self.gateways)


_EMPTY_NAMESPACE = _Namespace()
_GONE = PodEntry(None, None, ())  # a deleted pod contributes nothing


@dataclass(frozen=True, slots=True)
class RegistryState:
    """A snapshot plus the indexes ``update`` needs. Build with ``build`` or ``empty``; never mutate.

    ``fresh_problems`` are the problems that appeared in the update that made this state (log them);
    ``problem_counts`` counts every current problem by severity.
    """

    settings: RegistrySettings
    snapshot: RegistrySnapshot = field(default_factory=RegistrySnapshot)
    fresh_problems: tuple[Problem, ...] = ()
    problem_counts: Mapping[Severity, int] = field(default_factory=dict)
    # Internal tables, shared with the snapshot's read-only views. Read-only once the state exists.
    namespaces: Mapping[str, _Namespace] = field(default_factory=dict, repr=False)
    workloads: dict[str, Workload] = field(default_factory=dict, repr=False)
    services: dict[str, Service] = field(default_factory=dict, repr=False)
    policies: dict[str, Authorization] = field(default_factory=dict, repr=False)
    scheduled: dict[tuple[str, str], ScheduledPod] = field(default_factory=dict, repr=False)
    node_identities: dict[str, Mapping[SpiffeId, int]] = field(default_factory=dict, repr=False)
    identities_by_node: dict[str, frozenset[SpiffeId]] = field(default_factory=dict, repr=False)
    problems_by_source: dict[ResourceRef, tuple[Problem, ...]] = field(default_factory=dict, repr=False)
    # service key -> service account -> how many of its endpoint Workloads run as it.
    endpoint_accounts: dict[str, Mapping[str, int]] = field(default_factory=dict, repr=False)
    waypoints: dict[str, Waypoint] = field(default_factory=dict, repr=False)
    bindings: dict[str, Binding] = field(default_factory=dict, repr=False)
    l7_policies: dict[str, L7Authorization] = field(default_factory=dict, repr=False)
    # The waypoints' L7 policies this update changed (by name) and removed, as ``diff_l7`` reports them.
    l7_changes: tuple[Mapping[str, L7Authorization], frozenset[str]] = (MappingProxyType({}), frozenset())


class _Waypoints:
    """The ``WaypointTable`` of a set of namespaces."""

    __slots__ = ("_namespaces",)

    def __init__(self, namespaces: Mapping[str, _Namespace]) -> None:
        self._namespaces = namespaces

    def waypoint(self, namespace: str, name: str) -> Waypoint | None:
        ns = self._namespaces.get(namespace)
        return ns.gateways.get(name) if ns is not None else None

    def for_service_account(self, namespace: str, service_account: str) -> Waypoint | None:
        ns = self._namespaces.get(namespace)
        return ns.account_waypoints.get(service_account) if ns is not None else None


def empty(settings: RegistrySettings | None = None) -> RegistryState:
    """The state of a cluster with no resources."""
    return RegistryState(settings or RegistrySettings())


def build(resources: Iterable[Resource], settings: RegistrySettings | None = None) -> RegistryState:
    """The state of all ``resources`` (as ``compute`` would see them), from nothing."""
    state, _, _ = update(empty(settings), resources, ())
    return state


def update(
    state: RegistryState, changed: Iterable[Resource], deleted: Iterable[ResourceRef]
) -> tuple[RegistryState, Changes, Removals]:
    """Apply one batch: ``changed`` resources now exist as given, ``deleted`` refs no longer exist.

    A ref given in both is deleted. Kinds the registry does not use are ignored. Returns the new state and
    (changed or added by type, removed names by type), exactly as ``diff(state.snapshot, new.snapshot)``.
    """
    batch: dict[ResourceRef, Resource | None] = {}
    for resource in changed:
        if resource.kind in _USED_KINDS:
            batch[resource.ref] = resource
    for ref in deleted:
        if ref.kind in _USED_KINDS:
            batch[ref] = None
    return _Batch(state).run(batch)


class _Cow(Generic[_K, _V]):
    """A table shared with the previous state until the batch first writes it; then a private copy."""

    __slots__ = ("_base", "_copy")

    def __init__(self, base: Mapping[_K, _V]) -> None:
        self._base = base
        self._copy: dict[_K, _V] | None = None

    @property
    def current(self) -> Mapping[_K, _V]:
        return self._copy if self._copy is not None else self._base

    @property
    def copied(self) -> bool:
        return self._copy is not None

    def writable(self) -> dict[_K, _V]:
        if self._copy is None:
            self._copy = dict(self._base)
        return self._copy

    def put(self, key: _K, value: _V | None) -> None:
        if value is None:
            if key in self.current:
                self.writable().pop(key)
        else:
            self.writable()[key] = value

    def result(self) -> dict[_K, _V]:
        """The table for the new state (the old one, when never written)."""
        if self._copy is not None:
            return self._copy
        assert isinstance(self._base, dict)
        return self._base


class _NamespaceDraft:
    """A namespace being changed by one batch; its indexes are rebuilt by ``finish`` when needed."""

    def __init__(self, base: _Namespace) -> None:
        self.labels: Mapping[str, str] = base.labels
        self.pods = _Cow(base.pods)
        self.services = _Cow(base.services)
        self.service_infos = _Cow(base.service_infos)
        self.policy_infos = _Cow(base.policy_infos)
        self.gateways = _Cow(base.gateways)
        self.service_index = base.service_index
        self.policy_index = base.policy_index
        self.account_waypoints = base.account_waypoints
        self.services_changed = False
        self.policies_changed = False

    def finish(self) -> _Namespace:
        if self.services_changed:
            self.service_index = SelectorIndex()
            for info in self.service_infos.current.values():
                if info.selector:  # no selector: manually managed endpoints, selects no pod
                    self.service_index.add(info.selector, info)
        if self.policies_changed:
            self.policy_index = SelectorIndex()
            for policy in self.policy_infos.current.values():
                selector = _policy_selector(policy)
                if selector is not None:
                    self.policy_index.add(selector, policy.authorization.key)
        if self.gateways.copied:
            self.account_waypoints = service_account_waypoints(self.gateways.current.values())
        return _Namespace(
            self.labels,
            self.pods.current,
            self.services.current,
            self.service_infos.current,
            self.service_index,
            self.policy_infos.current,
            self.policy_index,
            self.gateways.current,
            self.account_waypoints,
        )


def _policy_selector(info: PolicyInfo | None) -> Mapping[str, str] | None:
    """The pod labels a policy selects by, or None when it is not in the selector index."""
    if info is None or info.selector is None or info.authorization.scope != Scope.WORKLOAD_SELECTOR:
        return None
    return info.selector


def _service_reach(info: ServiceInfo | None) -> tuple[str, Mapping[str, str], tuple[ServicePortSpec, ...]] | None:
    """What of a Service its pods' Workloads depend on; None when it selects no pod."""
    if info is None or not info.selector:
        return None
    return info.service.key, info.selector, info.ports


class _Batch:
    """One ``update`` in progress: copy-on-write views of the state's tables, then the new state."""

    def __init__(self, state: RegistryState) -> None:
        self.old = state
        self.settings = state.settings
        self.drafts: dict[str, _NamespaceDraft] = {}
        self.workloads = _Cow(state.workloads)
        self.services = _Cow(state.services)
        self.policies = _Cow(state.policies)
        self.scheduled = _Cow(state.scheduled)
        self.problems = _Cow(state.problems_by_source)
        self.dirty_pods: set[tuple[str, str]] = set()
        # Selectors whose pods must be recomputed: per namespace, and in every namespace (root policies).
        self.probes: dict[str, SelectorIndex[bool]] = {}
        self.global_probe: SelectorIndex[bool] | None = None
        self.touched: dict[str, set[str]] = {WORKLOAD: set(), SERVICE: set(), AUTHORIZATION: set()}
        self.node_counts: dict[str, dict[SpiffeId, int]] = {}  # node -> identity -> active pods
        self.touched_sources: set[ResourceRef] = set()
        self.waypoints = _Cow(state.waypoints)
        self.bindings = _Cow(state.bindings)
        self.account_counts: dict[str, dict[str, int]] = {}  # service key -> this batch's copy of its counts
        self.accounts_before: dict[str, frozenset[str]] = {}  # service key -> its accounts before the batch
        self.rebind: set[tuple[str, str]] = set()  # (namespace, name) of Services to bind again
        self.rebind_all = False  # a waypoint changed: bind every Service again
        self.waypoint_namespaces: set[str] = set()  # namespaces whose waypoints changed
        self.l7 = _Cow(state.l7_policies)
        self.l7_touched: set[str] = set()

    def draft(self, namespace: str) -> _NamespaceDraft:
        d = self.drafts.get(namespace)
        if d is None:
            d = self.drafts[namespace] = _NamespaceDraft(self.old.namespaces.get(namespace, _EMPTY_NAMESPACE))
        return d

    def pods_of(self, namespace: str) -> Mapping[str, Resource]:
        d = self.drafts.get(namespace)
        return d.pods.current if d is not None else self.old.namespaces.get(namespace, _EMPTY_NAMESPACE).pods

    def set_problems(self, ref: ResourceRef, problems: Iterable[Problem]) -> None:
        found = tuple(problems)
        if found or ref in self.problems.current:
            self.touched_sources.add(ref)
            self.problems.put(ref, found or None)

    def probe(self, namespace: str | None, selector: Mapping[str, str]) -> None:
        """Recompute the pods ``selector`` matches: in ``namespace``, or in every namespace if None."""
        if namespace is None:
            if self.global_probe is None:
                self.global_probe = SelectorIndex()
            self.global_probe.add(selector, True)
        else:
            self.probes.setdefault(namespace, SelectorIndex()).add(selector, True)

    # -- the steps ---------------------------------------------------------------------------------

    def run(self, batch: Mapping[ResourceRef, Resource | None]) -> tuple[RegistryState, Changes, Removals]:
        services: list[tuple[str, str]] = []
        policies: list[tuple[ResourceRef, Resource | None]] = []
        gateways: list[tuple[ResourceRef, Resource | None]] = []
        relabelled: list[str] = []
        for ref, resource in batch.items():
            if ref.kind == "Namespace":
                d = self.draft(ref.name)
                labels = resource.labels if resource is not None else _NO_LABELS
                if dict(labels) != dict(d.labels):
                    d.labels = labels
                    relabelled.append(ref.name)
            elif ref.kind == "Pod":
                self.draft(ref.namespace).pods.put(ref.name, resource)
                self.dirty_pods.add((ref.namespace, ref.name))
            elif ref.kind == "Service":
                self.draft(ref.namespace).services.put(ref.name, resource)
                services.append((ref.namespace, ref.name))
            elif ref.kind == "Gateway":
                gateways.append((ref, resource))
            else:
                policies.append((ref, resource))
        for namespace in relabelled:  # Services read their namespace's labels, and so do pods
            services.extend((namespace, name) for name in self.draft(namespace).services.current)
            self.dirty_pods.update((namespace, name) for name in self.pods_of(namespace))
        for namespace, name in dict.fromkeys(services):
            self.rebuild_service(namespace, name)
            self.rebind.add((namespace, name))
        for ref, resource in policies:
            self.rebuild_policy(ref, resource)
        for ref, resource in gateways:
            self.rebuild_gateway(ref, resource)
        self.probe_waypoint_users()
        self.find_probed_pods()
        namespaces = dict(self.old.namespaces)
        for name, d in self.drafts.items():
            done = d.finish()
            if done.is_empty():
                namespaces.pop(name, None)
            else:
                namespaces[name] = done
        for namespace, name in self.dirty_pods:
            self.rebuild_pod(namespaces, namespace, name)
        self.rebind_services(namespaces)
        self.check_namespaces(namespaces, relabelled)
        return self.finish(namespaces)

    def rebuild_service(self, namespace: str, name: str) -> None:
        d = self.draft(namespace)
        resource = d.services.current.get(name)
        old = d.service_infos.current.get(name)
        new: ServiceInfo | None = None
        problems: list[Problem] = []
        if resource is not None:
            try:
                new = build_service(
                    resource,
                    network=self.settings.network,
                    domain_suffix=self.settings.domain_suffix,
                    namespace_labels=d.labels,
                )
            except RegistryError as e:
                problems.append(e.to_problem())
        self.set_problems(ResourceRef("Service", namespace, name), problems)
        if new == old:
            return
        d.service_infos.put(name, new)
        d.services_changed = True
        if old is not None:
            self.services.put(old.service.key, None)
            self.touched[SERVICE].add(old.service.key)
        if new is not None:
            self.services.put(new.service.key, new.service)
            self.touched[SERVICE].add(new.service.key)
        before, after = _service_reach(old), _service_reach(new)
        if before != after:
            for reach in (before, after):
                if reach is not None:
                    self.probe(namespace, reach[1])

    def rebuild_policy(self, ref: ResourceRef, resource: Resource | None) -> None:
        d = self.draft(ref.namespace)
        old = d.policy_infos.current.get(ref.name)
        new: PolicyInfo | None = None
        problems: list[Problem] = []
        l7: L7Authorization | None = None
        l7_problems: list[Problem] = []
        if resource is not None:
            new, problems = convert_policy(resource, root_namespace=self.settings.root_namespace)
            compiled = compile_l7_policy(resource, cluster_domain=self.settings.domain_suffix)
            l7, l7_problems = compiled.authorization, compiled.problems
        self.set_problems(ref, problems)
        self.set_problems(ResourceRef("AuthorizationPolicy/l7", ref.namespace, ref.name), l7_problems)
        l7_key = f"{ref.namespace}/{ref.name}"
        if l7 is not None or l7_key in self.l7.current:
            self.l7.put(l7_key, l7)
            self.l7_touched.add(l7_key)
        if new == old:
            return
        d.policy_infos.put(ref.name, new)
        for info in (old, new):
            if info is not None:
                self.policies.put(info.authorization.key, None)
                self.touched[AUTHORIZATION].add(info.authorization.key)
        if new is not None:
            self.policies.put(new.authorization.key, new.authorization)
        before, after = _policy_selector(old), _policy_selector(new)
        if before != after:
            d.policies_changed = True
            scope = None if ref.namespace == self.settings.root_namespace else ref.namespace
            for selector in (before, after):
                if selector is not None:
                    self.probe(scope, selector)

    def rebuild_gateway(self, ref: ResourceRef, resource: Resource | None) -> None:
        d = self.draft(ref.namespace)
        s = self.settings
        new = (
            waypoint_from_gateway(resource, network=s.network, domain_suffix=s.domain_suffix)
            if resource is not None
            else None
        )
        old = d.gateways.current.get(ref.name)
        if new == old:
            return
        self.set_problems(ref, ())  # the namespace's Gateways are checked again in probe_waypoint_users
        d.gateways.put(ref.name, new)
        self.waypoints.put(f"{ref.namespace}/{ref.name}", new)
        self.waypoint_namespaces.add(ref.namespace)

    def probe_waypoint_users(self) -> None:
        """For each namespace whose waypoints changed: its Gateways' problems, and who may use them."""
        if not self.waypoint_namespaces:
            return
        self.rebind_all = True
        for namespace in self.waypoint_namespaces:
            named = self.draft(namespace).gateways.current
            refs = {name: ResourceRef("Gateway", namespace, name) for name in named}
            found = gateway_problems(refs, named)
            for name, ref in refs.items():
                self.set_problems(ref, found.get(name, ()))
            self.probe(namespace, {})  # its pods: per-SA and same-namespace use-waypoint
            self.probe(None, {USE_WAYPOINT_NAMESPACE: namespace})  # pods naming it
            for other in dict.fromkeys(itertools.chain(self.old.namespaces, self.drafts)):
                d = self.drafts.get(other)
                labels = d.labels if d is not None else self.old.namespaces[other].labels
                if labels.get(USE_WAYPOINT_NAMESPACE) == namespace:
                    self.probe(other, {})  # pods of a namespace naming it

    def find_probed_pods(self) -> None:
        """Mark dirty every pod a changed selector matches (before or after the change)."""
        namespaces: Iterable[str] = self.probes
        if self.global_probe is not None:
            namespaces = dict.fromkeys(itertools.chain(self.old.namespaces, self.drafts))
        empty: SelectorIndex[bool] = SelectorIndex()
        for namespace in namespaces:
            probe = self.probes.get(namespace, empty)
            for name, pod in self.pods_of(namespace).items():
                key = (namespace, name)
                if key in self.dirty_pods:
                    continue
                if probe.matching(pod.labels) or (
                    self.global_probe is not None and self.global_probe.matching(pod.labels)
                ):
                    self.dirty_pods.add(key)

    def rebuild_pod(self, namespaces: Mapping[str, _Namespace], namespace: str, name: str) -> None:
        s = self.settings
        ns = namespaces.get(namespace, _EMPTY_NAMESPACE)
        pod = ns.pods.get(name)
        entry = _GONE
        if pod is not None:
            root = namespaces.get(s.root_namespace, _EMPTY_NAMESPACE) if namespace != s.root_namespace else None
            entry = build_pod(
                pod,
                namespace_labels=ns.labels,
                services=ns.service_index,
                policies=ns.policy_index,
                root_policies=root.policy_index if root is not None else None,
                trust_domain=s.trust_domain,
                cluster_id=s.cluster_id,
                network=s.network,
                waypoints=_Waypoints(namespaces),
            )
        self.set_problems(ResourceRef("Pod", namespace, name), entry.problems)

        old_scheduled = self.scheduled.current.get((namespace, name))
        if entry.scheduled != old_scheduled:
            self.scheduled.put((namespace, name), entry.scheduled)
            self.count_identity(old_scheduled, -1)
            self.count_identity(entry.scheduled, +1)

        uid = pod_uid(s.cluster_id, namespace, name)
        if entry.workload is not None or uid in self.workloads.current:
            self.touched[WORKLOAD].add(uid)
            self.count_accounts(self.workloads.current.get(uid), -1)
            self.count_accounts(entry.workload, +1)
            self.workloads.put(uid, entry.workload)
        binding = entry.binding if entry.binding.source != Source.NONE else None
        if binding is not None or uid in self.bindings.current:
            self.bindings.put(uid, binding)

    def count_accounts(self, workload: Workload | None, delta: int) -> None:
        """Follow which service accounts each Service's endpoints run as (per-SA service binding)."""
        if workload is None:
            return
        for key in workload.services:
            counts = self.account_counts.get(key)
            if counts is None:
                before = self.old.endpoint_accounts.get(key, {})
                self.accounts_before[key] = frozenset(before)
                counts = self.account_counts[key] = dict(before)
            left = counts.get(workload.service_account, 0) + delta
            if left > 0:
                counts[workload.service_account] = left
            else:
                counts.pop(workload.service_account, None)

    def rebind_services(self, namespaces: Mapping[str, _Namespace]) -> None:
        """Bind waypoints to the Services this batch may have changed the decision of."""
        for key, counts in self.account_counts.items():
            if frozenset(counts) != self.accounts_before[key]:
                namespace, _, hostname = key.partition("/")
                self.rebind.add((namespace, hostname.split(".", 1)[0]))
        if self.rebind_all:
            for namespace, ns in namespaces.items():
                self.rebind.update((namespace, name) for name in ns.service_infos)
        table = _Waypoints(namespaces)
        for namespace, name in self.rebind:
            ns = namespaces.get(namespace, _EMPTY_NAMESPACE)
            info = ns.service_infos.get(name)
            source = ResourceRef("Service/waypoint", namespace, name)  # its binding problems, kept apart
            if info is None:
                self.set_problems(source, ())
                self.bindings.put(f"{namespace}/{service_hostname(name, namespace, self.settings.domain_suffix)}", None)
                continue
            key = info.service.key
            fresh = self.account_counts.get(key)
            accounts = fresh if fresh is not None else self.old.endpoint_accounts.get(key, {})
            service, binding, problem = bind_service_info(info, ns.labels, accounts, table)
            self.set_problems(source, (problem,) if problem is not None else ())
            self.services.put(key, service)
            self.touched[SERVICE].add(key)
            keep = binding if binding.source != Source.NONE else None
            if keep is not None or key in self.bindings.current:
                self.bindings.put(key, keep)

    def check_namespaces(self, namespaces: Mapping[str, _Namespace], relabelled: Iterable[str]) -> None:
        """Problems of namespaces whose ``istio.io/use-waypoint`` names a missing or closed waypoint."""
        names: Iterable[str] = namespaces if self.waypoint_namespaces else relabelled
        table = _Waypoints(namespaces)
        for name in dict.fromkeys(itertools.chain(names, relabelled)):
            ref = ResourceRef("Namespace", "", name)
            ns = namespaces.get(name)
            problem = namespace_problem(ref, ns.labels, table) if ns is not None else None
            self.set_problems(ref, (problem,) if problem is not None else ())

    def count_identity(self, scheduled: ScheduledPod | None, delta: int) -> None:
        if scheduled is None or not scheduled.node:
            return
        node = scheduled.node
        counts = self.node_counts.get(node)
        if counts is None:  # this batch's own copy of the node's counts, made once
            counts = self.node_counts[node] = dict(self.old.node_identities.get(node, {}))
        left = counts.get(scheduled.identity, 0) + delta
        if left > 0:
            counts[scheduled.identity] = left
        else:
            counts.pop(scheduled.identity, None)

    # -- the new state -----------------------------------------------------------------------------

    def finish(self, namespaces: dict[str, _Namespace]) -> tuple[RegistryState, Changes, Removals]:
        old = self.old
        node_identities = old.node_identities
        identities_by_node = old.identities_by_node
        if self.node_counts:
            node_identities, identities_by_node = dict(node_identities), dict(identities_by_node)
            for node, counts in self.node_counts.items():
                if counts:
                    node_identities[node] = counts
                    identities_by_node[node] = frozenset(counts)
                else:
                    node_identities.pop(node, None)
                    identities_by_node.pop(node, None)

        by_source = self.problems.result()
        problems = old.snapshot.problems
        fresh: list[Problem] = []
        by_severity = dict(old.problem_counts)
        if self.problems.copied:
            problems = tuple(itertools.chain.from_iterable(by_source.values()))
            for ref in self.touched_sources:
                before, after = old.problems_by_source.get(ref, ()), by_source.get(ref, ())
                fresh.extend(p for p in after if p not in before)
                for p in before:
                    by_severity[p.severity] -= 1
                for p in after:
                    by_severity[p.severity] = by_severity.get(p.severity, 0) + 1
            by_severity = {k: v for k, v in by_severity.items() if v}

        workloads, services, policies = self.workloads.result(), self.services.result(), self.policies.result()
        scheduled = self.scheduled.result()
        waypoints, bindings = self.waypoints.result(), self.bindings.result()
        l7_policies = self.l7.result()
        l7_changed = {k: v for k in self.l7_touched if (v := l7_policies.get(k)) is not None and old.l7_policies.get(k) != v}
        l7_removed = frozenset(k for k in self.l7_touched if k not in l7_policies and k in old.l7_policies)
        endpoint_accounts = old.endpoint_accounts
        if self.account_counts:
            endpoint_accounts = dict(endpoint_accounts)
            for key, accounts in self.account_counts.items():
                if accounts:
                    endpoint_accounts[key] = accounts
                else:
                    endpoint_accounts.pop(key, None)
        state = RegistryState(
            settings=self.settings,
            snapshot=RegistrySnapshot(
                workloads=MappingProxyType(workloads),
                services=MappingProxyType(services),
                policies=MappingProxyType(policies),
                problems=problems,
                pods=MappingProxyType(scheduled),
                identities_by_node=MappingProxyType(identities_by_node),
                waypoints=MappingProxyType(waypoints),
                waypoint_bindings=MappingProxyType(bindings),
                l7_policies=MappingProxyType(l7_policies),
            ),
            fresh_problems=tuple(fresh),
            problem_counts=MappingProxyType(by_severity),
            namespaces=namespaces,
            workloads=workloads,
            services=services,
            policies=policies,
            scheduled=scheduled,
            node_identities=node_identities,
            identities_by_node=identities_by_node,
            problems_by_source=by_source,
            endpoint_accounts=endpoint_accounts,
            waypoints=waypoints,
            bindings=bindings,
            l7_policies=l7_policies,
            l7_changes=(MappingProxyType(l7_changed), l7_removed),
        )
        changes: Changes = {}
        removals: Removals = {}
        pairs: tuple[tuple[str, Mapping[str, Value], Mapping[str, Value]], ...] = (
            (WORKLOAD, old.workloads, workloads),
            (SERVICE, old.services, services),
            (AUTHORIZATION, old.policies, policies),
        )
        for kind, before_map, after_map in pairs:
            changes[kind] = {}
            removals[kind] = set()
            for name in self.touched[kind]:
                value = after_map.get(name)
                if value is None:
                    if name in before_map:
                        removals[kind].add(name)
                elif before_map.get(name) != value:
                    changes[kind][name] = value
        return state, changes, removals
