"""The local cluster's Deployment controller (what kube-controller-manager's Deployment and ReplicaSet
controllers do, without the ReplicaSet objects): keep ``spec.replicas`` pods of the current template.

Pods of a Deployment are named ``<deployment>-<template hash>-<5 characters>``, carry the template's
labels plus ``pod-template-hash`` (so istiod_lite names the workload after the Deployment, as Istio
does) and the annotation ``OWNER_ANNOTATION: <deployment name>`` (ownership; a pod without it is never
touched, even if the selector matches it), and the Deployment as their controlling ``ownerReferences``
entry (what ``describe`` shows as ``Controlled By``; the pods of a deleted Deployment are deleted here,
the local cluster's garbage collection). ``plan`` is pure: from the Deployment and its pods (with
readiness) it returns the next step:

* scale: create pods of the current template up to ``replicas``; delete extras (unready first, then by
  name);
* ``RollingUpdate`` (default ``maxSurge``/``maxUnavailable`` 25%, surge rounded up, unavailable down,
  as Kubernetes): new pods are created while the total stays within ``replicas + maxSurge``; old pods are
  deleted while the ready pods stay at least ``replicas - maxUnavailable`` (unready old pods go first);
* ``Recreate``: every old pod is deleted before a new one is created;
* ``paused``: nothing changes.

Each step is applied, then the controller is run again on the next change (a new pod becoming ready
lets the next old one go): a rollout converges in steps, never dropping below the availability floor.
``DeploymentController`` applies plans to the store (pods are then run by the kubelet), deletes the pods
of deleted Deployments, and writes ``status`` (replicas, updatedReplicas, readyReplicas,
availableReplicas, the ``Available``/``Progressing`` conditions).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

from meshcore.store import Resource, ResourceError, ResourceRef, Store, build_resource, spec_as
from meshcore.store.schema import DeploymentSpec, selector_matches

from .events import DEPLOYMENT_CONTROLLER, EventBook, InvolvedObject
from .events import flush as flush_events
from .events import seed as seed_events

log = structlog.get_logger("ambientctl.cluster.deployments")

OWNER_ANNOTATION = "ambientmesh.io/deployment"
TEMPLATE_HASH_LABEL = "pod-template-hash"
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet: no vowels, no 0/1/3


class OwnedPod(msgspec.Struct, frozen=True):
    name: str
    template_hash: str
    ready: bool


class Plan(msgspec.Struct, frozen=True):
    create: int  # pods of the current template to create
    delete: tuple[str, ...]  # pod names to delete, in order


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable hash of a pod template (same template, same hash; any change, a new one)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:10])


def resolve_fraction(value: int | str, replicas: int, *, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: a number, or a percentage of ``replicas`` (surge rounds up,
    unavailable rounds down, as Kubernetes)."""
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * replicas / 100
    return math.ceil(share) if round_up else math.floor(share)


def plan(spec: DeploymentSpec, current_hash: str, pods: Sequence[OwnedPod]) -> Plan:
    """The next step towards ``spec.replicas`` pods of ``current_hash`` (see the module doc)."""
    if spec.paused:
        return Plan(create=0, delete=())
    desired = spec.replicas
    new = [p for p in pods if p.template_hash == current_hash]
    old = [p for p in pods if p.template_hash != current_hash]

    def victims(group: list[OwnedPod]) -> list[OwnedPod]:
        # Unready first, then by name: deterministic, and never a serving pod while an idle one is left.
        return sorted(group, key=lambda p: (p.ready, p.name))

    strategy = spec.strategy.type if spec.strategy else "RollingUpdate"
    if not old:
        if len(new) > desired:
            return Plan(create=0, delete=tuple(p.name for p in victims(new)[: len(new) - desired]))
        return Plan(create=desired - len(new), delete=())
    if strategy == "Recreate":
        return Plan(create=0, delete=tuple(p.name for p in old))

    rolling = spec.strategy.rolling_update if spec.strategy else None
    surge = resolve_fraction(rolling.max_surge if rolling else "25%", desired, round_up=True)
    unavailable = resolve_fraction(rolling.max_unavailable if rolling else "25%", desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    create = max(0, min(desired - len(new), desired + surge - len(pods)))
    min_ready = desired - unavailable
    ready = sum(1 for p in pods if p.ready)
    deletions: list[str] = []
    for pod in victims(old):
        if not pod.ready:
            deletions.append(pod.name)  # an old pod that is not serving costs no availability
        elif ready - 1 >= min_ready:
            deletions.append(pod.name)
            ready -= 1
    # Extra new pods (scaled down mid-rollout) go too.
    if len(new) > desired:
        deletions.extend(p.name for p in victims(new)[: len(new) - desired])
    return Plan(create=create, delete=tuple(deletions))


def pod_from_template(deployment: Resource, current_hash: str, suffix: str) -> Resource:
    """A Pod of the Deployment's current template (validated as any applied Pod)."""
    template = deployment.spec.get("template") or {}
    meta = template.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), TEMPLATE_HASH_LABEL: current_hash}
    annotations = {**(meta.get("annotations") or {}), OWNER_ANNOTATION: deployment.name}
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{deployment.name}-{current_hash}-{suffix}",
            "namespace": deployment.namespace,
            "labels": labels,
            "annotations": annotations,
            **({"ownerReferences": [_controlled_by(deployment)]} if deployment.uid else {}),
        },
        "spec": template.get("spec") or {},
    }
    return build_resource(doc, source=f"deployment {deployment.namespace}/{deployment.name}")


def _controlled_by(deployment: Resource) -> dict[str, Any]:
    """The pod's owner reference: the Deployment itself (Kubernetes names its ReplicaSet; there is none
    here), so ``describe`` shows ``Controlled By``. Ownership is still read from ``OWNER_ANNOTATION``."""
    return {"apiVersion": deployment.api_version or "apps/v1", "kind": "Deployment", "name": deployment.name,
            "uid": deployment.uid, "controller": True, "blockOwnerDeletion": True}


def random_suffix(rng: random.Random) -> str:
    return "".join(rng.choice(_SUFFIX_ALPHABET) for _ in range(5))


def deployment_status(spec: DeploymentSpec, current_hash: str, pods: Sequence[OwnedPod]) -> dict[str, Any]:
    new = [p for p in pods if p.template_hash == current_hash]
    ready = sum(1 for p in pods if p.ready)
    available = ready >= spec.replicas - resolve_fraction(
        spec.strategy.rolling_update.max_unavailable
        if spec.strategy and spec.strategy.rolling_update
        else "25%",
        spec.replicas,
        round_up=False,
    )
    complete = len(new) == spec.replicas == len(pods) and all(p.ready for p in new)
    return {
        "replicas": len(pods),
        "updatedReplicas": len(new),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
            },
        ],
    }


def _ready(pod: Resource) -> bool:
    conditions = pod.status.get("conditions")
    if not isinstance(conditions, list):
        return False
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


class DeploymentController:
    """Applies ``plan`` for every stored Deployment; deletes the pods of deleted ones; writes status."""

    def __init__(
        self, store: Store, *, rng: random.Random | None = None, events: EventBook | None = None
    ) -> None:
        self.store = store
        # ScalingReplicaSet Events (as kube-controller-manager's), written once per ``sync``.
        self.events = events or EventBook(adopts=lambda c: c == DEPLOYMENT_CONTROLLER)
        self._rng = rng or random.Random()
        self._suffix: Callable[[], str] = lambda: random_suffix(self._rng)

    def sync(self) -> list[str]:
        """One pass over every Deployment; returns what was done (``created ns/pod``, ``deleted ns/pod``)."""
        done: list[str] = []
        seed_events(self.store, self.events)
        deployments = {(d.namespace, d.name): d for d in self.store.list("Deployment")}
        owned: dict[tuple[str, str], list[Resource]] = {}
        for pod in self.store.list("Pod"):
            owner = pod.annotations.get(OWNER_ANNOTATION)
            if owner:
                owned.setdefault((pod.namespace, owner), []).append(pod)
        for key, pods in sorted(owned.items()):
            if key not in deployments:  # garbage collection: the owner is gone
                refs = [p.ref for p in pods]
                self.store.delete(refs)
                done.extend(f"deleted {r.namespace}/{r.name}" for r in refs)
        for key, deployment in sorted(deployments.items()):
            try:
                done.extend(self._sync_one(deployment, owned.get(key, [])))
            except ResourceError as e:
                log.warning("deployment not synced", deployment=f"{key[0]}/{key[1]}", error=str(e))
        flush_events(self.store, self.events)
        return done

    def _sync_one(self, deployment: Resource, pods: list[Resource]) -> list[str]:
        spec = spec_as(deployment, DeploymentSpec)
        current = template_hash(deployment.spec.get("template") or {})
        # A pod whose labels no longer match the selector is released (Kubernetes orphans it).
        mine = [p for p in pods if selector_matches(spec.selector, p.labels)]
        view = [OwnedPod(p.name, p.labels.get(TEMPLATE_HASH_LABEL, ""), _ready(p)) for p in mine]
        step = plan(spec, current, view)
        done: list[str] = []
        if step.delete:
            self.store.delete([ResourceRef("Pod", deployment.namespace, n) for n in step.delete])
            done.extend(f"deleted {deployment.namespace}/{n}" for n in step.delete)
            gone = set(step.delete)
            for old_hash in sorted({p.template_hash for p in view if p.name in gone}):
                left = sum(1 for p in view if p.template_hash == old_hash and p.name not in gone)
                self._scaled(deployment, "down", old_hash, left)
            view = [p for p in view if p.name not in gone]
        if step.create:
            taken = {p.name for p in mine}
            new_pods = []
            while len(new_pods) < step.create:
                pod = pod_from_template(deployment, current, self._suffix())
                if pod.name not in taken:
                    taken.add(pod.name)
                    new_pods.append(pod)
            self.store.apply(new_pods)
            done.extend(f"created {p.namespace}/{p.name}" for p in new_pods)
            view += [OwnedPod(p.name, current, False) for p in new_pods]
            self._scaled(deployment, "up", current, sum(1 for p in view if p.template_hash == current))
        status = deployment_status(spec, current, view)
        if status != deployment.status:
            self.store.set_status(deployment.ref, status)
        return done

    def _scaled(self, deployment: Resource, direction: str, pod_hash: str, to: int) -> None:
        """kube-controller-manager's ScalingReplicaSet Event (the replica set is named as Kubernetes names
        it, ``<deployment>-<template hash>``: this controller keeps no ReplicaSet objects)."""
        self.events.record(
            InvolvedObject.of(deployment),
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {deployment.name}-{pod_hash} to {to}",
            component=DEPLOYMENT_CONTROLLER,
        )


def replace_replicas(deployment: Resource, replicas: int) -> Resource:
    """The Deployment with ``spec.replicas`` set (what ``ambientctl scale`` writes)."""
    return msgspec.structs.replace(deployment, spec={**deployment.spec, "replicas": replicas})
