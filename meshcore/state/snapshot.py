"""ProxyState: the immutable snapshot of everything the control plane told a proxy, with its lookup indexes.

Theory of operation: one writer (the xDS client, through ``apply_delta``) builds a *new* ProxyState per
change and publishes it; every reader (each connection, the admin endpoint, the policy watcher) takes one
snapshot and never sees it change. Nothing here is ever mutated after construction, so no locks are needed.

Building a new snapshot is copy-on-write: ``_Builder`` shallow-copies only the top-level dicts it touches
(C-speed, ~0.1 ms for 10,000 entries) and replaces only the per-key containers it changes, so a one-workload
delta on a 10,000-workload mesh costs well under a few ms instead of a full index rebuild.

Invariants: ``workloads`` is keyed by uid, ``services`` by ``ns/hostname``, ``policies`` by ``ns/name``;
every index entry points at a key present in those maps; IPs are canonical strings (``ipaddress`` form).
Lookups are ``find_*``, synchronous, and return ``None`` or an empty tuple when nothing matches.
Pure: no I/O, no clocks, no logging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from meshcore.identity import SpiffeId
from meshcore.model import Authorization, Port, Scope, Service, Workload

IpLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address
Model = Workload | Service | Authorization


def _ip_key(ip: IpLike) -> str:
    """The index key of an address. IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what a dual-stack socket reports
    for an IPv4 peer) is folded to plain IPv4 so such a peer is not mistaken for an unknown, off-mesh one."""
    if isinstance(ip, str):
        return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ProxyState:
    """An immutable snapshot of workloads, services and policies. Build with ``empty()``/``of()``/``updated()``."""

    __slots__ = (
        "_by_identity",
        "_endpoints",
        "_global_policies",
        "_ns_policies",
        "_policies",
        "_services",
        "_svc_by_vip",
        "_wl_by_addr",
        "_workloads",
        "version",
    )

    version: int
    _workloads: dict[str, Workload]
    _services: dict[str, Service]
    _policies: dict[str, Authorization]
    # (network, ip) -> uids holding that address, oldest first (the newest wins a lookup, as in ztunnel).
    _wl_by_addr: dict[tuple[str, str], tuple[str, ...]]
    # (network, vip) -> service keys, oldest first.
    _svc_by_vip: dict[tuple[str, str], tuple[str, ...]]
    # service key -> uids of workloads whose ``services`` map names it (dict used as an ordered set).
    _endpoints: dict[str, dict[str, None]]
    _by_identity: dict[SpiffeId, dict[str, None]]
    # Keys of GLOBAL-scope policies, and of NAMESPACE-scope policies per namespace.
    _global_policies: dict[str, None]
    _ns_policies: dict[str, dict[str, None]]

    def __init__(self) -> None:
        raise TypeError("use ProxyState.empty(), ProxyState.of(...) or state.updated(...)")

    @classmethod
    def _create(cls, version: int, parts: Mapping[str, Any]) -> ProxyState:
        self = object.__new__(cls)
        object.__setattr__(self, "version", version)
        for name, value in parts.items():
            object.__setattr__(self, name, value)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ProxyState is immutable; build a new one with updated() or apply_delta()")

    # ------------------------------------------------------------------------------------ construction

    @classmethod
    def empty(cls) -> ProxyState:
        """The state before the first xDS response: nothing known, version 0."""
        return _Builder(None).build(0)

    @classmethod
    def of(cls, *models: Model) -> ProxyState:
        """A state holding ``models`` (for tests and local config); version 1 if any model was given."""
        return cls.empty().updated(put=models)

    def updated(
        self,
        put: Iterable[Model] = (),
        remove_addresses: Iterable[str] = (),
        remove_policies: Iterable[str] = (),
    ) -> ProxyState:
        """A new state with ``put`` models upserted, then the named addresses/policies removed.

        Returns ``self`` when nothing changed, so callers can skip publishing. Validation is the caller's job
        (``apply_delta`` validates peer input before it gets here).
        """
        b = _Builder(self)
        for m in put:
            if isinstance(m, Workload):
                b.put_workload(m)
            elif isinstance(m, Service):
                b.put_service(m)
            else:
                b.put_policy(m)
        for name in remove_addresses:
            b.remove_address(name)
        for name in remove_policies:
            b.remove_policy(name)
        return b.build(self.version + 1) if b.changed else self

    # ----------------------------------------------------------------------------------------- lookups

    @property
    def workloads(self) -> Mapping[str, Workload]:
        """uid -> Workload (read-only view)."""
        return MappingProxyType(self._workloads)

    @property
    def services(self) -> Mapping[str, Service]:
        """``ns/hostname`` -> Service (read-only view)."""
        return MappingProxyType(self._services)

    @property
    def policies(self) -> Mapping[str, Authorization]:
        """``ns/name`` -> Authorization (read-only view)."""
        return MappingProxyType(self._policies)

    def find_workload(self, uid: str) -> Workload | None:
        return self._workloads.get(uid)

    def find_workload_by_addr(self, ip: IpLike, network: str = "") -> Workload | None:
        """The workload at ``ip`` on ``network``; pass the canonical string form (or an ``ipaddress`` object)."""
        uids = self._wl_by_addr.get((network, _ip_key(ip)))
        return self._workloads[uids[-1]] if uids else None

    def find_service(self, key: str) -> Service | None:
        """The service named ``ns/hostname``."""
        return self._services.get(key)

    def find_service_by_vip(self, ip: IpLike, network: str = "") -> Service | None:
        keys = self._svc_by_vip.get((network, _ip_key(ip)))
        return self._services[keys[-1]] if keys else None

    def find_destination(self, ip: IpLike, network: str = "") -> Service | Workload | None:
        """What an address means to a client: a service VIP first, else a workload (ztunnel's order)."""
        return self.find_service_by_vip(ip, network) or self.find_workload_by_addr(ip, network)

    def endpoints(self, service_key: str) -> tuple[tuple[Workload, tuple[Port, ...]], ...]:
        """Every workload backing ``service_key``, with the ports it serves for it (in arrival order)."""
        uids = self._endpoints.get(service_key)
        if not uids:
            return ()
        wls = self._workloads
        return tuple((wls[u], wls[u].services[service_key]) for u in uids)

    def find_workloads_by_identity(self, identity: SpiffeId) -> tuple[Workload, ...]:
        uids = self._by_identity.get(identity)
        return tuple(self._workloads[u] for u in uids) if uids else ()

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The policies enforced at ``workload`` (reference §6): GLOBAL, then NAMESPACE-scope ones of its
        namespace, then the selector policies it names. Unknown names are skipped (see ``missing_policies``)."""
        seen: dict[str, None] = dict(self._global_policies)
        seen.update(self._ns_policies.get(workload.namespace, {}))
        for name in workload.authorization_policies:
            if name in self._policies:
                seen[name] = None
        return tuple(self._policies[k] for k in seen)

    def missing_policies(self, workload: Workload) -> tuple[str, ...]:
        """Names in ``workload.authorization_policies`` that this state does not hold (worth a warning)."""
        return tuple(n for n in workload.authorization_policies if n not in self._policies)

    def __repr__(self) -> str:
        return (
            f"ProxyState(version={self.version}, workloads={len(self._workloads)}, "
            f"services={len(self._services)}, policies={len(self._policies)})"
        )


# ------------------------------------------------------------------------------------------------ builder


def _add_to_tuple(index: dict[tuple[str, str], tuple[str, ...]], key: tuple[str, str], member: str) -> None:
    index[key] = (*(m for m in index.get(key, ()) if m != member), member)


def _drop_from_tuple(index: dict[tuple[str, str], tuple[str, ...]], key: tuple[str, str], member: str) -> None:
    rest = tuple(m for m in index.get(key, ()) if m != member)
    if rest:
        index[key] = rest
    else:
        index.pop(key, None)


class _Builder:
    """Copy-on-write editor over a ProxyState's dicts. Each top-level dict is copied once, on first write;
    per-key containers (sets of uids) are replaced, never mutated, because the old snapshot still shares them."""

    _FIELDS = (
        "_workloads",
        "_services",
        "_policies",
        "_wl_by_addr",
        "_svc_by_vip",
        "_endpoints",
        "_by_identity",
        "_global_policies",
        "_ns_policies",
    )

    def __init__(self, base: ProxyState | None) -> None:
        self._parts: dict[str, Any] = {f: ({} if base is None else getattr(base, f)) for f in self._FIELDS}
        self._copied: set[str] = set() if base is not None else set(self._FIELDS)
        # Per-key member sets created by this builder: safe to mutate in place (no snapshot shares them yet),
        # which keeps a bulk load of one big service's endpoints linear instead of quadratic.
        # Keyed by id(); the values keep the objects alive so an id is never reused while we hold it.
        self._owned: dict[int, dict[str, None]] = {}
        self.changed = False

    def _w(self, field: str) -> Any:
        """The dict ``field``, copied the first time it is written."""
        if field not in self._copied:
            self._parts[field] = dict(self._parts[field])
            self._copied.add(field)
        self.changed = True
        return self._parts[field]

    def _add_to_set(self, field: str, key: Any, member: str) -> None:
        index = self._w(field)
        members = index.get(key)
        if members is None or id(members) not in self._owned:
            members = dict(members or {})
            self._owned[id(members)] = members
            index[key] = members
        members[member] = None

    def _drop_from_set(self, field: str, key: Any, member: str) -> None:
        members = self._parts[field].get(key)
        if members is None or member not in members:
            return
        index = self._w(field)
        if len(members) == 1:
            del index[key]
            return
        if id(members) not in self._owned:
            members = dict(members)
            self._owned[id(members)] = members
            index[key] = members
        del members[member]

    # -- workloads

    def put_workload(self, w: Workload) -> None:
        old = self._parts["_workloads"].get(w.uid)
        if old == w:
            return
        # Address names are one namespace: a workload replaces whatever address had its name.
        self.remove_address(w.uid)
        self._w("_workloads")[w.uid] = w
        by_addr = self._w("_wl_by_addr")
        for ip in w.addresses:
            _add_to_tuple(by_addr, (w.network, ip), w.uid)
        for key in w.services:
            self._add_to_set("_endpoints", key, w.uid)
        self._add_to_set("_by_identity", w.identity, w.uid)

    def _remove_workload(self, uid: str) -> None:
        old: Workload | None = self._parts["_workloads"].get(uid)
        if old is None:
            return
        del self._w("_workloads")[uid]
        by_addr = self._w("_wl_by_addr")
        for ip in old.addresses:
            _drop_from_tuple(by_addr, (old.network, ip), uid)
        for key in old.services:
            self._drop_from_set("_endpoints", key, uid)
        self._drop_from_set("_by_identity", old.identity, uid)

    # -- services

    def put_service(self, s: Service) -> None:
        key = s.key
        if self._parts["_services"].get(key) == s:
            return
        self.remove_address(key)
        self._w("_services")[key] = s
        by_vip = self._w("_svc_by_vip")
        for a in s.addresses:
            _add_to_tuple(by_vip, (a.network, a.address), key)

    def _remove_service(self, key: str) -> None:
        old: Service | None = self._parts["_services"].get(key)
        if old is None:
            return
        del self._w("_services")[key]
        by_vip = self._w("_svc_by_vip")
        for a in old.addresses:
            _drop_from_tuple(by_vip, (a.network, a.address), key)

    def remove_address(self, name: str) -> None:
        """Remove the workload (uid) or service (``ns/hostname``) called ``name``; unknown names are a no-op."""
        self._remove_workload(name)
        self._remove_service(name)

    # -- policies

    def put_policy(self, a: Authorization) -> None:
        key = a.key
        if self._parts["_policies"].get(key) == a:
            return
        self.remove_policy(key)
        self._w("_policies")[key] = a
        if a.scope == Scope.GLOBAL:
            self._w("_global_policies")[key] = None
        elif a.scope == Scope.NAMESPACE:
            self._add_to_set("_ns_policies", a.namespace, key)

    def remove_policy(self, key: str) -> None:
        old: Authorization | None = self._parts["_policies"].get(key)
        if old is None:
            return
        del self._w("_policies")[key]
        if old.scope == Scope.GLOBAL:
            del self._w("_global_policies")[key]
        elif old.scope == Scope.NAMESPACE:
            self._drop_from_set("_ns_policies", old.namespace, key)

    def build(self, version: int) -> ProxyState:
        return ProxyState._create(version, self._parts)
