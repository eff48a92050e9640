"""ProxyState: the immutable snapshot of everything the control plane told a proxy, with its lookup indexes.

Theory of operation: one writer (the xDS client, through ``apply_delta``) builds a *new* ProxyState per
change and publishes it; every reader (each connection, the admin endpoint, the policy watcher) takes one
snapshot and never sees it change. Nothing here is ever mutated after construction, so no locks are needed.

Building a new snapshot is copy-on-write at two levels: the big maps are ``FrozenMap``s, whose editors copy
only the shards a change touches, and ``StateEditor`` replaces (never mutates) the per-key containers it
changes. A one-workload delta on a 10,000-workload mesh copies a few hundred pointers per touched index,
not the indexes (tens of microseconds); a bulk load is one linear pass.

Invariants: ``workloads`` is keyed by uid, ``services`` by ``ns/hostname``, ``policies`` by ``ns/name``;
every index entry points at a key present in those maps; IPs are canonical strings (``ipaddress`` form).
Lookups are ``find_*``, synchronous, and return ``None`` or an empty tuple when nothing matches.
Pure: no I/O, no clocks, no logging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from meshcore.identity import SpiffeId
from meshcore.model import Authorization, Port, Scope, Service, Workload
from meshcore.state.frozenmap import FrozenMap, MapEditor

IpLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address
_K = TypeVar("_K")
_V = TypeVar("_V")
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
    _workloads: FrozenMap[str, Workload]
    _services: FrozenMap[str, Service]
    _policies: FrozenMap[str, Authorization]
    # (network, ip) -> uids holding that address, oldest first (the newest wins a lookup, as in ztunnel).
    _wl_by_addr: FrozenMap[tuple[str, str], tuple[str, ...]]
    # (network, vip) -> service keys, oldest first.
    _svc_by_vip: FrozenMap[tuple[str, str], tuple[str, ...]]
    # service key -> uids of workloads whose ``services`` map names it (dict used as an ordered set).
    _endpoints: FrozenMap[str, dict[str, None]]
    # (trust domain, namespace, service account) -> uids: a plain tuple key hashes in C, a SpiffeId does not.
    _by_identity: FrozenMap[tuple[str, str, str], dict[str, None]]
    # Keys of GLOBAL-scope policies, and of NAMESPACE-scope policies per namespace (few: plain dicts).
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
        return StateEditor(None)._build(0)

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
        editor = StateEditor(self)
        for m in put:
            editor.put(m)
        for name in remove_addresses:
            editor.remove_address(name)
        for name in remove_policies:
            editor.remove_policy(name)
        return editor.finish()

    def edit(self) -> StateEditor:
        """A private draft of the next state, for a caller that applies one change set in several steps
        (``updated`` does it in one). This state never changes; ``StateEditor.finish()`` returns the next."""
        return StateEditor(self)

    # ----------------------------------------------------------------------------------------- lookups

    @property
    def workloads(self) -> Mapping[str, Workload]:
        """uid -> Workload (immutable; not in insertion order)."""
        return self._workloads

    @property
    def services(self) -> Mapping[str, Service]:
        """``ns/hostname`` -> Service (immutable; not in insertion order)."""
        return self._services

    @property
    def policies(self) -> Mapping[str, Authorization]:
        """``ns/name`` -> Authorization (immutable; not in insertion order)."""
        return self._policies

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
        uids = self._by_identity.get((identity.trust_domain, identity.namespace, identity.service_account))
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


def _add_to_tuple(index: _Map[tuple[str, str], tuple[str, ...]], key: tuple[str, str], member: str) -> None:
    members = index.get(key)
    if members is None:
        index[key] = (member,)
    elif members[-1] != member:
        index[key] = (*(m for m in members if m != member), member)


def _drop_from_tuple(index: _Map[tuple[str, str], tuple[str, ...]], key: tuple[str, str], member: str) -> None:
    members = index.get(key)
    if members is None or member not in members:
        return
    rest = tuple(m for m in members if m != member)
    if rest:
        index[key] = rest
    else:
        del index[key]


def _index_fresh(workloads: dict[str, Workload], services: dict[str, Service]) -> dict[str, dict[Any, Any]]:
    """The address, endpoint and identity indexes of a fresh editor's maps, built in one pass.

    A replaced or removed entry was popped first, so insertion order is the order of the last put: the same
    member order as maintaining the indexes put by put (``StateEditor.put_workload``)."""
    by_addr: dict[tuple[str, str], tuple[str, ...]] = {}
    endpoints: dict[str, dict[str, None]] = {}
    by_identity: dict[tuple[str, str, str], dict[str, None]] = {}
    for uid, w in workloads.items():
        network = w.network
        for ip in w.addresses:
            held = by_addr.get((network, ip))
            by_addr[(network, ip)] = (uid,) if held is None else (*held, uid)
        for service in w.services:
            members = endpoints.get(service)
            if members is None:
                endpoints[service] = {uid: None}
            else:
                members[uid] = None
        identity = (w.trust_domain, w.namespace, w.service_account)
        members = by_identity.get(identity)
        if members is None:
            by_identity[identity] = {uid: None}
        else:
            members[uid] = None
    by_vip: dict[tuple[str, str], tuple[str, ...]] = {}
    for key, svc in services.items():
        for a in svc.addresses:
            held = by_vip.get((a.network, a.address))
            by_vip[(a.network, a.address)] = (key,) if held is None else (*held, key)
    return {"_wl_by_addr": by_addr, "_endpoints": endpoints, "_by_identity": by_identity, "_svc_by_vip": by_vip}


_MapField = MapEditor[Any, Any]
# What StateEditor edits a map through: a MapEditor over the base's map, or a plain dict when starting fresh
# (both offer get / [] / in / del / pop(key, default)).
_Map = MapEditor[_K, _V] | dict[_K, _V]


class StateEditor:
    """Copy-on-write draft of the next ProxyState (from ``ProxyState.edit()``).

    The big maps are edited through ``MapEditor``s (which copy only touched shards); the two small
    policy-set dicts are copied once, on first write. Per-key member sets are replaced, never mutated,
    because the base snapshot still shares them. Upserts and removals apply in call order, with the same
    meaning as in ``ProxyState.updated``. ``finish()`` returns the new state (version + 1), or the base
    itself when nothing changed; the editor must not be used after it.
    """

    _MAPS = ("_workloads", "_services", "_policies", "_wl_by_addr", "_svc_by_vip", "_endpoints", "_by_identity")
    _DICTS = ("_global_policies", "_ns_policies")

    def __init__(self, base: ProxyState | None) -> None:
        # From an empty state (the first full push) the editor fills plain dicts, builds the derived indexes
        # in one pass at the end and hands everything to FrozenMap whole; otherwise every edit maintains the
        # indexes through MapEditors of the base's maps.
        self._fresh = base is None or not (base._workloads or base._services or base._policies)
        maps: dict[str, _MapField | dict[Any, Any]] = {
            f: {} if self._fresh else getattr(base, f).edit() for f in self._MAPS
        }
        self._maps = maps
        self._workloads: _Map[str, Workload] = maps["_workloads"]
        self._services: _Map[str, Service] = maps["_services"]
        self._policies: _Map[str, Authorization] = maps["_policies"]
        self._wl_by_addr: _Map[tuple[str, str], tuple[str, ...]] = maps["_wl_by_addr"]
        self._svc_by_vip: _Map[tuple[str, str], tuple[str, ...]] = maps["_svc_by_vip"]
        self._endpoints: _Map[str, dict[str, None]] = maps["_endpoints"]
        self._by_identity: _Map[tuple[str, str, str], dict[str, None]] = maps["_by_identity"]
        self._dicts: dict[str, Any] = {f: ({} if base is None else getattr(base, f)) for f in self._DICTS}
        self._copied: set[str] = set() if base is not None else set(self._DICTS)
        # Per-key member sets created by this builder: safe to mutate in place (no snapshot shares them yet),
        # which keeps a bulk load of one big service's endpoints linear instead of quadratic.
        # Keyed by id(); the values keep the objects alive so an id is never reused while we hold it.
        self._owned: dict[int, dict[str, None]] = {}
        self._base = base
        self._finished = False
        self.changed = False

    def _d(self, field: str) -> Any:
        """The small dict ``field``, copied the first time it is written."""
        if field not in self._copied:
            self._dicts[field] = dict(self._dicts[field])
            self._copied.add(field)
        self.changed = True
        return self._dicts[field]

    @staticmethod
    def _add_member(index: _MapField | dict[Any, dict[str, None]], owned: dict[int, dict[str, None]],
                    key: Any, member: str) -> None:
        members = index.get(key)
        if members is None or id(members) not in owned:
            members = dict(members or {})
            owned[id(members)] = members
            index[key] = members
        members[member] = None

    @staticmethod
    def _drop_member(index: _MapField | dict[Any, dict[str, None]], owned: dict[int, dict[str, None]],
                     key: Any, member: str) -> None:
        members = index.get(key)
        if members is None or member not in members:
            return
        if len(members) == 1:
            del index[key]
            return
        if id(members) not in owned:
            members = dict(members)
            owned[id(members)] = members
            index[key] = members
        del members[member]

    def put(self, m: Model) -> None:
        """Upsert a workload, service or policy (it replaces whatever had its resource name)."""
        if self._finished:
            raise RuntimeError("StateEditor.finish() was already called; edit the new state instead")
        if isinstance(m, Workload):
            self.put_workload(m)
        elif isinstance(m, Service):
            self.put_service(m)
        else:
            self.put_policy(m)

    def finish(self) -> ProxyState:
        """The edited state, or the base state when nothing changed."""
        if self._finished:
            raise RuntimeError("StateEditor.finish() was already called; edit the new state instead")
        self._finished = True
        if self._base is not None and not self.changed:
            return self._base
        return self._build(0 if self._base is None else self._base.version + 1)

    # -- workloads

    def put_workload(self, w: Workload) -> None:
        uid = w.uid
        old = self._workloads.get(uid)
        # Address names are one namespace: a workload replaces whatever address had its name.
        if old is not None:
            if old == w:
                return
            self._remove_workload(uid)
        elif uid in self._services:
            self._remove_service(uid)
        self.changed = True
        self._workloads[uid] = w
        if self._fresh:
            return  # indexes are built in one pass by _build
        by_addr = self._wl_by_addr
        network = w.network
        for ip in w.addresses:
            _add_to_tuple(by_addr, (network, ip), uid)
        owned = self._owned
        for key in w.services:
            self._add_member(self._endpoints, owned, key, uid)
        self._add_member(self._by_identity, owned, (w.trust_domain, w.namespace, w.service_account), uid)

    def _remove_workload(self, uid: str) -> None:
        old = self._workloads.pop(uid, None)
        if old is None:
            return
        self.changed = True
        if self._fresh:
            return
        for ip in old.addresses:
            _drop_from_tuple(self._wl_by_addr, (old.network, ip), uid)
        owned = self._owned
        for key in old.services:
            self._drop_member(self._endpoints, owned, key, uid)
        identity = (old.trust_domain, old.namespace, old.service_account)
        self._drop_member(self._by_identity, owned, identity, uid)

    # -- services

    def put_service(self, s: Service) -> None:
        key = s.key
        if self._services.get(key) == s:
            return
        self.remove_address(key)
        self.changed = True
        self._services[key] = s
        if self._fresh:
            return
        for a in s.addresses:
            _add_to_tuple(self._svc_by_vip, (a.network, a.address), key)

    def _remove_service(self, key: str) -> None:
        old = self._services.pop(key, None)
        if old is None:
            return
        self.changed = True
        if self._fresh:
            return
        for a in old.addresses:
            _drop_from_tuple(self._svc_by_vip, (a.network, a.address), key)

    def remove_address(self, name: str) -> None:
        """Remove the workload (uid) or service (``ns/hostname``) called ``name``; unknown names are a no-op."""
        if self._finished:
            raise RuntimeError("StateEditor.finish() was already called; edit the new state instead")
        self._remove_workload(name)
        self._remove_service(name)

    # -- policies

    def put_policy(self, a: Authorization) -> None:
        key = a.key
        if self._policies.get(key) == a:
            return
        self.remove_policy(key)
        self.changed = True
        self._policies[key] = a
        if a.scope == Scope.GLOBAL:
            self._d("_global_policies")[key] = None
        elif a.scope == Scope.NAMESPACE:
            self._add_member(self._d("_ns_policies"), self._owned, a.namespace, key)

    def remove_policy(self, key: str) -> None:
        """Remove the policy ``ns/name``; an unknown name is a no-op."""
        if self._finished:
            raise RuntimeError("StateEditor.finish() was already called; edit the new state instead")
        old = self._policies.pop(key, None)
        if old is None:
            return
        self.changed = True
        if old.scope == Scope.GLOBAL:
            del self._d("_global_policies")[key]
        elif old.scope == Scope.NAMESPACE:
            self._drop_member(self._d("_ns_policies"), self._owned, old.namespace, key)

    def _build(self, version: int) -> ProxyState:
        if self._fresh:
            # A fresh editor's maps are plain dicts (see __init__).
            workloads = cast(dict[str, Workload], self._workloads)
            self._maps.update(_index_fresh(workloads, cast(dict[str, Service], self._services)))
        parts: dict[str, Any] = {
            f: FrozenMap.adopt(m) if isinstance(m, dict) else m.finish() for f, m in self._maps.items()
        }
        parts.update(self._dicts)
        return ProxyState._create(version, parts)
