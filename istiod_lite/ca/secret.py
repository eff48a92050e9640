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
created when missing, updated only when its root differs (``CONFIGMAP_VERBS``: get, create, update).
Replicas publish the same root, so their writes agree; a conflict is re-read and retried. A failure to
publish is logged with the reason and does not stop istiod-lite (its CA is fine; ztunnels that cannot
read the root say so).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from istiod_lite.ca.errors import CaMaterialInvalid, CaStorageError
from istiod_lite.ca.storage import CaMaterial, Named, generate_root, material_from_pem
from meshcore.store.kubernetes import ApiFailure, api_call
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
CONFIGMAP_VERBS: tuple[str, ...] = ("get", "create", "update")
CONFIGMAPS = "/api/v1/namespaces/{namespace}/configmaps"
PUBLISH_ATTEMPTS = 3


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
    from meshcore.store.errors import StoreUnavailable

    path = f"{CONFIGMAPS.format(namespace=namespace)}/{ROOT_CONFIGMAP}"
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "ambient-mesh"}},
        "data": {ROOT_KEY: roots_pem},
    }
    where = f"{namespace}/{ROOT_CONFIGMAP}"
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                current: dict[str, Any] | None = await api_call(api, "GET", path, request_timeout=request_timeout)
            except ApiFailure as e:
                if e.status != 404:
                    raise
                current = None
            try:
                if current is None:
                    await api_call(api, "POST", CONFIGMAPS.format(namespace=namespace), body=body,
                                   request_timeout=request_timeout)
                    log.info("CA root published", configmap=where)
                    return True
                data = current.get("data")
                if isinstance(data, dict) and data.get(ROOT_KEY) == roots_pem:
                    return True
                meta = current.get("metadata") or {}
                body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
                await api_call(api, "PUT", path, body=body, request_timeout=request_timeout)
                log.info("CA root published (replaced a different root)", configmap=where)
                return True
            except ApiFailure as e:
                if e.status != 409:
                    raise
                body["metadata"].pop("resourceVersion", None)  # another writer was first: read again
        log.warning("CA root not published: it kept changing under us", configmap=where)
    except ApiFailure as e:
        hint = " (RBAC: istiod-lite's Role needs get, create, update on configmaps)" if e.status == 403 else ""
        log.warning("CA root not published; ztunnels cannot verify istiod until it is", configmap=where,
                    error=f"{e}{hint}")
    except StoreUnavailable as e:
        log.warning("CA root not published; ztunnels cannot verify istiod until it is", configmap=where,
                    error=str(e))
    return False


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


__all__ = ["CA_SECRET", "CONFIGMAP_VERBS", "PLUGGED_SECRET", "ROOT_CONFIGMAP", "SECRET_VERBS", "load_secret_root",
           "publish_root"]
