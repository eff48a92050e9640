"""The waypoint controller: keeps each waypoint Gateway's ServiceAccount, Deployment and Service in the
store, and its status, in line with the Gateway (the store-writing shell around ``waypoints.objects``).

istiod_lite runs exactly one (one writer, the leader): its store watch loop hands every batch of changes
to ``observe`` and then calls ``reconcile_pending``; at start ``resync`` reconciles every Gateway and
deletes what the controller made for Gateways that no longer exist (a Gateway deleted while istiod_lite
was down).

Reconciling one Gateway reads it and what the controller made for it from the store, then writes only
the differences: refuse (``Programmed=False``, ``NameConflict``) when a Deployment or Service of the
Gateway's name exists that the controller did not make; create the ServiceAccount if missing (or add
the owner reference to one it made before references were kept); create the Deployment, or update it when its selector or pod template no longer holds the wanted one (the
cluster's Deployment controller then rolls the pods; a user's ``replicas`` is kept); delete stale
managed pods no Deployment made (an older version's bare pods: the upgrade migration) once a pod of the
Deployment is ready (until then they serve and count for the status); create or fix the
Service (keeping the cluster IP the allocator wrote back); write the status, which follows the
Deployment's pods (the same code path on Kubernetes and on the local cluster, whose Deployment
controller runs the template), with ``set_status`` when it changed. Re-running changes nothing
(idempotent): the controller's own writes come back through the watch and reconcile to no-ops. A deleted
or refused Gateway has everything the controller made for it deleted (a ServiceAccount only if the
controller made it); the Deployment's pods go with the Deployment (the cluster's garbage collection).
Everything made carries the Gateway as its controlling owner reference, so on Kubernetes the garbage
collector also deletes it with the Gateway (while istiod-lite is down, say); the controller's own deletion
and the collector's agree (whichever comes second finds nothing).

A Gateway whose reconcile fails (the store is locked, say) is retried after ``RETRY_SECONDS`` without
holding up the others; each failure is logged and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, Counter

from istiod_lite.registry.waypoints import GATEWAY_NAME_LABEL, gateway_refusal, is_waypoint_gateway
from istiod_lite.waypoints.objects import (
    TEMPLATE_HASH_LABEL,
    ControllerSettings,
    deployment_update,
    desired,
    gateway_status,
    is_bare_pod,
    is_managed,
    pod_ready,
    same_status,
    service_account_update,
    service_update,
)
from meshcore.store.base import Store
from meshcore.store.errors import ResourceNotFound, StoreError
from meshcore.store.resource import Resource, ResourceRef

log = structlog.get_logger("istiod_lite.waypoints")

RETRY_SECONDS = 1.0
# What the controller makes (and deletes). "Pod": only stale bare pods; a Deployment's pods are its own.
OWNED_KINDS = ("Deployment", "Pod", "Service", "ServiceAccount")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WaypointController:
    """Reconciles waypoint Gateways with the objects made for them. Not thread-safe: one loop calls it."""

    def __init__(
        self,
        store: Store,
        settings: ControllerSettings,
        *,
        metrics: CollectorRegistry | None = None,
        clock: Callable[[], str] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._pending: dict[tuple[str, str], float] = {}  # (namespace, gateway) -> not before (monotonic)
        self._writes = Counter(
            "istiod_lite_waypoint_writes",
            "Store writes by the waypoint controller, by kind and action",
            ["kind", "action"],
            registry=metrics,
        )
        self._failures = Counter(
            "istiod_lite_waypoint_reconcile_failures",
            "Waypoint Gateways whose reconcile failed (retried)",
            registry=metrics,
        )

    # -- what to reconcile -------------------------------------------------------------------------

    def observe(self, changed: Iterable[Resource]) -> None:
        """Note the Gateways a batch of changed or deleted resources may affect (deleted: their last state)."""
        for r in changed:
            if r.kind == "Gateway":
                self._pending.setdefault((r.namespace, r.name), 0.0)
            elif r.kind in OWNED_KINDS:
                gateway = r.labels.get(GATEWAY_NAME_LABEL) or (r.name if r.kind == "ServiceAccount" else "")
                if gateway and (r.kind != "ServiceAccount" or is_managed(r)):
                    self._pending.setdefault((r.namespace, gateway), 0.0)

    def resync(self) -> None:
        """Reconcile every Gateway, and every Gateway something managed still names (orphans)."""
        for r in self._store.list("Gateway"):
            self._pending.setdefault((r.namespace, r.name), 0.0)
        for kind in OWNED_KINDS:
            for r in self._store.list(kind):
                if is_managed(r):
                    self._pending.setdefault((r.namespace, r.labels[GATEWAY_NAME_LABEL]), 0.0)
        self.reconcile_pending()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def reconcile_pending(self) -> int:
        """Reconcile every noted Gateway that is due; returns how many store writes were made."""
        now = self._monotonic()
        writes = 0
        for key, due in list(self._pending.items()):
            if due > now:
                continue
            del self._pending[key]
            try:
                writes += self.reconcile(*key)
            except StoreError as e:
                self._failures.inc()
                self._pending[key] = now + RETRY_SECONDS
                log.warning(
                    "waypoint reconcile failed; retrying",
                    gateway=f"{key[0]}/{key[1]}",
                    error=str(e),
                    retry_in=RETRY_SECONDS,
                )
        return writes

    # -- one Gateway -------------------------------------------------------------------------------

    def _owned(self, namespace: str, gateway: str) -> dict[str, list[Resource]]:
        owned: dict[str, list[Resource]] = {}
        for kind in OWNED_KINDS:
            owned[kind] = [
                r
                for r in self._store.list(kind, namespace)
                if is_managed(r)
                and r.labels.get(GATEWAY_NAME_LABEL) == gateway
                and (kind != "Pod" or is_bare_pod(r))
            ]
        return owned

    def _deployment_pods(self, namespace: str, gateway: str) -> list[Resource]:
        """The pods a Deployment made from the waypoint's template (any revision of it)."""
        return [
            p
            for p in self._store.list("Pod", namespace)
            if is_managed(p)
            and p.labels.get(GATEWAY_NAME_LABEL) == gateway
            and TEMPLATE_HASH_LABEL in p.labels
        ]

    def _not_ours(self, ref: ResourceRef, owned: list[Resource]) -> Resource | None:
        """The object of ``ref`` when it exists and the controller did not make it (never taken over)."""
        if any(r.name == ref.name for r in owned):
            return None
        existing = self._store.get(ref)
        return existing if existing is not None and not is_managed(existing) else None

    def reconcile(self, namespace: str, name: str) -> int:
        """Bring one Gateway's objects and status in line; returns the number of store writes."""
        gateway = self._store.get(ResourceRef("Gateway", namespace, name))
        owned = self._owned(namespace, name)
        if gateway is None or not is_waypoint_gateway(gateway):
            return self._delete(namespace, name, owned, "the Gateway is gone or no longer a waypoint")
        writes = 0
        refusal = gateway_refusal(gateway)
        if refusal:
            writes += self._delete(namespace, name, owned, f"the Gateway is refused: {refusal}")
            pods: list[Resource] = []
            service: Resource | None = None
        else:
            want = desired(gateway, self._settings)
            for ref, kind in ((want.deployment.ref, "Deployment"), (want.service.ref, "Service")):
                clash = self._not_ours(ref, owned[kind])
                if clash is not None:
                    return writes + self._refuse_name_clash(gateway, clash)
            account = service_account_update(self._store.get(want.service_account.ref), want.service_account)
            if account is not None:
                writes += self._apply(account)
            current_deployment = next((d for d in owned["Deployment"] if d.name == name), None)
            update = deployment_update(current_deployment, want.deployment)
            if update is not None:
                writes += self._apply(update)
            others = [d.ref for d in owned["Deployment"] if d.name != name]
            if others:
                writes += self._remove(others, f"waypoint {namespace}/{name}: not the waypoint's Deployment")
            pods = self._deployment_pods(namespace, name)
            if owned["Pod"] and any(pod_ready(p)[0] for p in pods):
                writes += self._remove(
                    [p.ref for p in owned["Pod"]],
                    f"waypoint {namespace}/{name}: a bare pod of an older version, replaced by Deployment "
                    f"{namespace}/{name} whose pod is ready",
                )
            else:
                pods += owned["Pod"]  # an older version's pod serves until the Deployment's is ready
            current_service = next((s for s in owned["Service"] if s.name == name), None)
            update = service_update(current_service, want.service)
            if update is not None:
                writes += self._apply(update)
                current_service = update
            service = current_service
        status = gateway_status(
            gateway, service=service, pods=pods, settings=self._settings, now=self._clock()
        )
        if not same_status(status, gateway.status):
            try:
                self._store.set_status(gateway.ref, status)
            except ResourceNotFound:
                return writes  # deleted meanwhile: its deletion event brings it back here
            self._writes.labels("Gateway", "status").inc()
            writes += 1
            log.info(
                "waypoint status",
                gateway=f"{namespace}/{name}",
                **{c["type"]: f"{c['status']} ({c['reason']})" for c in status.get("conditions", [])[:2]},
            )
        return writes

    def _refuse_name_clash(self, gateway: Resource, taken: Resource) -> int:
        """A Deployment or Service named like the Gateway already exists and is not ours: never take it
        over."""
        kind = taken.kind
        message = (
            f"{kind} {taken.namespace}/{taken.name} already exists and was not made for this waypoint; "
            f"the waypoint's {kind} is named after the Gateway, so rename the Gateway (e.g. "
            f"{gateway.name}-waypoint) or remove that {kind}"
        )
        previous = gateway.status.get("conditions")
        status = {
            **{k: v for k, v in gateway.status.items() if k not in ("addresses", "conditions")},
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Resource accepted"},
                {"type": "Programmed", "status": "False", "reason": "NameConflict", "message": message},
            ],
        }
        if isinstance(previous, list) and same_status(status, {**gateway.status, "conditions": previous}):
            return 0
        now = self._clock()
        for cond in status["conditions"]:
            cond["lastTransitionTime"] = now
        self._store.set_status(gateway.ref, status)
        log.warning("waypoint not programmed", gateway=f"{gateway.namespace}/{gateway.name}", reason=message)
        return 1

    def _apply(self, resource: Resource) -> int:
        result = self._store.apply([resource])[0]
        if result.action == "unchanged":
            return 0
        self._writes.labels(resource.kind, result.action).inc()
        log.info("waypoint object " + result.action, object=str(resource.ref))
        return 1

    def _remove(self, refs: list[ResourceRef], why: str) -> int:
        deleted = self._store.delete(refs)
        for ref in deleted:
            self._writes.labels(ref.kind, "deleted").inc()
            log.info("waypoint object deleted", object=str(ref), reason=why)
        return len(deleted)

    def _delete(self, namespace: str, name: str, owned: dict[str, list[Resource]], why: str) -> int:
        refs = [r.ref for kind in OWNED_KINDS for r in owned[kind]]
        return self._remove(refs, f"waypoint {namespace}/{name}: {why}") if refs else 0
