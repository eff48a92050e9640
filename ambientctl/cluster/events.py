"""Event bookkeeping for the local cluster's kubelet and controllers: what ``kubectl describe`` users read
under ``Events:`` (Scheduled, Pulled/Created/Started, Killing, BackOff, Unhealthy, ScalingReplicaSet ...),
as v1 ``Event`` objects of the store.

``EventBook`` is pure (no store, no I/O): components ``record`` what happened to an object; the caller
takes the pending writes with ``take`` and stores them in one write where it already writes statuses (``flush``, once per
sync pass), so recording never costs a store transaction of its own. Rules, as Kubernetes' event recorder and API server
keep them:

* a repeat of the same type, reason and message (same source) on the same object updates that Event's
  ``count`` and ``lastTimestamp`` instead of adding one (``firstTimestamp`` stays);
* at most ``MAX_EVENTS_PER_OBJECT`` Events per involved object: recording one more deletes the one seen
  longest ago;
* an Event not seen for ``EVENT_TTL`` (the API server's default ``--event-ttl``, 1 h) is deleted;

so the Events in the store are bounded by the objects' number, whatever runs. ``seed`` adopts the Events
already stored (of an earlier kubelet, or a user's ``apply``), so those follow the same rules. Event names
are ``<object name>.<hex of the wall clock in ns>`` as the recorder makes them. Each process's book adopts
only the stored Events of its own components (``adopts``), so two books never expire each other's.
Thread-safe: one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
import structlog

from meshcore.store import Resource, ResourceRef, Store, StoreError

log = structlog.get_logger("ambientctl.cluster.events")

EVENT_TTL = timedelta(hours=1)
MAX_EVENTS_PER_OBJECT = 50
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The source component of the Deployment controller's Events (kube-controller-manager's name for it).
DEPLOYMENT_CONTROLLER = "deployment-controller"

EventKind = Literal["Normal", "Warning"]


class InvolvedObject(msgspec.Struct, frozen=True):
    """The object an Event is about (v1 ObjectReference); ``field_path`` names a container
    (``spec.containers{web}``)."""

    kind: str
    namespace: str
    name: str
    uid: str = ""
    field_path: str = ""

    @classmethod
    def of(cls, resource: Resource, *, container: str = "", init: bool = False) -> InvolvedObject:
        field_path = f"spec.{'initContainers' if init else 'containers'}{{{container}}}" if container else ""
        return cls(resource.kind, resource.namespace, resource.name, resource.uid, field_path)

    def to_dict(self) -> dict[str, str]:
        out = {"kind": self.kind, "namespace": self.namespace, "name": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


# (involved object's kind, namespace, name, uid, fieldPath, type, reason, message, component)
_Key = tuple[str, str, str, str, str, str, str, str, str]
# (kind, namespace, name, uid): what the per-object cap counts
_Object = tuple[str, str, str, str]


class EventBook:
    """The Events one process records (see the module doc)."""

    def __init__(
        self,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ttl: timedelta = EVENT_TTL,
        per_object: int = MAX_EVENTS_PER_OBJECT,
        host: str = "",
        adopts: Callable[[str], bool] = lambda _component: True,
    ) -> None:
        """``adopts(source component)``: which stored Events ``seed`` takes on (each Event should be kept
        by one book, the one of the component that records it, so two books never expire each other's)."""
        self._wall_clock = wall_clock
        self._ttl = ttl
        self._per_object = per_object
        self._host = host
        self._adopts = adopts
        self._lock = threading.Lock()
        self._events: dict[ResourceRef, Resource] = {}  # every Event this book keeps (stored or pending)
        self._by_key: dict[_Key, ResourceRef] = {}
        self._by_object: dict[_Object, set[ResourceRef]] = {}
        self._pending: dict[ResourceRef, Resource] = {}
        self._deleted: set[ResourceRef] = set()
        self._stored: set[ResourceRef] = set()  # handed out by ``take`` or seeded: a drop must delete them
        self._last_name = 0
        self.seeded = False  # whether ``flush`` adopted the store's Events yet

    def seed(self, stored: Iterable[Resource]) -> None:
        """Adopt Events already in the store (dedup, cap and expiry then apply to them too)."""
        with self._lock:
            for event in stored:
                if (
                    event.kind == "Event"
                    and event.ref not in self._events
                    and self._adopts(_key_of(event)[-1])
                ):
                    self._keep(event)
                    self._stored.add(event.ref)

    def record(
        self, obj: InvolvedObject, type_: EventKind, reason: str, message: str, *, component: str = "kubelet"
    ) -> Resource:
        """Note that ``reason``/``message`` happened to ``obj`` now; returns the Event as it will be stored."""
        now = self._wall_clock()
        stamp = _stamp(now)
        key: _Key = (
            obj.kind,
            obj.namespace,
            obj.name,
            obj.uid,
            obj.field_path,
            type_,
            reason,
            message,
            component,
        )
        with self._lock:
            ref = self._by_key.get(key)
            old = self._events.get(ref) if ref is not None else None
            if old is not None:
                count = old.spec.get("count")
                spec = {
                    **old.spec,
                    "count": (count if isinstance(count, int) else 1) + 1,
                    "lastTimestamp": stamp,
                }
                event = msgspec.structs.replace(old, spec=spec)
            else:
                event = self._new(obj, type_, reason, message, component, now, stamp)
            self._keep(event)
            self._pending[event.ref] = event
            self._deleted.discard(event.ref)
            self._cap(_object_of(event))
            return event

    def take(self) -> tuple[list[Resource], list[ResourceRef]]:
        """The Events to write (new or updated) and the refs to delete (expired, or over the per-object
        cap), since the last ``take``; the book forgets them as pending."""
        with self._lock:
            self._expire(self._wall_clock())
            writes = [e for ref, e in sorted(self._pending.items()) if ref in self._events]
            deletes = sorted(self._deleted)
            self._stored.update(e.ref for e in writes)
            self._stored.difference_update(deletes)
            self._pending.clear()
            self._deleted.clear()
            return writes, deletes

    def events(self) -> list[Resource]:
        """Every Event the book keeps, oldest ``lastTimestamp`` first (for tests and debugging)."""
        with self._lock:
            return sorted(self._events.values(), key=lambda e: (_last(e), e.name))

    # --- internals (called with the lock held) ----------------------------------------------------

    def _new(
        self,
        obj: InvolvedObject,
        type_: EventKind,
        reason: str,
        message: str,
        component: str,
        now: datetime,
        stamp: str,
    ) -> Resource:
        unique = max(int(now.timestamp() * 1e9), self._last_name + 1)
        self._last_name = unique
        source = {"component": component, **({"host": self._host} if self._host else {})}
        return Resource(
            kind="Event",
            name=f"{obj.name}.{unique:x}",
            namespace=obj.namespace,
            api_version="v1",
            spec={
                "involvedObject": obj.to_dict(),
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": source,
                "reportingComponent": component,
            },
        )

    def _keep(self, event: Resource) -> None:
        self._events[event.ref] = event
        self._by_key[_key_of(event)] = event.ref
        self._by_object.setdefault(_object_of(event), set()).add(event.ref)

    def _drop(self, ref: ResourceRef) -> None:
        event = self._events.pop(ref, None)
        if event is None:
            return
        key = _key_of(event)
        if self._by_key.get(key) == ref:
            del self._by_key[key]
        refs = self._by_object.get(_object_of(event))
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self._by_object[_object_of(event)]
        self._pending.pop(ref, None)
        if ref in self._stored:
            self._deleted.add(ref)

    def _cap(self, obj: _Object) -> None:
        refs = self._by_object.get(obj, set())
        if len(refs) <= self._per_object:
            return
        mine = [self._events[ref] for ref in refs]
        mine.sort(key=lambda e: (_last(e), e.name))
        for event in mine[: len(mine) - self._per_object]:
            self._drop(event.ref)

    def _expire(self, now: datetime) -> None:
        horizon = _stamp(now - self._ttl)
        for ref in [ref for ref, e in self._events.items() if _last(e) < horizon]:
            self._drop(ref)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def _last(event: Resource) -> str:
    """lastTimestamp (RFC 3339 UTC strings of one format compare in time order); "" sorts first."""
    value = event.spec.get("lastTimestamp") or event.spec.get("firstTimestamp") or event.creation_timestamp
    return value if isinstance(value, str) else ""


def _involved(event: Resource) -> dict[str, object]:
    found = event.spec.get("involvedObject")
    return found if isinstance(found, dict) else {}


def _object_of(event: Resource) -> _Object:
    obj = _involved(event)
    return (
        str(obj.get("kind", "")),
        str(obj.get("namespace", "")),
        str(obj.get("name", "")),
        str(obj.get("uid", "")),
    )


def _key_of(event: Resource) -> _Key:
    obj = _involved(event)
    source = event.spec.get("source")
    component = str(source.get("component", "")) if isinstance(source, dict) else ""
    return (
        *_object_of(event)[:4],
        str(obj.get("fieldPath", "")),
        str(event.spec.get("type", "")),
        str(event.spec.get("reason", "")),
        str(event.spec.get("message", "")),
        component,
    )


def seed(store: Store, book: EventBook) -> None:
    """Adopt the Events already stored (an earlier process's, a user's) once, before ``book`` records:
    a repeat then counts on the stored Event. A failed read is logged and tried again next time."""
    if book.seeded:
        return
    try:
        book.seed(store.list("Event"))
        book.seeded = True
    except StoreError as e:
        log.warning("stored events not read", error=str(e))


def flush(store: Store, book: EventBook) -> None:
    """Write what ``book`` recorded since the last flush in one store write (and delete the expired or
    over-the-cap Events). A failed write is logged, never raised: Events are best effort, as in
    Kubernetes."""
    seed(store, book)
    try:
        writes, deletes = book.take()
        if writes:
            store.apply(writes)
        if deletes:
            store.delete(deletes)
    except StoreError as e:
        log.warning("events not written", error=str(e))
