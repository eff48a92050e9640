"""The store interface: what istiod_lite, ambientctl and the local cluster may ask of cluster state.

Shaped like the Kubernetes API so a Kubernetes backend can implement it later: objects keyed by
(kind, namespace, name), a global revision that increases with every write, ``resourceVersion`` = the
revision of an object's last write, and a watch that replays changes in revision order from any
revision still in the change log. Writes are atomic per call: ``apply`` of ten resources writes ten or
none. Backends validate nothing: callers pass resources built by ``schema.build_resource``.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal, Protocol

import msgspec

from .resource import Resource, ResourceRef

ApplyAction = Literal["created", "configured", "unchanged"]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class ApplyResult(msgspec.Struct, frozen=True):
    """What ``apply`` (or ``set_labels``) did to one resource."""

    ref: ResourceRef
    action: ApplyAction
    # The resource as stored after the call (with its resource_version and uid).
    resource: Resource


class WatchEvent(msgspec.Struct, frozen=True):
    """One change, as the watch and ``changes_since`` deliver it, in increasing ``revision``."""

    type: EventType
    # The object after the change; for DELETED, the last stored object with resource_version = revision.
    resource: Resource
    revision: int


class Store(Protocol):
    """Cluster state: current objects plus an ordered change log."""

    def apply(self, resources: Iterable[Resource]) -> builtins.list[ApplyResult]:
        """Create or replace each resource, in order, in one transaction (all or nothing).

        Replacing keeps the uid. A resource given without ``status`` keeps the stored status (status is
        a subresource, as in Kubernetes); one given with a status replaces it. A resource whose labels,
        annotations, spec and status equal the stored ones is ``unchanged`` and writes nothing.
        """
        ...

    def delete(self, refs: Iterable[ResourceRef]) -> builtins.list[ResourceRef]:
        """Delete the resources that exist, in one transaction; returns the refs actually deleted."""
        ...

    def get(self, ref: ResourceRef) -> Resource | None: ...

    def list(self, kind: str | None = None, namespace: str | None = None) -> builtins.list[Resource]:
        """Current objects, optionally of one kind and/or namespace, sorted by (kind, namespace, name)."""
        ...

    def set_labels(
        self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str], *, create: bool = False
    ) -> ApplyResult:
        """Read-modify-write of one object's labels in one transaction.

        ``create=True`` creates a missing object (empty spec) first, as ``namespace enable`` needs;
        otherwise a missing object raises ``ResourceNotFound``.
        """
        ...

    def set_annotations(
        self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str]
    ) -> ApplyResult:
        """Read-modify-write of one object's annotations in one transaction (status-like marks such as
        the node agent's ``ambient.istio.io/redirection``), leaving every other field as stored.

        A missing object raises ``ResourceNotFound``.
        """
        ...

    def set_status(self, ref: ResourceRef, status: Mapping[str, Any]) -> ApplyResult:
        """Replace one object's ``status`` in one transaction, leaving every other field as stored (the
        status subresource: a controller's write never reverts a concurrent spec change).

        Equal status writes nothing (``unchanged``). A missing object raises ``ResourceNotFound``.
        """
        ...

    def snapshot(
        self, kind: str | None = None, namespace: str | None = None
    ) -> tuple[int, builtins.list[Resource]]:
        """``(revision, list(kind, namespace))`` read consistently: start a watch from that revision."""
        ...

    def revision(self) -> int:
        """The revision of the latest write (0 for an empty store)."""
        ...

    def changes_since(self, revision: int) -> builtins.list[WatchEvent]:
        """Every change after ``revision``, in order."""
        ...

    def watch(self, since: int, poll_interval: float = 0.05) -> AsyncIterator[WatchEvent]:
        """Changes after ``since``, in order, forever, including other processes' writes.

        List-then-watch without gaps or repeats: ``rev, objs = store.snapshot(); watch(rev)``.
        """
        ...

    def close(self) -> None: ...
