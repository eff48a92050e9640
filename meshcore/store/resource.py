"""Kubernetes-shaped resources as the store holds them.

A ``Resource`` is the parsed, validated form of one YAML document (``apiVersion``, ``kind``,
``metadata``, ``spec``, ``status``). It is an immutable value: the store, the registry and ambientctl
pass it around without copies. ``spec`` and ``status`` stay plain dicts (already validated against the
kind's schema by ``meshcore.store.schema``); ``metadata`` fields the mesh uses are lifted to attributes.
Cluster-scoped kinds (Namespace) have ``namespace == ""``.
"""

from __future__ import annotations

from typing import Any

import msgspec

# kind -> (apiVersion, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("v1", False),
    "ServiceAccount": ("v1", True),
    "Pod": ("v1", True),
    "Service": ("v1", True),
    "AuthorizationPolicy": ("security.istio.io/v1", True),
    "Gateway": ("gateway.networking.k8s.io/v1", True),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", True),
    "GRPCRoute": ("gateway.networking.k8s.io/v1", True),
    "VirtualService": ("networking.istio.io/v1", True),
    "DestinationRule": ("networking.istio.io/v1", True),
    "HTTPLocalRateLimitPolicy": ("policy.ambientmesh.io/v1alpha1", True),
    "Deployment": ("apps/v1", True),
    "Event": ("v1", True),
}

# Kinds whose fields sit at the top level of the document, beside metadata (a v1 Event's type, reason,
# message, involvedObject ...): the store keeps them in ``spec``; ``to_dict`` puts them back on top.
TOP_LEVEL_KINDS = frozenset({"Event"})


class ResourceRef(msgspec.Struct, frozen=True, order=True):
    """Identifies one resource: kind, namespace ("" for cluster-scoped), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


class OwnerReference(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One entry of Kubernetes' ``metadata.ownerReferences``: an object in the same namespace (or a
    cluster-scoped one) this object belongs to. Kubernetes' garbage collector deletes a dependent once
    every owner is gone; ``controller: true`` marks the one owner that manages it (at most one may)."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The API's shape (camelCase keys; unset flags left out)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Resource(msgspec.Struct, frozen=True):
    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    # Assigned by the store on write; 0 for a resource not yet stored.
    resource_version: int = 0
    uid: str = ""
    spec: dict[str, Any] = {}
    status: dict[str, Any] = {}
    # Kubernetes' metadata.generation: set by the store, 1 on create, +1 on each spec change (never on a
    # status, label or annotation write); controllers echo it as a condition's observedGeneration.
    # 0 for a resource not yet stored (or stored before generations were kept).
    generation: int = 0
    # Kubernetes' metadata.creationTimestamp (RFC 3339, UTC, whole seconds): set by the store when the object
    # is created and kept by every later write (a writer's value is ignored, as the API server ignores it).
    # "" for a resource not yet stored, or stored by a version that kept none (AGE shows <unknown>).
    creation_timestamp: str = ""
    # Kubernetes' metadata.ownerReferences, kept as given by the writer (the store does not check that the
    # owners exist; on Kubernetes the garbage collector deletes dependents of a deleted owner).
    owner_references: tuple[OwnerReference, ...] = ()

    @property
    def controller(self) -> OwnerReference | None:
        """The owner reference with ``controller: true`` (what ``describe`` shows as ``Controlled By``)."""
        return next((o for o in self.owner_references if o.controller), None)

    @property
    def ref(self) -> ResourceRef:
        return ResourceRef(self.kind, self.namespace, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The Kubernetes-shaped document (what ``get -o yaml`` prints)."""
        meta: dict[str, Any] = {"name": self.name}
        if self.namespace:
            meta["namespace"] = self.namespace
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.resource_version:
            meta["resourceVersion"] = str(self.resource_version)
        if self.uid:
            meta["uid"] = self.uid
        if self.generation:
            meta["generation"] = self.generation
        if self.creation_timestamp:
            meta["creationTimestamp"] = self.creation_timestamp
        if self.owner_references:
            meta["ownerReferences"] = [o.to_dict() for o in self.owner_references]
        doc: dict[str, Any] = {
            "apiVersion": self.api_version or KINDS.get(self.kind, ("v1", True))[0],
            "kind": self.kind,
            "metadata": meta,
        }
        if self.kind in TOP_LEVEL_KINDS:
            doc.update({k: v for k, v in self.spec.items() if k not in doc})
        elif self.spec:
            doc["spec"] = self.spec
        if self.status:
            doc["status"] = self.status
        return doc
