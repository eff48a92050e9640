"""Leader election with a coordination.k8s.io/v1 Lease, as Kubernetes controllers do it.

Role: among istiod-lite replicas, one at a time runs the controllers and writes status; every replica
serves xDS and the CA. ``LeaderElector.run()`` tries to take or renew the Lease every ``retry_period``;
``is_leader`` and the ``on_change`` callback say what it holds.

Invariants (the client-go algorithm, written from the Lease API's fields):
- A Lease held by another identity is taken only after ``lease_duration`` has passed on *this* replica's
  monotonic clock since it last saw the Lease record change (never by comparing the holder's wall-clock
  ``renewTime`` with ours, so clock skew between nodes cannot make two leaders).
- Every take or renew is a conditional update (the Lease's resourceVersion); losing the race is a 409 and
  this replica stays a follower.
- A leader that cannot renew within ``renew_deadline`` (< ``lease_duration``) steps down before anyone
  else may take over; one that sees another holder steps down at once.
- ``release()`` (on a clean stop) empties ``holderIdentity`` so a follower takes over at its next try
  instead of after the lease expires.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from meshcore.store.errors import StoreUnavailable
from meshcore.store.kubernetes import ApiFailure, api_call

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
# The RBAC verbs the calls below make on Leases (GET to read, POST to create the first time, PUT to take,
# renew and release); the manifests' Role grants exactly these, and a test checks them against the calls.
LEASE_VERBS: tuple[str, ...] = ("get", "create", "update")


def lease_rbac_rules() -> list[dict[str, Any]]:
    """The namespaced Role rules leader election needs (in the Lease's namespace)."""
    return [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": list(LEASE_VERBS)}]


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    identity: str  # this replica (its pod name)
    namespace: str = "istio-system"
    name: str = "istiod-lite-leader"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs this replica's identity (its pod name)")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs retry_period < renew_deadline < lease_duration "
                f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: ApiClient,
        settings: LeaseSettings,
        *,
        on_change: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self.settings = settings
        self._on_change = on_change
        self._monotonic = monotonic
        self._wall = wall
        self._path = LEASES.format(namespace=settings.namespace)
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.is_leader = False
        self.attempts = 0
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()

    @property
    def api(self) -> ApiClient:
        """The API client this elector calls (its owner closes it)."""
        return self._api

    async def wait_for(self, leader: bool) -> None:
        """Return once this replica is (``True``) or is not (``False``) the leader."""
        await (self._leading if leader else self._following).wait()

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        (self._leading if leader else self._following).set()
        (self._following if leader else self._leading).clear()
        log.info("leadership " + ("acquired" if leader else "lost"), identity=self.settings.identity,
                 lease=f"{self.settings.namespace}/{self.settings.name}")
        if self._on_change is not None:
            self._on_change(leader)

    async def run(self) -> None:
        """Take or renew the Lease every ``retry_period`` (jittered while following), forever."""
        s = self.settings
        rng = random.Random()
        while True:
            self.attempts += 1
            held_by_other = False
            try:
                ok, held_by_other = await self._try_acquire_or_renew()
            except (ApiFailure, StoreUnavailable) as e:
                log.warning("leader election: the Lease could not be read or written", error=str(e))
                ok = False
            now = self._monotonic()
            if ok:
                self._last_renew = now
                self._set(True)
            elif self.is_leader and (held_by_other or now - self._last_renew > s.renew_deadline):
                self._set(False)
            delay = s.retry_period if self.is_leader else s.retry_period * (1 + 0.2 * rng.random())
            await asyncio.sleep(delay)

    async def _try_acquire_or_renew(self) -> tuple[bool, bool]:
        """(took or renewed it, another identity holds it)."""
        s = self.settings
        now = _micro_time(self._wall())
        try:
            lease = await api_call(self._api, "GET", f"{self._path}/{s.name}")
        except ApiFailure as e:
            if e.status != 404:
                raise
            spec = {"holderIdentity": s.identity, "leaseDurationSeconds": max(1, round(s.lease_duration)),
                    "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec}
            try:
                await api_call(self._api, "POST", self._path, body=body)
            except ApiFailure as e2:
                if e2.status == 409:  # another replica created it first
                    return False, True
                raise
            self._observe(spec)
            return True, False
        record: dict[str, Any] = dict(lease.get("spec") or {})
        if record != self._observed:
            self._observe(record)
        holder = str(record.get("holderIdentity") or "")
        if holder and holder != s.identity and self._monotonic() < self._observed_at + s.lease_duration:
            return False, True
        spec = dict(record)
        if holder != s.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(record.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec.update(holderIdentity=s.identity, renewTime=now, leaseDurationSeconds=max(1, round(s.lease_duration)))
        lease["spec"] = spec
        try:
            await api_call(self._api, "PUT", f"{self._path}/{s.name}", body=lease)
        except ApiFailure as e:
            if e.status == 409:  # changed since we read it: another replica renewed or took it
                return False, holder != s.identity
            raise
        self._observe(spec)
        return True, False

    def _observe(self, record: dict[str, Any]) -> None:
        self._observed = dict(record)
        self._observed_at = self._monotonic()

    async def release(self) -> None:
        """Give the Lease up (a clean stop): a follower takes over at its next try."""
        if not self.is_leader:
            return
        s = self.settings
        try:
            lease = await api_call(self._api, "GET", f"{self._path}/{s.name}")
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") == s.identity:
                spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time(self._wall()))
                lease["spec"] = spec
                await api_call(self._api, "PUT", f"{self._path}/{s.name}", body=lease)
        except (ApiFailure, StoreUnavailable) as e:
            log.warning("leader election: the Lease could not be released; it expires instead", error=str(e))
        self._set(False)
