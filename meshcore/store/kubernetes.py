"""The ``Store`` on a Kubernetes API server: list+watch per kind into a local cache, writes over REST.

Role: the cluster-state backend when the mesh runs on a real cluster (``STORE=kubernetes``). Reads
(``get``, ``list``, ``snapshot``, ``changes_since``, ``watch``) are served from a local cache (only
``read_live``, one GET for a caller that cannot wait for the watch, goes past it) that one
reflector per kind keeps: list (in chunks with ``limit``/``continue``; an expired continue token lists again
from the start), then watch from the list's resourceVersion with bookmarks, resume from the
last version seen when a stream ends, re-list on 410 Gone, jittered exponential backoff on errors. Writes
go to the API server (create/update with the cached resourceVersion, retried on 409 Conflict; status with
server-side apply under this store's field manager) and return once the cache has seen their result.

Invariants:
- The cache's change log has its own revision counter (``revision()``), increasing with every change the
  cache takes in, so ``snapshot`` + ``changes_since``/``watch`` give list-then-watch without gaps or
  repeats exactly as the SQLite backend does. A stored ``Resource.resource_version`` is that local
  revision; the server's resourceVersion is kept beside it and only ever compared for equality (the API
  conventions make it opaque).
- A re-list after 410 Gone turns into the difference against the cache (ADDED/MODIFIED for what is new or
  changed, DELETED for what vanished), so no resource is lost or reported twice.
- A kind whose CRD is not installed is served as empty (there can be none of it), logged with the install
  hint, and checked again with backoff.
- Not atomic: ``apply`` of several resources writes them one by one and stops at the first failure, as
  ``kubectl apply`` does (the Kubernetes API has no multi-object transaction).
- A kind given a field selector (``field_selectors``) is listed and watched with it: the cache holds only
  the selected objects, and one that leaves the selection is DELETED from it (the API server's watch says
  so), so a node's agent never lists the whole cluster's pods. ``set_labels``/``set_annotations`` of an
  existing object are one merge patch under this store's field manager.

Threading: the Kubernetes client runs on a private event loop in a daemon thread; the ``Store`` methods
are synchronous (as the protocol is) and may be called from any other thread or event loop. A write blocks
its caller for one API round trip plus the watch delivering it.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import concurrent.futures
import json
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import msgspec
import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from .base import ApplyAction, ApplyResult, EventType, Store, WatchEvent
from .errors import ResourceNotFound, StoreError, StoreUnavailable, UnknownKind
from .kinds import plural
from .resource import KINDS, TOP_LEVEL_KINDS, OwnerReference, Resource, ResourceRef

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, Configuration

log = structlog.get_logger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

DEFAULT_FIELD_MANAGER = "istiod-lite"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
# Where each group's CRDs come from, for the message when one is missing.
INSTALL_HINTS = {
    "gateway.networking.k8s.io": "install the Gateway API CRDs (kubectl apply -f "
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml)",
    "security.istio.io": "install Istio's CRDs (helm install istio-base istio/base -n istio-system)",
    "networking.istio.io": "install Istio's CRDs (helm install istio-base istio/base -n istio-system)",
    "policy.ambientmesh.io": "install this mesh's CRDs (ambientctl install)",
}


# The kinds this backend lists and watches by default (each in ``resource.KINDS``). Named here, not taken
# from KINDS, so a kind added to the embedded store comes to Kubernetes on purpose: with its RBAC (the
# manifests' ClusterRole is derived from this list) and its CRD or the upstream one it needs.
DEFAULT_KINDS: tuple[str, ...] = (
    "Namespace", "ServiceAccount", "Pod", "Service", "AuthorizationPolicy", "Gateway", "HTTPRoute",
    "GRPCRoute", "VirtualService", "DestinationRule", "HTTPLocalRateLimitPolicy", "Deployment",
)
# Kinds a store opens on top of DEFAULT_KINDS only when its user shows them: Events (core v1), which
# ``ambientctl get events`` and ``describe`` read. None of the mesh's components reads or writes Events on
# Kubernetes (the kubelet and controllers there write them), so they are not in DEFAULT_KINDS: istiod-lite
# would list and watch every Event of the cluster, the busiest kind there is. A user reading them needs
# ``reader_rbac_rules(EVENT_KINDS)`` (list, watch).
EVENT_KINDS: tuple[str, ...] = ("Event",)
# The RBAC verbs the calls below use: on objects (list+watch by the reflectors, get when an update
# conflicts, create/update by apply, patch by set_labels/set_annotations, delete) and on ``/status``
# (update by apply with a status, patch by set_status's server-side apply).
OBJECT_VERBS: tuple[str, ...] = ("get", "list", "watch", "create", "update", "patch", "delete")
STATUS_VERBS: tuple[str, ...] = ("update", "patch")
# Lists are read in chunks of this many objects (``limit``/``continue``), as client-go's reflector does, so
# the API server never builds one huge answer; an expired continue token restarts the list this many times
# before one list without a limit is asked for.
DEFAULT_PAGE_SIZE = 500
LIST_RESTARTS = 3
# A store that only reads (the reflectors: list+watch) and changes labels/annotations of existing objects
# (set_labels/set_annotations: one merge patch each) calls these; see ``reader_rbac_rules``.
READ_VERBS: tuple[str, ...] = ("list", "watch")
METADATA_PATCH_VERBS: tuple[str, ...] = ("patch",)
# ``read_live`` (one GET of an object on the API server, past the cache) calls this.
LIVE_READ_VERBS: tuple[str, ...] = ("get",)

# The CNI node agent's store (ztunnel.cni): every Namespace (the enrolment label) and the Pods of its own
# node (a field selector: never the whole cluster's), read; Pod annotations written (the redirection
# annotation). The agent opens its store with these, the manifests' ClusterRole is derived from them.
NODE_AGENT_KINDS: tuple[str, ...] = ("Namespace", "Pod")
NODE_AGENT_PATCHED_KINDS: tuple[str, ...] = ("Pod",)
# A CNI ADD for a pod the agent's watch has not delivered yet (or a pod recreated under the same name) is
# decided from the Pod and its Namespace read live (``read_live``).
NODE_AGENT_LIVE_KINDS: tuple[str, ...] = ("Namespace", "Pod")
NODE_AGENT_FIELD_MANAGER = "ztunnel-node-agent"


def node_agent_field_selectors(node_name: str) -> dict[str, str]:
    """The node agent's field selectors: Pods whose ``spec.nodeName`` is ``node_name``."""
    if not node_name or any(c in node_name for c in ",=!\\"):
        raise ValueError(f"node name {node_name!r}: expected a Kubernetes node name (a DNS subdomain)")
    return {"Pod": f"spec.nodeName={node_name}"}


@dataclass(frozen=True, slots=True)
class KindPath:
    """Where one kind lives in the API: ``/api/v1`` or ``/apis/GROUP/VERSION``, its plural, its scope."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection(self, namespace: str = "") -> str:
        if namespace and self.namespaced:
            return f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        return f"{self.prefix}/{self.plural}"

    def object(self, ref: ResourceRef, subresource: str = "") -> str:
        path = f"{self.collection(ref.namespace)}/{ref.name}"
        return f"{path}/{subresource}" if subresource else path


def kind_path(kind: str) -> KindPath:
    api_version, namespaced = KINDS[kind]
    group, _, version = api_version.rpartition("/")
    return KindPath(kind, group, version, plural(kind), namespaced)


def rbac_rules(kinds: Iterable[str] = DEFAULT_KINDS) -> builtins.list[JSON]:
    """ClusterRole rules granting exactly what ``KubernetesStore`` calls for ``kinds``, grouped by API group."""
    groups: dict[str, builtins.list[str]] = {}
    for kind in kinds:
        path = kind_path(kind)
        groups.setdefault(path.group, []).append(path.plural)
    rules: builtins.list[JSON] = []
    for group, plurals in sorted(groups.items()):
        rules.append({"apiGroups": [group], "resources": sorted(plurals), "verbs": builtins.list(OBJECT_VERBS)})
        rules.append({"apiGroups": [group], "resources": sorted(f"{p}/status" for p in plurals
                                                                if kind_has_status(p)),
                      "verbs": builtins.list(STATUS_VERBS)})
    return [r for r in rules if r["resources"]]


def reader_rbac_rules(
    kinds: Iterable[str], *, patched: Iterable[str] = (), live: Iterable[str] = ()
) -> builtins.list[JSON]:
    """ClusterRole rules for a ``KubernetesStore`` of ``kinds`` that only reads them (list+watch; also one
    object at a time with ``read_live`` for ``live``) and changes labels or annotations of existing objects
    of ``patched`` (no apply, delete or status), grouped by API group."""
    kinds = builtins.list(kinds)
    patched_set, live_set = set(patched), set(live)
    verbs: dict[tuple[str, str], builtins.list[str]] = {}
    for kind in kinds:
        path = kind_path(kind)
        got = LIVE_READ_VERBS if kind in live_set else ()
        extra = METADATA_PATCH_VERBS if kind in patched_set else ()
        verbs[(path.group, path.plural)] = [*got, *READ_VERBS, *extra]
    for what, given in (("patched", patched_set), ("live-read", live_set)):
        unknown = given - set(kinds)
        if unknown:
            raise ValueError(f"{what} kinds {sorted(unknown)} are not among the kinds read {sorted(set(kinds))}")
    rules: builtins.list[JSON] = []
    for (group, plural_name), granted in sorted(verbs.items()):
        same = next((r for r in rules if r["apiGroups"] == [group] and r["verbs"] == granted), None)
        if same is not None:
            same["resources"] = sorted([*same["resources"], plural_name])
        else:
            rules.append({"apiGroups": [group], "resources": [plural_name], "verbs": granted})
    return rules


def node_agent_rbac_rules() -> builtins.list[JSON]:
    """What the node agent's store calls (``NODE_AGENT_KINDS`` read, ``NODE_AGENT_PATCHED_KINDS`` patched,
    ``NODE_AGENT_LIVE_KINDS`` read live)."""
    return reader_rbac_rules(NODE_AGENT_KINDS, patched=NODE_AGENT_PATCHED_KINDS, live=NODE_AGENT_LIVE_KINDS)


def kind_has_status(plural_name: str) -> bool:
    """Whether the API serves a ``/status`` subresource for this resource (ServiceAccounts have none)."""
    return plural_name != "serviceaccounts"


class _Gone(Exception):
    """The watch's resourceVersion was compacted away (410): re-list."""


class ApiFailure(Exception):
    """A non-2xx answer of the API server: its HTTP status, the Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Backoff:
    """Jittered exponential backoff: ``next()`` doubles up to ``cap``; ``reset()`` after a success."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self._attempt)
        self._attempt += 1
        return delay * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self._attempt = 0


def to_resource(obj: Mapping[str, Any], kind: str) -> Resource:
    """The store's form of an API object (identity, labels, annotations, spec, status)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if (spec is None and kind == "ServiceAccount") or kind in TOP_LEVEL_KINDS:
        # No spec (a ServiceAccount: keep what the mesh could read; an Event: its fields are top-level, as
        # the store keeps them)
        spec = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    return Resource(
        kind=kind,
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")) if KINDS[kind][1] else "",
        api_version=str(obj.get("apiVersion") or KINDS[kind][0]),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        uid=str(meta.get("uid", "")),
        spec=dict(spec or {}),
        status=dict(obj.get("status") or {}),
        generation=int(meta.get("generation") or 0),
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        owner_references=_owner_references(meta.get("ownerReferences")),
    )


def _owner_references(raw: object) -> tuple[OwnerReference, ...]:
    """metadata.ownerReferences as the API server returns them (it validated them on write)."""
    if not isinstance(raw, list):
        return ()
    return tuple(
        OwnerReference(
            api_version=str(o.get("apiVersion", "")),
            kind=str(o.get("kind", "")),
            name=str(o.get("name", "")),
            uid=str(o.get("uid", "")),
            controller=o["controller"] if isinstance(o.get("controller"), bool) else None,
            block_owner_deletion=o["blockOwnerDeletion"] if isinstance(o.get("blockOwnerDeletion"), bool) else None,
        )
        for o in raw
        if isinstance(o, Mapping)
    )


def to_manifest(resource: Resource, *, with_status: bool = False) -> JSON:
    """The API object for a write: no server-set metadata, status only when asked for."""
    doc = resource.to_dict()
    doc["metadata"].pop("resourceVersion", None)
    doc["metadata"].pop("uid", None)
    doc["metadata"].pop("generation", None)
    doc["metadata"].pop("creationTimestamp", None)
    if not with_status:
        doc.pop("status", None)
    if resource.kind == "ServiceAccount":
        doc.update(doc.pop("spec", {}))
    return doc


def load_configuration(
    *, kubeconfig: str | None = None, context: str | None = None, host: str | None = None
) -> Configuration:
    """The client configuration: ``host`` alone (an unauthenticated URL, for tests); else in-cluster config
    when running in a pod and no kubeconfig is given; else the kubeconfig (``KUBECONFIG`` or
    ~/.kube/config) and its context. Raises ``StoreUnavailable`` naming what could not be read."""
    configuration = k8s_client.Configuration()
    if host is not None:
        configuration.host = host
    elif kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException as e:
            raise StoreUnavailable(f"in-cluster Kubernetes config: {e}; is the service account token mounted?") from None
    else:
        # KUBECONFIG read now, not when the client library was imported (it may have changed since).
        loader = k8s_config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
                                             context=context, client_configuration=configuration)
        # On a thread of its own: the caller may be inside a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubeconfig") as pool:
            try:
                pool.submit(asyncio.run, loader).result()
            except (k8s_config.ConfigException, OSError) as e:
                raise StoreUnavailable(
                    f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG', '~/.kube/config')}"
                    f"{f' context {context}' if context else ''}: {e}"
                ) from None
    return configuration


async def api_call(
    api: ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    request_timeout: float = 30.0,
) -> JSON:
    """One REST call; the decoded answer, or ``ApiFailure`` (status, reason, message) for a non-2xx one,
    or ``StoreUnavailable`` when the server cannot be reached."""
    try:
        response = await api.call_api(
            path, method, query_params=builtins.list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=request_timeout,
        )
        async with response:
            data = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise StoreUnavailable(f"Kubernetes API {api.configuration.host}: {method} {path}: "
                               f"{e or type(e).__name__}") from None
    try:
        payload: JSON = json.loads(data) if data else {}
    except ValueError:
        payload = {"message": data[:200].decode(errors="replace")}
    if not 200 <= status < 300:
        raise ApiFailure(status, str(payload.get("reason", "")), str(payload.get("message", "")))
    return payload


class KubernetesStore:
    """The ``Store`` on a Kubernetes API server. ``KubernetesStore.connect(...)`` builds the client config."""

    def __init__(
        self,
        configuration: Configuration,
        *,
        kinds: Iterable[str] | None = None,
        field_manager: str = DEFAULT_FIELD_MANAGER,
        sync_timeout: float = 30.0,
        write_timeout: float = 30.0,
        watch_timeout: int = 300,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_sync_failures: int | None = None,
        field_selectors: Mapping[str, str] | None = None,
    ) -> None:
        self._paths = {k: kind_path(k) for k in (kinds or DEFAULT_KINDS)}
        # kind -> fieldSelector its list and watch carry (only the selected objects are cached).
        self._selectors = dict(field_selectors or {})
        if unknown := sorted(set(self._selectors) - set(self._paths)):
            raise ValueError(f"field selectors for kinds this store does not watch: {', '.join(unknown)}")
        self._page_size = page_size
        # None: keep trying for the whole sync_timeout (a server may come up meanwhile); N: give up as soon
        # as one kind's initial list has failed N times (a command line fails at once on a wrong address).
        self._max_sync_failures = max_sync_failures
        self._sync_failures: collections.Counter[str] = collections.Counter()
        self.field_manager = field_manager
        self._write_timeout = write_timeout
        self._watch_timeout = watch_timeout
        self._configuration = configuration
        self._lock = threading.Lock()
        self._objects: dict[ResourceRef, Resource] = {}
        self._server_rv: dict[ResourceRef, str] = {}
        self._seen: dict[ResourceRef, collections.deque[str]] = {}
        self._log: builtins.list[WatchEvent] = []
        self._revision = 0
        self._synced: set[str] = set()
        self._missing: set[str] = set()
        self._last_error: dict[str, str] = {}
        self._closed = False
        # Reflector activity, for tests and metrics: lists, relists_gone, watch_errors, bookmarks, ...
        self.stats: collections.Counter[str] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubernetes-store", daemon=True)
        self._thread.start()
        self._changed: asyncio.Condition | None = None
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._api: ApiClient | None = None
        try:
            self._run(self._start(), timeout=sync_timeout + 5)
            self._run(self._wait_synced(sync_timeout), timeout=sync_timeout + 5)
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(
        cls,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        host: str | None = None,
        **kwargs: Any,
    ) -> KubernetesStore:
        """In-cluster config when running in a pod (and no kubeconfig is given), else the kubeconfig
        (``KUBECONFIG`` or ~/.kube/config) and its context; ``host`` alone: an unauthenticated URL."""
        return cls(load_configuration(kubeconfig=kubeconfig, context=context, host=host), **kwargs)

    # --- the private loop -----------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("KubernetesStore methods cannot be called from its own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout if timeout is not None else self._write_timeout)
        except TimeoutError:
            future.cancel()
            raise StoreUnavailable(
                f"Kubernetes API {self._configuration.host}: no answer within {timeout or self._write_timeout:g}s"
            ) from None

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        self._api = k8s_client.ApiClient(self._configuration)
        for kind in self._paths:
            self._tasks.append(asyncio.create_task(self._reflect(kind), name=f"reflect-{kind}"))

    def _gave_up(self) -> bool:
        limit = self._max_sync_failures
        return limit is not None and any(n >= limit for n in self._sync_failures.values())

    async def _wait_synced(self, limit: float) -> None:
        assert self._changed is not None
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._synced >= set(self._paths) or self._gave_up()), limit
                )
            if self._synced >= set(self._paths):
                return
            failed = sorted(k for k, n in self._sync_failures.items() if k not in self._synced)
            reasons = "; ".join(f"{k}: {self._last_error.get(k, 'no answer')}" for k in failed)
            raise StoreUnavailable(
                f"Kubernetes API {self._configuration.host}: the initial list failed {self._max_sync_failures} "
                f"time(s) ({reasons}); check the address, credentials and RBAC"
            )
        except TimeoutError:
            pending = sorted(set(self._paths) - self._synced)
            reasons = "; ".join(f"{k}: {self._last_error.get(k, 'no answer')}" for k in pending)
            raise StoreUnavailable(
                f"Kubernetes API {self._configuration.host}: the initial list of {', '.join(pending)} did not "
                f"complete within {limit:g}s ({reasons}); check the address, credentials and RBAC"
            ) from None

    async def _sync_failed(self, kind: str) -> None:
        """Count a failure of ``kind``'s initial list (for ``max_sync_failures``)."""
        if kind not in self._synced:
            self._sync_failures[kind] += 1
            await self._notify()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JSON:
        assert self._api is not None
        return await api_call(self._api, method, path, query=query, body=body, content_type=content_type,
                              request_timeout=self._write_timeout)

    # --- reflectors -----------------------------------------------------------------------------------------

    async def _reflect(self, kind: str) -> None:
        """List, then watch from the list's version; forever, with backoff on errors."""
        path = self._paths[kind]
        backoff = Backoff()
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._relist(path)
                rv = await self._follow(path, rv)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except _Gone:
                self.stats["relists_gone"] += 1
                log.info("watch expired (410 Gone); re-listing", kind=kind)
                rv = None
            except ApiFailure as e:
                rv = await self._failed(path, e, backoff, rv)
            except Exception as e:
                self.stats["watch_errors"] += 1
                self._last_error[kind] = str(e) or type(e).__name__
                await self._sync_failed(kind)
                delay = backoff.next()
                log.warning("Kubernetes watch failed; retrying", kind=kind, error=self._last_error[kind],
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _failed(self, path: KindPath, e: ApiFailure, backoff: Backoff, rv: str | None) -> str | None:
        kind = path.kind
        self._last_error[kind] = str(e)
        if e.status == 404 and path.group:
            if kind not in self._missing:
                self._missing.add(kind)
                log.warning(
                    "resource type not served by the API server; treating it as empty",
                    kind=kind, api_version=path.api_version,
                    hint=INSTALL_HINTS.get(path.group, "install its CustomResourceDefinition"),
                )
            await self._replace_kind(kind, {}, mark_synced=True)
            await asyncio.sleep(min(60.0, backoff.next() * 4))
            return None
        if e.status == 410:
            self.stats["relists_gone"] += 1
            return None
        self.stats["watch_errors"] += 1
        await self._sync_failed(kind)
        delay = backoff.next()
        log.warning("Kubernetes API request failed; retrying", kind=kind, error=str(e), retry_in=round(delay, 2))
        await asyncio.sleep(delay)
        return rv

    async def _relist(self, path: KindPath) -> str:
        """List the kind in chunks of ``page_size`` (``limit``/``continue``) and make the cache that list.
        A continue token that expired (410) starts the list again from scratch, at most
        ``LIST_RESTARTS`` times; then one list without a limit (the server's consistent whole)."""
        items: dict[ResourceRef, tuple[Resource, str]] = {}
        rv = ""
        for attempt in range(LIST_RESTARTS + 1):
            limit = self._page_size if attempt < LIST_RESTARTS else 0
            items, token = {}, ""
            try:
                while True:
                    query = {"limit": str(limit)} if limit else {}
                    if path.kind in self._selectors:
                        query["fieldSelector"] = self._selectors[path.kind]
                    if token:
                        query["continue"] = token
                    listed = await self._request("GET", path.collection(), query=query)
                    self.stats["list_chunks"] += 1
                    for obj in listed.get("items") or []:
                        res = to_resource(obj, path.kind)
                        items[res.ref] = (res, str((obj.get("metadata") or {}).get("resourceVersion", "")))
                    meta = listed.get("metadata") or {}
                    rv, token = str(meta.get("resourceVersion", "")), str(meta.get("continue") or "")
                    if not token:
                        break
            except ApiFailure as e:
                if e.status != 410 or not token:
                    raise
                self.stats["list_continue_expired"] += 1
                log.info("list continue token expired (410); listing again from the start", kind=path.kind)
                continue
            break
        self.stats["lists"] += 1
        self._missing.discard(path.kind)
        await self._replace_kind(path.kind, items, mark_synced=True)
        return rv

    async def _replace_kind(
        self, kind: str, items: Mapping[ResourceRef, tuple[Resource, str]], *, mark_synced: bool
    ) -> None:
        """The cache's objects of ``kind`` become ``items``: the difference is recorded as events."""
        with self._lock:
            for ref in [r for r in self._objects if r.kind == kind and r not in items]:
                self._take("DELETED", ref, None, "")
            for ref, (res, rv) in items.items():
                if self._server_rv.get(ref) != rv:
                    self._take("ADDED" if ref not in self._objects else "MODIFIED", ref, res, rv)
        if mark_synced:
            self._synced.add(kind)
        await self._notify()

    def _take(self, type_: EventType, ref: ResourceRef, res: Resource | None, rv: str) -> None:
        """Record one change in the cache and its log (call with ``_lock`` held)."""
        self._revision += 1
        if res is None:
            gone = self._objects.pop(ref)
            self._server_rv.pop(ref, None)
            self._log.append(WatchEvent("DELETED", msgspec.structs.replace(gone, resource_version=self._revision),
                                        self._revision))
            self._seen.setdefault(ref, collections.deque(maxlen=8)).append(f"deleted@{rv}")
            return
        stored = msgspec.structs.replace(res, resource_version=self._revision)
        self._objects[ref] = stored
        self._server_rv[ref] = rv
        self._seen.setdefault(ref, collections.deque(maxlen=8)).append(rv)
        self._log.append(WatchEvent(type_, stored, self._revision))

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _follow(self, path: KindPath, rv: str) -> str:
        """Watch from ``rv`` until the stream ends; returns the last version seen."""
        assert self._api is not None
        query = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(self._watch_timeout)}
        if path.kind in self._selectors:
            query["fieldSelector"] = self._selectors[path.kind]
        try:
            response = await self._api.call_api(
                path.collection(), "GET", query_params=list(query.items()),
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=30,
                                                       sock_read=self._watch_timeout + 60),
            )
        except (aiohttp.ClientError, OSError) as e:
            raise StoreUnavailable(f"watch {path.collection()}: {e or type(e).__name__}") from None
        async with response:
            if response.status != 200:
                body = await response.read()
                try:
                    status = json.loads(body)
                except ValueError:
                    status = {}
                raise ApiFailure(response.status, str(status.get("reason", "")), str(status.get("message", "")))
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        rv = await self._on_event(path, json.loads(line), rv)
        return rv

    async def _on_event(self, path: KindPath, event: JSON, rv: str) -> str:
        type_ = event.get("type")
        obj = event.get("object") or {}
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
        if type_ == "BOOKMARK":
            self.stats["bookmarks"] += 1
            return new_rv
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiFailure(int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", "")))
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("unknown watch event type ignored", kind=path.kind, type=type_)
            return rv
        res = to_resource(obj, path.kind)
        with self._lock:
            known = res.ref in self._objects
            if type_ == "DELETED":
                if known:
                    self._take("DELETED", res.ref, None, new_rv)
            elif self._server_rv.get(res.ref) != new_rv:
                self._take("MODIFIED" if known else "ADDED", res.ref, res, new_rv)
        await self._notify()
        return new_rv

    async def _until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until the cache shows a write (its watch event arrived)."""
        assert self._changed is not None
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(predicate), self._write_timeout)
        except TimeoutError:
            log.warning("the watch did not show a write in time; reads may lag", write=what)

    def _saw(self, ref: ResourceRef, rv: str) -> Callable[[], bool]:
        return lambda: rv in self._seen.get(ref, ())

    # --- writes (on the private loop) -----------------------------------------------------------------------

    def _path(self, kind: str) -> KindPath:
        path = self._paths.get(kind)
        if path is None:
            raise UnknownKind(kind, builtins.list(self._paths))
        return path

    async def _write(self, coro: Coroutine[Any, Any, JSON], ref: ResourceRef) -> JSON:
        try:
            return await coro
        except ApiFailure as e:
            if e.status == 404:
                raise ResourceNotFound(str(ref)) from None
            raise StoreError(f"{ref}: the Kubernetes API refused the write: {e}") from None

    async def _apply_one(self, resource: Resource) -> ApplyResult:
        path = self._path(resource.kind)
        ref = resource.ref
        with self._lock:
            cached = self._objects.get(ref)
        status_given = bool(resource.status)
        if cached is not None and _same_content(cached, resource, with_status=status_given):
            return ApplyResult(ref, "unchanged", cached)
        body = to_manifest(resource)
        stored: JSON | None = None
        action: ApplyAction = "configured"
        if cached is None:
            try:
                stored = await self._request("POST", path.collection(ref.namespace), body=body)
                action = "created"
            except ApiFailure as e:
                if e.status != 409:
                    raise StoreError(f"{ref}: the Kubernetes API refused it: {e}") from None
        if stored is None:
            stored = await self._replace(path, ref, body)
        if status_given and (stored.get("status") or {}) != resource.status:
            stored = await self._write(
                self._request("PUT", path.object(ref, "status"), body=to_manifest(resource, with_status=True)), ref
            )
        rv = str(stored["metadata"]["resourceVersion"])
        await self._until(self._saw(ref, rv), str(ref))
        return ApplyResult(ref, action, self._cached(ref, stored))

    async def _replace(self, path: KindPath, ref: ResourceRef, body: JSON, attempts: int = 5) -> JSON:
        """PUT with the cached (then the current) resourceVersion; a 409 re-reads and tries again."""
        rv = self._server_rv.get(ref)
        for _ in range(attempts):
            if rv:
                body["metadata"]["resourceVersion"] = rv
            try:
                return await self._request("PUT", path.object(ref), body=body)
            except ApiFailure as e:
                if e.status == 404:
                    return await self._write(self._request("POST", path.collection(ref.namespace), body=body), ref)
                if e.status != 409:
                    raise StoreError(f"{ref}: the Kubernetes API refused the update: {e}") from None
                self.stats["conflicts"] += 1
                current = await self._write(self._request("GET", path.object(ref)), ref)
                rv = str(current["metadata"]["resourceVersion"])
        raise StoreError(f"{ref}: still conflicting after {attempts} attempts (another writer keeps changing it)")

    def _cached(self, ref: ResourceRef, stored: JSON) -> Resource:
        with self._lock:
            cached = self._objects.get(ref)
        return cached if cached is not None else to_resource(stored, ref.kind)

    async def _merge_metadata(
        self, ref: ResourceRef, field: str, add: Mapping[str, str], remove: Iterable[str], create: bool
    ) -> ApplyResult:
        path = self._path(ref.kind)
        with self._lock:
            cached = self._objects.get(ref)
        removed = set(remove)
        if cached is None:
            if not create:
                raise ResourceNotFound(str(ref))
            fresh = Resource(kind=ref.kind, namespace=ref.namespace, name=ref.name, api_version=path.api_version,
                             labels=dict(add) if field == "labels" else {})
            result = await self._apply_one(fresh)
            return ApplyResult(ref, "created", result.resource)
        current: dict[str, str] = getattr(cached, field)
        wanted = {k: v for k, v in current.items() if k not in removed}
        wanted.update(add)
        if wanted == current:
            return ApplyResult(ref, "unchanged", cached)
        patch: JSON = {k: v for k, v in add.items()}
        patch.update({k: None for k in removed if k in current and k not in add})
        stored = await self._write(
            self._request("PATCH", path.object(ref), body={"metadata": {field: patch}}, content_type=MERGE_PATCH,
                          query={"fieldManager": self.field_manager}),
            ref,
        )
        await self._until(self._saw(ref, str(stored["metadata"]["resourceVersion"])), str(ref))
        return ApplyResult(ref, "configured", self._cached(ref, stored))

    async def _set_status(self, ref: ResourceRef, status: Mapping[str, Any]) -> ApplyResult:
        path = self._path(ref.kind)
        with self._lock:
            cached = self._objects.get(ref)
        if cached is None:
            raise ResourceNotFound(str(ref))
        if cached.status == dict(status):
            return ApplyResult(ref, "unchanged", cached)
        body: JSON = {"apiVersion": path.api_version, "kind": ref.kind,
                      "metadata": {"name": ref.name, **({"namespace": ref.namespace} if ref.namespace else {})},
                      "status": dict(status)}
        stored = await self._write(
            self._request("PATCH", path.object(ref, "status"), body=body, content_type=APPLY_PATCH,
                          query={"fieldManager": self.field_manager, "force": "true"}),
            ref,
        )
        await self._until(self._saw(ref, str(stored["metadata"]["resourceVersion"])), str(ref))
        return ApplyResult(ref, "configured", self._cached(ref, stored))

    async def _delete_one(self, ref: ResourceRef) -> bool:
        path = self._path(ref.kind)
        before = self._server_rv.get(ref)
        try:
            gone = await self._request("DELETE", path.object(ref))
        except ApiFailure as e:
            if e.status == 404:
                return False
            raise StoreError(f"{ref}: the Kubernetes API refused the delete: {e}") from None
        rv = str((gone.get("metadata") or {}).get("resourceVersion", ""))
        # Deleted at once: the cache drops it. Graceful (a namespace terminating): it shows the new version.
        await self._until(lambda: ref not in self._objects or (rv != before and rv in self._seen.get(ref, ())),
                          f"delete {ref}")
        return True

    # --- Store ----------------------------------------------------------------------------------------------

    def apply(self, resources: Iterable[Resource]) -> builtins.list[ApplyResult]:
        batch = builtins.list(resources)
        for r in batch:
            self._path(r.kind)
        return [self._run(self._apply_one(r)) for r in batch]

    def delete(self, refs: Iterable[ResourceRef]) -> builtins.list[ResourceRef]:
        return [ref for ref in refs if self._run(self._delete_one(ref))]

    def get(self, ref: ResourceRef) -> Resource | None:
        with self._lock:
            return self._objects.get(ref)

    def read_live(self, ref: ResourceRef, *, timeout: float | None = None) -> Resource | None:
        """``ref`` as the API server has it now: one GET, past the cache (which it leaves as it is), for a
        caller that cannot wait for the watch. None when it does not exist (404). Its
        ``resource_version`` is 0 (the cache's revisions number only what the watch delivered). Raises
        ``StoreUnavailable`` when the server cannot be reached or does not answer within ``timeout``
        seconds (default: the write timeout), ``StoreError`` with the status when it refuses (403: RBAC)."""
        path = self._path(ref.kind)
        limit = self._write_timeout if timeout is None else timeout
        return self._run(self._read_live(path, ref, limit), timeout=limit + 1.0)

    async def _read_live(self, path: KindPath, ref: ResourceRef, limit: float) -> Resource | None:
        assert self._api is not None
        try:
            obj = await api_call(self._api, "GET", path.object(ref), request_timeout=limit)
        except ApiFailure as e:
            if e.status == 404:
                return None
            hint = f" (RBAC: grant get on {path.plural})" if e.status == 403 else ""
            raise StoreError(
                f"{ref}: the Kubernetes API {self._configuration.host} refused the read: {e}{hint}"
            ) from None
        self.stats["live_reads"] += 1
        return to_resource(obj, ref.kind)

    def list(self, kind: str | None = None, namespace: str | None = None) -> builtins.list[Resource]:
        with self._lock:
            return self._select(kind, namespace)

    def _select(self, kind: str | None, namespace: str | None) -> builtins.list[Resource]:
        found = [r for ref, r in self._objects.items()
                 if (kind is None or ref.kind == kind) and (namespace is None or ref.namespace == namespace)]
        return sorted(found, key=lambda r: (r.kind, r.namespace, r.name))

    def set_labels(
        self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str], *, create: bool = False
    ) -> ApplyResult:
        return self._run(self._merge_metadata(ref, "labels", add, remove, create))

    def set_annotations(self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str]) -> ApplyResult:
        return self._run(self._merge_metadata(ref, "annotations", add, remove, False))

    def set_status(self, ref: ResourceRef, status: Mapping[str, Any]) -> ApplyResult:
        return self._run(self._set_status(ref, status))

    def snapshot(
        self, kind: str | None = None, namespace: str | None = None
    ) -> tuple[int, builtins.list[Resource]]:
        with self._lock:
            return self._revision, self._select(kind, namespace)

    def revision(self) -> int:
        with self._lock:
            return self._revision

    def changes_since(self, revision: int) -> builtins.list[WatchEvent]:
        with self._lock:
            # Log entry i has revision i + 1 (the log is never compacted while the store is open).
            return self._log[max(revision, 0):]

    async def watch(self, since: int, poll_interval: float = 0.05) -> AsyncIterator[WatchEvent]:
        last = since
        while not self._closed:
            events = self.changes_since(last)
            for event in events:
                last = event.revision
                yield event
            if not events:
                await asyncio.sleep(poll_interval)

    @property
    def configuration(self) -> Configuration:
        """The client configuration (for other API clients of the same process, e.g. leader election)."""
        return self._configuration

    @property
    def missing_kinds(self) -> builtins.list[str]:
        """Kinds the API server does not serve (their CRDs are not installed)."""
        return sorted(self._missing)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with_timeout = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            try:
                with_timeout.result(10)
            except Exception:
                log.warning("Kubernetes store did not stop cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()

    def __enter__(self) -> KubernetesStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _same_content(old: Resource, new: Resource, *, with_status: bool) -> bool:
    return (
        old.labels == new.labels
        and old.annotations == new.annotations
        and old.spec == new.spec
        and old.owner_references == new.owner_references
        and (not with_status or old.status == new.status)
    )


if TYPE_CHECKING:

    def _implements_store(store: KubernetesStore) -> Store:  # mypy checks KubernetesStore against the protocol
        return store
