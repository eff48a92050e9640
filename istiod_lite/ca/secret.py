"""The CA's root on Kubernetes: kept in a Secret, as istiod keeps it, so every replica signs with the same
root and a restarted replica keeps it.

Role: ``load_secret_root`` returns the ``CaMaterial`` every istiod-lite replica builds its CA from when
the store is Kubernetes (``STORE=kubernetes``), read from the namespace istiod-lite runs in:

1. ``cacerts`` (Istio's plug-in CA Secret) when it exists: ``ca-cert.pem`` and ``ca-key.pem`` required,
   ``cert-chain.pem`` and ``root-cert.pem`` optional; checked exactly as plugged-in files are
   (``storage.material_from_pem``).
2. Else ``istio-ca-secret`` (Istio's self-signed root Secret, type ``istio.io/ca-root``): ``ca-cert.pem``
   and ``ca-key.pem``.
3. Else a new self-signed root, created as ``istio-ca-secret``.

Invariants:
- Exactly one root is ever made: creating the Secret is the API server's atomic create, so of replicas
  starting at once one wins and the others (409 AlreadyExists) read the winner's; nobody overwrites it.
- A Secret that exists but is damaged (a key missing, not PEM, key and certificate that do not belong
  together) is refused with the Secret and key named and what to do; it is never replaced, since a new
  root invalidates every certificate in the mesh.
- Only ``get`` and ``create`` on Secrets in that namespace (``SECRET_VERBS``; the manifests' Role).

The root is then published, as Istio's istiod publishes it, in the ConfigMap ``istio-ca-root-cert``
(key ``root-cert.pem``) of that namespace, where ztunnel mounts it to verify istiod (``CA_ROOT_CA``):
created when missing, updated only when its root differs. Replicas publish the same root, so their
writes agree; a conflict is re-read and retried. A failure to publish is logged with the reason and does
not stop istiod-lite (its CA is fine; ztunnels that cannot read the root say so).

``RootPublisher`` then keeps that ConfigMap in every namespace, as Istio's namespace controller does
(waypoint pods mount it wherever they run): on a namespace's creation, on taking the leader Lease, when
the root changes (``set_root``) and every ``RESYNC_SECONDS`` (a deleted or edited ConfigMap comes back;
one cluster-wide list, then writes only where the root is missing or differs). Only the leader writes
(``is_leader`` is read before each pass). Kubernetes' own namespaces (``SKIPPED_NAMESPACES``, as Istio
skips them) and terminating ones are left alone. A user's edits are not fought beyond the root's key:
an update rewrites ``data["root-cert.pem"]`` and keeps the other keys, labels and annotations. One
namespace's failure is logged and counted and retried on the next pass; the others are published.
Verbs: ``CONFIGMAP_VERBS`` (get, list, create, update on configmaps in every namespace: the manifests'
ClusterRole ``istiod-lite-ca-root``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import copy
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter

from istiod_lite.ca.errors import CaMaterialInvalid, CaStorageError
from istiod_lite.ca.storage import CaMaterial, Named, generate_root, material_from_pem
from meshcore.store.errors import StoreUnavailable
from meshcore.store.kubernetes import ApiFailure, api_call
from meshcore.store.resource import Resource
from meshcore.tls import certs

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, Configuration

log = structlog.get_logger("istiod_lite.ca")

CA_SECRET = "istio-ca-secret"  # the self-signed root (Istio's name, keys and type)
PLUGGED_SECRET = "cacerts"  # an operator's CA (Istio's plug-in CA Secret)
CA_SECRET_TYPE = "istio.io/ca-root"
CA_CERT_KEY = "ca-cert.pem"
CA_KEY_KEY = "ca-key.pem"
CHAIN_KEY = "cert-chain.pem"
ROOT_KEY = "root-cert.pem"
SECRET_VERBS: tuple[str, ...] = ("get", "create")
SECRETS = "/api/v1/namespaces/{namespace}/secrets"
ROOT_CONFIGMAP = "istio-ca-root-cert"  # Istio's name; key root-cert.pem
CONFIGMAP_VERBS: tuple[str, ...] = ("get", "list", "create", "update")
CONFIGMAPS = "/api/v1/namespaces/{namespace}/configmaps"
ALL_CONFIGMAPS = "/api/v1/configmaps"
PUBLISH_ATTEMPTS = 3
RESYNC_SECONDS = 60.0
# Kubernetes' own namespaces: Istio's namespace controller publishes nothing there.
SKIPPED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})
PART_OF_LABEL = {"app.kubernetes.io/part-of": "ambient-mesh"}


def load_secret_root(
    configuration: Configuration, *, namespace: str, trust_domain: str, now: datetime, timeout: float = 30.0
) -> CaMaterial:
    """The CA material from ``cacerts`` or ``istio-ca-secret`` in ``namespace`` (that one created when
    neither exists). Blocks the caller (it runs before anything is served); safe inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ca-secret") as pool:
        return pool.submit(
            asyncio.run, _load(configuration, namespace, trust_domain, now, request_timeout=timeout)
        ).result()


async def _load(
    configuration: Configuration, namespace: str, trust_domain: str, now: datetime, *, request_timeout: float
) -> CaMaterial:
    from kubernetes_asyncio.client import ApiClient

    async with ApiClient(configuration) as api:
        material = await _load_material(api, namespace, trust_domain, now, request_timeout=request_timeout)
        roots_pem = "".join(certs.cert_to_pem(c) for c in material.roots)
        await publish_root(api, namespace, roots_pem, request_timeout=request_timeout)
        return material


async def publish_root(api: ApiClient, namespace: str, roots_pem: str, *, request_timeout: float = 30.0) -> bool:
    """Make ``istio-ca-root-cert`` in ``namespace`` hold ``roots_pem`` (see module doc); False when it could not."""
    where = f"{namespace}/{ROOT_CONFIGMAP}"
    try:
        current = await _get_root_configmap(api, namespace, request_timeout)
        return await _write_root(api, namespace, roots_pem, current, request_timeout=request_timeout)
    except ApiFailure as e:
        log.warning("CA root not published; ztunnels cannot verify istiod until it is", configmap=where,
                    error=f"{e}{_rbac_hint(e)}")
    except StoreUnavailable as e:
        log.warning("CA root not published; ztunnels cannot verify istiod until it is", configmap=where,
                    error=str(e))
    return False


async def _get_root_configmap(api: ApiClient, namespace: str, request_timeout: float) -> dict[str, Any] | None:
    path = f"{CONFIGMAPS.format(namespace=namespace)}/{ROOT_CONFIGMAP}"
    try:
        found: dict[str, Any] = await api_call(api, "GET", path, request_timeout=request_timeout)
    except ApiFailure as e:
        if e.status == 404:
            return None
        raise
    return found


def _holds(configmap: dict[str, Any] | None, roots_pem: str) -> bool:
    data = (configmap or {}).get("data")
    return isinstance(data, dict) and data.get(ROOT_KEY) == roots_pem


async def _write_root(
    api: ApiClient, namespace: str, roots_pem: str, current: dict[str, Any] | None, *, request_timeout: float
) -> bool:
    """Create the ConfigMap, or rewrite only its root key (other keys, labels and annotations kept); a
    conflict (another writer first) is re-read and retried. Raises ``ApiFailure`` for anything else."""
    where = f"{namespace}/{ROOT_CONFIGMAP}"
    collection = CONFIGMAPS.format(namespace=namespace)
    for _ in range(PUBLISH_ATTEMPTS):
        if _holds(current, roots_pem):
            return True
        try:
            if current is None:
                body: dict[str, Any] = {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace, "labels": dict(PART_OF_LABEL)},
                    "data": {ROOT_KEY: roots_pem},
                }
                await api_call(api, "POST", collection, body=body, request_timeout=request_timeout)
                log.info("CA root published", configmap=where)
                return True
            # As read (a list's items carry no kind), with the root's key rewritten; resourceVersion kept
            # so a concurrent edit conflicts instead of being overwritten.
            body = copy.deepcopy(current)
            data = body.get("data")
            body.update(apiVersion="v1", kind="ConfigMap",
                        data={**(data if isinstance(data, dict) else {}), ROOT_KEY: roots_pem})
            body.get("metadata", {}).pop("managedFields", None)
            await api_call(api, "PUT", f"{collection}/{ROOT_CONFIGMAP}", body=body, request_timeout=request_timeout)
            log.info("CA root published (replaced a different root)", configmap=where)
            return True
        except ApiFailure as e:
            if e.status != 409:
                raise
        current = await _get_root_configmap(api, namespace, request_timeout)  # another writer was first
    log.warning("CA root not published: it kept changing under us", configmap=where)
    return False


def _rbac_hint(e: ApiFailure) -> str:
    if e.status != 403:
        return ""
    return f" (RBAC: istiod-lite's ClusterRole needs {', '.join(CONFIGMAP_VERBS)} on configmaps)"


class RootPublisher:
    """Keeps ``istio-ca-root-cert`` holding the mesh root in every namespace (module doc). ``run`` is one
    task of istiod-lite's loop; the other methods are called from that loop and never block."""

    def __init__(
        self,
        api: ApiClient,
        roots_pem: str,
        *,
        namespaces: Callable[[], Iterable[Resource]],
        is_leader: Callable[[], bool],
        metrics: CollectorRegistry | None = None,
        resync_seconds: float = RESYNC_SECONDS,
        request_timeout: float = 30.0,
    ) -> None:
        self.api = api
        self._roots = roots_pem
        self._namespaces = namespaces
        self._is_leader = is_leader
        self._resync = resync_seconds
        self._timeout = request_timeout
        self._pending: set[str] = set()
        self._everywhere = True  # the first pass covers every namespace
        self._wake = asyncio.Event()
        self.passes = 0  # passes over every namespace done (for tests and debugging)
        self.declined = 0  # turns with work left undone because this replica does not lead
        self._writes = Counter("istiod_lite_root_configmap_writes",
                               "istio-ca-root-cert ConfigMaps created or whose root was rewritten",
                               registry=metrics)
        self._failures = Counter("istiod_lite_root_configmap_failures",
                                 "istio-ca-root-cert ConfigMaps that could not be published (retried)",
                                 registry=metrics)

    def namespaces_added(self, names: Iterable[str]) -> None:
        """New namespaces: publish there on the next turn."""
        before = len(self._pending)
        self._pending.update(names)
        if len(self._pending) > before:
            self._wake.set()

    def everywhere(self) -> None:
        """Check every namespace on the next turn (on taking the lease)."""
        self._everywhere = True
        self._wake.set()

    def set_root(self, roots_pem: str) -> None:
        """A new root: publish it everywhere."""
        if roots_pem != self._roots:
            self._roots = roots_pem
            self.everywhere()

    async def run(self) -> None:
        while True:
            if not (self._everywhere or self._pending):
                try:
                    await asyncio.wait_for(self._wake.wait(), self._resync)
                except TimeoutError:
                    self._everywhere = True
            self._wake.clear()
            if not self._is_leader():  # taking the lease calls everywhere()
                self._everywhere = False
                self._pending.clear()
                self.declined += 1
                continue
            try:
                if self._everywhere:
                    self._everywhere = False
                    self._pending.clear()
                    await self._publish_everywhere()
                    self.passes += 1
                else:
                    names, self._pending = sorted(self._pending), set()
                    wanted = {ns.name for ns in self._wanted()}
                    for name in names:
                        if name in wanted and self._is_leader():
                            await self._publish(name)
            except (ApiFailure, StoreUnavailable) as e:
                self._failures.inc()
                log.warning("CA root ConfigMaps not checked; retrying on the next pass",
                            error=f"{e}{_rbac_hint(e) if isinstance(e, ApiFailure) else ''}",
                            retry_in=self._resync)

    def _wanted(self) -> list[Resource]:
        return [ns for ns in self._namespaces()
                if ns.name not in SKIPPED_NAMESPACES and ns.status.get("phase") != "Terminating"]

    async def _publish_everywhere(self) -> None:
        listed = await api_call(self.api, "GET", ALL_CONFIGMAPS,
                                query={"fieldSelector": f"metadata.name={ROOT_CONFIGMAP}"},
                                request_timeout=self._timeout)
        existing = {str(item["metadata"]["namespace"]): item for item in listed.get("items") or ()}
        for ns in self._wanted():
            if not self._is_leader():
                return
            current = existing.get(ns.name)
            if not _holds(current, self._roots):
                await self._publish(ns.name, current)

    async def _publish(self, namespace: str, *listed: dict[str, Any] | None) -> None:
        """One namespace (``listed``: its ConfigMap as a list returned it, None for none; else it is read);
        a failure is logged and counted, never raised (the other namespaces go on)."""
        try:
            current = listed[0] if listed else await _get_root_configmap(self.api, namespace, self._timeout)
            if _holds(current, self._roots):
                return
            if await _write_root(self.api, namespace, self._roots, current, request_timeout=self._timeout):
                self._writes.inc()
                return
        except ApiFailure as e:
            if e.status == 404 or (e.status == 403 and "terminat" in e.message):
                return  # the namespace is gone or going
            log.warning("CA root not published in a namespace; retrying on the next pass",
                        configmap=f"{namespace}/{ROOT_CONFIGMAP}", error=f"{e}{_rbac_hint(e)}")
        except StoreUnavailable as e:
            log.warning("CA root not published in a namespace; retrying on the next pass",
                        configmap=f"{namespace}/{ROOT_CONFIGMAP}", error=str(e))
        self._failures.inc()


async def _load_material(
    api: ApiClient, namespace: str, trust_domain: str, now: datetime, *, request_timeout: float
) -> CaMaterial:
    path = SECRETS.format(namespace=namespace)

    async def get(name: str) -> dict[str, Any] | None:
        try:
            return await api_call(api, "GET", f"{path}/{name}", request_timeout=request_timeout)
        except ApiFailure as e:
            if e.status == 404:
                return None
            raise _api_problem(e, f"read Secret {namespace}/{name}") from None

    plugged = await get(PLUGGED_SECRET)
    if plugged is not None:
        material = _from_secret(plugged, f"{namespace}/{PLUGGED_SECRET}", plugged=True)
        log.info("CA from the plug-in Secret", secret=f"{namespace}/{PLUGGED_SECRET}")
        return material
    existing = await get(CA_SECRET)
    if existing is not None:
        return _from_secret(existing, f"{namespace}/{CA_SECRET}", plugged=False)
    made = generate_root(trust_domain=trust_domain, now=now)
    body = {
        "apiVersion": "v1", "kind": "Secret", "type": CA_SECRET_TYPE,
        "metadata": {"name": CA_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "ambient-mesh"}},
        "data": {
            CA_CERT_KEY: _b64(certs.cert_to_pem(made.cert)),
            CA_KEY_KEY: _b64(certs.key_to_pem(made.key)),
            CHAIN_KEY: "",
            ROOT_KEY: "",
        },
    }
    try:
        await api_call(api, "POST", path, body=body, request_timeout=request_timeout)
    except ApiFailure as e:
        if e.status != 409:
            raise _api_problem(e, f"create Secret {namespace}/{CA_SECRET}") from None
        # Another replica created it first: use that one (never ours, never overwrite).
        again = await get(CA_SECRET)
        if again is None:
            raise CaStorageError(
                f"Secret {namespace}/{CA_SECRET} was created by another replica and then deleted; restart "
                "istiod-lite once the other replica is running"
            ) from None
        return _from_secret(again, f"{namespace}/{CA_SECRET}", plugged=False)
    log.info("CA root created", secret=f"{namespace}/{CA_SECRET}", trust_domain=trust_domain)
    return CaMaterial(key=made.key, cert=made.cert, chain=(), roots=made.roots,
                      source=f"Secret {namespace}/{CA_SECRET} (created)")


def _from_secret(secret: dict[str, Any], where: str, *, plugged: bool) -> CaMaterial:
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise CaMaterialInvalid(f"Secret {where}: data is not a map of keys")

    def part(key: str, required: bool) -> Named | None:
        raw = data.get(key)
        if raw in (None, ""):
            if required:
                raise CaMaterialInvalid(
                    f"Secret {where} has no {key!r} (it needs {CA_CERT_KEY} and {CA_KEY_KEY}"
                    f"{f', optionally {CHAIN_KEY} and {ROOT_KEY}' if plugged else ''}); restore it from a backup"
                    f"{'' if plugged else ' (only if there is none: delete it to make a new root, which invalidates every certificate issued so far)'}"
                )
            return None
        try:
            return f"Secret {where} key {key}", base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            raise CaMaterialInvalid(f"Secret {where} key {key}: not base64 (as a Secret's data must be)") from None

    cert, key = part(CA_CERT_KEY, True), part(CA_KEY_KEY, True)
    assert cert is not None and key is not None
    material = material_from_pem(cert=cert, key=key, chain=part(CHAIN_KEY, False), root=part(ROOT_KEY, False))
    return CaMaterial(key=material.key, cert=material.cert, chain=material.chain, roots=material.roots,
                      source=f"Secret {where}")


def _api_problem(e: ApiFailure, what: str) -> CaStorageError:
    hint = " (RBAC: istiod-lite's Role needs get and create on secrets)" if e.status == 403 else ""
    return CaStorageError(f"cannot {what}: {e}{hint}")


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode("ascii")).decode("ascii")


__all__ = ["CA_SECRET", "CONFIGMAP_VERBS", "PLUGGED_SECRET", "ROOT_CONFIGMAP", "SECRET_VERBS", "RootPublisher",
           "load_secret_root",
           "publish_root"]
