"""KubeApiServer: a Kubernetes API server stand-in on 127.0.0.1 for tests (no cluster can run here).

It speaks the REST protocol the Kubernetes API conventions define, over HTTP/1.1 (asyncio + h11), for the
resource types it is given (core ``/api/v1`` and groups ``/apis/GROUP/VERSION``, namespaced and cluster
paths):

- list: ``GET`` of a collection returns ``{kind: <Kind>List, metadata: {resourceVersion}, items}``; the
  list's resourceVersion is the revision the items were read at, so a watch from it misses nothing.
- watch: ``GET ...?watch=1&resourceVersion=RV`` streams one JSON event per line (ADDED, MODIFIED, DELETED,
  BOOKMARK with ``allowWatchBookmarks=true``, ERROR): every change after RV in order, then new ones as they
  happen, until ``timeoutSeconds``. Without RV (or RV "0") it starts with a synthetic ADDED per current
  object. An RV older than the compacted history yields an ERROR event carrying a ``Status`` with code
  410 (reason ``Expired``), as a real server does on an open watch; the client must re-list.
- writes: ``POST`` (409 AlreadyExists), ``PUT`` (409 Conflict when ``metadata.resourceVersion`` is stale;
  unconditional without it), ``DELETE``, ``PATCH`` with ``application/merge-patch+json`` and server-side
  apply (``application/apply-patch+yaml``, ``fieldManager`` required, ``force``): field ownership per
  manager, conflicts 409 unless forced, fields a manager stops applying removed. ``/status`` is a
  subresource: writes to the main resource never change status and status writes change nothing else.
- errors are ``Status`` objects with the code, reason and a message, as the API returns them.
- paginated lists: ``limit=N`` returns at most N items and, when more remain, ``metadata.continue`` (an
  opaque token) and ``metadata.remainingItemCount``; ``continue=TOKEN`` returns the next chunk of the same
  consistent list (the state at the first chunk's resourceVersion, writes made since then not shown).
  A token whose resourceVersion was compacted gets 410 Expired: the client starts a new list. A
  ``resourceVersion`` given together with ``continue`` is refused (400), as the conventions say.
- field selectors: ``fieldSelector=f=v,f!=v,...`` (``==`` too; a backslash escapes ``,``, ``=`` or itself) on a list
  and a watch, for ``metadata.name`` and ``metadata.namespace`` of every resource and ``spec.nodeName`` of
  Pods (the field a node's agents select their pods by); any other field is refused with 400 ``field label
  not supported``. A watch reports an object's change into the selection as ADDED and out of it as
  DELETED (the object as it was, at the new resourceVersion), as the API server's watch cache does.

Invariants: one global revision (every write that changes an object takes the next one; a write that
changes nothing takes none and sends no event); the change log is kept in revision order until
``compact``; resourceVersions are decimal strings of that revision (clients must treat them as opaque).

Simplifications, stated so no test relies on them being real: no authentication or authorization (every
request is recorded in ``requests`` with its RBAC verb instead, so tests can derive the RBAC a client
needs); no label selectors (refused with 400, not ignored); field selectors only on the fields below; no
admission, defaulting or
schema validation; deleting a Namespace deletes its contents at once (a real server finalizes it
asynchronously); lists in applied configurations are atomic (owned as one field).

Port-forward (``GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P[,P...]`` upgraded to a WebSocket with
the ``v4.channel.k8s.io`` subprotocol, as the API server serves it to WebSocket clients): port i gets
channel 2i for data and 2i+1 for errors; the server's first message on each channel is the port number
(2 bytes, little-endian); every message after that is the channel byte then bytes. The pod must exist; its
port is reached at the loopback address the test gave with ``forward_port`` (no such address, or one that
refuses: the reason on the error channel). The socket closes when every forwarded connection has ended
or the client closes it. Recorded with RBAC verb ``create`` on ``pods/portforward``.

Pod logs (``GET /api/v1/namespaces/NS/pods/NAME/log``, RBAC verb ``get`` on ``pods/log``): plain text, the
lines the test wrote with ``write_log`` (each stamped with when it was written, or the time given).
Parameters as the API documents them: ``container`` (required when the pod has more than one; 400 naming
the choices, or naming a container the pod does not have), ``sinceSeconds`` or ``sinceTime`` (RFC 3339; not
both), ``tailLines``, ``limitBytes``, ``timestamps`` (each line prefixed with its RFC 3339 time and a
space), ``follow`` (the lines so far, then each new one as it is written, until the pod is deleted, the
client goes away or ``close_watches`` ends it). ``previous`` is answered 400 as for a container that never
restarted (the stand-in keeps no earlier run). A pod that does not exist is 404.

Pod exec (``GET /api/v1/namespaces/NS/pods/NAME/exec?command=C&command=ARG...`` upgraded to a WebSocket,
recorded with RBAC verbs ``get`` and ``create`` on ``pods/exec``: the upgrade is a GET):
subprotocols ``v5.channel.k8s.io`` (preferred) and ``v4.channel.k8s.io``; every message is the channel
byte then bytes: 0 stdin (client to server), 1 stdout, 2 stderr, 3 error: one v1 ``Status`` when the
command ends (``Success``; a non-zero exit is ``Failure``, reason ``NonZeroExitCode``, the code in
``details.causes`` as reason ``ExitCode``), then the socket closes. v5 adds channel 255, the client's
close signal (``[255, 0]``: stdin ended). Parameters: ``command`` (repeated; none is 400), ``container``
(chosen and refused as for logs), ``stdin``, ``stdout``, ``stderr`` (at least one; 400 otherwise),
``tty``. The command is the test's ``exec_handler(namespace, pod, container, argv, stdin) -> (stdout,
stderr, exit_code)`` (sync or a coroutine), run once stdin has ended (at once without ``stdin=true``);
its output is sent after it returns (no interleaving is modelled). Stand-in refusals, stated so no test
relies on them being real: ``tty=true`` (no terminal is modelled), and ``stdin=true`` on v4 (v4 cannot
close stdin, so a real command reading to its end would wait forever) are 400; no handler set is 500.

TokenReview (``POST /apis/authentication.k8s.io/v1/tokenreviews``, create only, nothing stored): tokens
are opaque strings the test mints with ``issue_token`` (a service account, optionally bound to a pod and
node, with audiences) and may ``revoke_token``. A review answers ``status.authenticated`` with the user
as the API server describes a service account (``system:serviceaccount:NS:SA``, its groups, and the
bound pod's name and uid and node name under ``user.extra``) when the token is known, its audiences meet
``spec.audiences`` (or include the API server's own when none are asked for) and the bound pod still
exists with that uid; otherwise ``authenticated: false`` with ``status.error``, as a real server does.

A paginated list's consistent state is kept as a snapshot per (first chunk's revision, collection) until
``compact`` passes that revision, or until ``MAX_LIST_SNAPSHOTS`` newer ones pushed it out (then its
tokens get 410 as if compacted).

Test controls: ``compact()``, ``send_bookmarks()``, ``stall_watches()``, ``close_watches()``,
``expire_continue_tokens(count)``, ``forward_port(...)``, ``write_log(...)``, ``exec_handler``, ``fail_next(status, count, verb)``, ``issue_token(...)``, ``revoke_token(token)``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import hashlib
import inspect
import itertools
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import yaml

from meshcore.store.kinds import plural as store_plural
from meshcore.store.resource import KINDS

JSON = dict[str, Any]
Path = tuple[str, ...]

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
_MAX_BODY = 4 * 1024 * 1024
MAX_LIST_SNAPSHOTS = 64


@dataclass(frozen=True, slots=True)
class ApiResource:
    """One resource type the stand-in serves."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def mesh_resources() -> list[ApiResource]:
    """The types the mesh's store holds (``meshcore.store.resource.KINDS``) plus Leases, Secrets and ConfigMaps."""
    out: list[ApiResource] = []
    for kind, (api_version, namespaced) in KINDS.items():
        group, _, version = api_version.rpartition("/")
        out.append(
            ApiResource(group, version, store_plural(kind), kind, namespaced, kind != "ServiceAccount")
        )
    out.append(ApiResource("coordination.k8s.io", "v1", "leases", "Lease", True, False))
    out.append(ApiResource("", "v1", "secrets", "Secret", True, False))  # the CA root (istio-ca-secret, cacerts)
    out.append(ApiResource("", "v1", "configmaps", "ConfigMap", True, False))  # the published root (istio-ca-root-cert)
    return out


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as RBAC sees it: ``verb`` is get/list/watch/create/update/patch/delete."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


class ApiError(Exception):
    """A failed request; becomes a ``Status`` response."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> JSON:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


@dataclass(frozen=True, slots=True)
class _Token:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str
    audiences: tuple[str, ...]
    credential_id: str


_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 410: "Expired",
            415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


@dataclass(slots=True)
class _Event:
    revision: int
    type: str
    resource: ApiResource
    namespace: str
    object: JSON
    # MODIFIED: the object before the change (never mutated once replaced), for field-selected watches.
    previous: JSON | None = None


@dataclass(eq=False)
class _Watch:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    bookmark: bool = False
    closed: bool = False
    stalled: bool = False


@dataclass(slots=True)
class _Target:
    resource: ApiResource
    namespace: str  # "" for cluster-scoped, or a namespaced list across all namespaces
    name: str
    subresource: str


class KubeApiServer:
    """``async with KubeApiServer() as api: api.url ...``; state lives in memory for the server's life."""

    def __init__(
        self,
        resources: Iterable[ApiResource] | None = None,
        *,
        host: str = "127.0.0.1",
        bookmark_interval: float = 60.0,
        require_namespaces: bool = True,
    ) -> None:
        self.resources = list(mesh_resources() if resources is None else resources)
        self._by_path = {(r.group, r.version, r.plural): r for r in self.resources}
        self._host = host
        self.port = 0
        self.bookmark_interval = bookmark_interval
        self.require_namespaces = require_namespaces
        self._objects: dict[tuple[ApiResource, str, str], JSON] = {}
        # Field ownership: object key -> manager -> set of owned leaf paths.
        self._owners: dict[tuple[ApiResource, str, str], dict[str, set[Path]]] = {}
        self._log: list[_Event] = []
        self._log_revs: list[int] = []
        self.revision = 1
        self.compacted = 0
        self._watches: set[_Watch] = set()
        self._faults: list[tuple[int, str | None]] = []
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.requests: list[RecordedRequest] = []
        self._tokens: dict[str, _Token] = {}
        # Paginated lists: (revision, resource, namespace, field selector) -> the collection's (selected)
        # items at that revision.
        self._list_snapshots: dict[tuple[int, ApiResource, str, str], list[JSON]] = {}
        self._expire_continues = 0
        # Port-forward: (namespace, pod, port) -> the loopback (host, port) that stands for it.
        self._forwards: dict[tuple[str, str, int], tuple[str, int]] = {}
        # Pod logs: (namespace, pod, container) -> (when written, line) in the order written.
        self._logs: dict[tuple[str, str, str], list[tuple[datetime, str]]] = {}
        # Pod exec: what runs the command (module docstring); None refuses exec with 500.
        self.exec_handler: ExecHandler | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.close_watches()
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # --- test controls -----------------------------------------------------------------------------------

    def compact(self, revision: int | None = None) -> None:
        """Drop the change history up to ``revision`` (default: all of it); older watches get 410."""
        upto = self.revision if revision is None else revision
        self.compacted = max(self.compacted, upto)
        cut = bisect.bisect_right(self._log_revs, self.compacted)
        del self._log[:cut]
        del self._log_revs[:cut]
        for key in [k for k in self._list_snapshots if k[0] < self.compacted]:
            del self._list_snapshots[key]
        self._wake_all()

    def send_bookmarks(self) -> None:
        """Make every open watch that allowed bookmarks send one now."""
        for w in self._watches:
            w.bookmark = True
            w.wake.set()

    def stall_watches(self) -> None:
        """Open watches send nothing more (a stuck connection) until ``close_watches`` ends them; with
        ``compact`` in between, their clients must re-list on resuming."""
        for w in self._watches:
            w.stalled = True

    def close_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer timeout does)."""
        for w in self._watches:
            w.closed = True
            w.wake.set()

    def forward_port(self, namespace: str, pod: str, port: int, target: tuple[str, int]) -> None:
        """``pods/portforward`` to ``port`` of that pod connects to ``target`` (a listener of the test)."""
        self._forwards[(namespace, pod, port)] = target

    def write_log(self, namespace: str, pod: str, container: str, text: str, *, at: datetime | None = None) -> None:
        """Append ``text`` (one or more lines) to that container's log, stamped ``at`` (default: now);
        followers of the log get it at once."""
        when = at or datetime.now(UTC)
        self._logs.setdefault((namespace, pod, container), []).extend(
            (when, line) for line in text.removesuffix("\n").split("\n"))
        self._wake_all()

    def expire_continue_tokens(self, count: int = 1) -> None:
        """The next ``count`` continue requests find their list's state gone, as compaction past its
        version would leave it: 410 Expired (the client must start its list again)."""
        self._expire_continues += count

    def fail_next(self, status: int = 500, count: int = 1, verb: str | None = None) -> None:
        """The next ``count`` requests (of RBAC ``verb``, or any) fail with ``status`` (429 and 503 carry
        Retry-After: 1)."""
        self._faults.extend([(status, verb)] * count)

    def _inject_fault(self, verb: str) -> None:
        for i, (code, only) in enumerate(self._faults):
            if only is None or only == verb:
                del self._faults[i]
                raise ApiError(code, _REASONS.get(code, "InternalError"), f"injected failure {code}")

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod_name: str = "",
        pod_uid: str = "",
        node_name: str = "",
        audiences: Iterable[str] = ("istio-ca",),
    ) -> str:
        """A new opaque token for a service account (bound to a pod, and the pod's node, when given)."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = _Token(namespace, service_account, pod_name, pod_uid, node_name, tuple(audiences),
                                     f"JTI={uuid.uuid4()}")
        return token

    def revoke_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    def _token_review(self, method: str, body: bytes) -> tuple[int, JSON]:
        self.requests.append(RecordedRequest("create", "authentication.k8s.io", "tokenreviews", "", "", ""))
        if method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{method} on tokenreviews: TokenReview is create only")
        review = _json_body(body)
        spec = review.get("spec") if isinstance(review, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("token"), str) or not spec["token"]:
            raise ApiError(422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value")
        asked = spec.get("audiences") or []
        out: JSON = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                     "spec": spec, "status": {"authenticated": False, "user": {}}}
        known = self._tokens.get(spec["token"])
        wanted = list(asked) if asked else [API_SERVER_AUDIENCE]
        met = [a for a in wanted if known is not None and a in known.audiences]
        if known is None:
            out["status"]["error"] = "[invalid bearer token, service account token is not valid]"
            return 201, out
        if not met:
            out["status"]["error"] = f"[invalid bearer token, token audiences {list(known.audiences)} is invalid " \
                                     f"for the target audiences {wanted}]"
            return 201, out
        if known.pod_name:
            pod = self.get_object("Pod", known.namespace, known.pod_name)
            if pod is None or (known.pod_uid and pod["metadata"].get("uid") != known.pod_uid):
                out["status"]["error"] = (f"[invalid bearer token, pod \"{known.pod_name}\" not found or "
                                          "its uid does not match the token]")
                return 201, out
        extra: JSON = {EXTRA_CREDENTIAL_ID: [known.credential_id]}
        if known.pod_name:
            extra[EXTRA_POD_NAME] = [known.pod_name]
            extra[EXTRA_POD_UID] = [known.pod_uid]
        if known.node_name:
            extra[EXTRA_NODE_NAME] = [known.node_name]
        out["status"] = {
            "authenticated": True,
            "user": {"username": f"system:serviceaccount:{known.namespace}:{known.service_account}",
                     "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{known.namespace}/{known.service_account}")),
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{known.namespace}",
                                "system:authenticated"],
                     "extra": extra},
            "audiences": met,
        }
        return 201, out

    def open_watches(self) -> int:
        return len(self._watches)

    # --- direct access (the "cluster" side of a test: what kubelet or kubectl would do) ------------------

    def put_object(self, obj: JSON) -> JSON:
        """Create or replace ``obj`` (status included) as if another client wrote it; returns it stored."""
        res = self._resource_for(obj)
        meta = obj.get("metadata", {})
        key = (res, meta.get("namespace", "") if res.namespaced else "", meta["name"])
        old = self._objects.get(key)
        new = copy.deepcopy(obj)
        new.setdefault("apiVersion", res.api_version)
        new.setdefault("kind", res.kind)
        if old is None:
            return self._store_new(key, new)
        new["metadata"].pop("resourceVersion", None)
        return self._store_update(key, old, new)

    def delete_object(self, kind: str, namespace: str, name: str) -> bool:
        res = next(r for r in self.resources if r.kind == kind)
        key = (res, namespace if res.namespaced else "", name)
        if key not in self._objects:
            return False
        self._delete(key)
        return True

    def get_object(self, kind: str, namespace: str, name: str) -> JSON | None:
        res = next(r for r in self.resources if r.kind == kind)
        obj = self._objects.get((res, namespace if res.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def _resource_for(self, obj: JSON) -> ApiResource:
        for r in self.resources:
            if r.kind == obj.get("kind") and r.api_version == obj.get("apiVersion", r.api_version):
                return r
        raise KeyError(f"the stand-in serves no {obj.get('apiVersion')} {obj.get('kind')}")

    # --- storage -----------------------------------------------------------------------------------------

    def _next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def _record(self, type_: str, key: tuple[ApiResource, str, str], obj: JSON, previous: JSON | None = None) -> None:
        self._log.append(_Event(self.revision, type_, key[0], key[1], copy.deepcopy(obj), previous))
        self._log_revs.append(self.revision)
        self._wake_all()

    def _wake_all(self) -> None:
        for w in self._watches:
            w.wake.set()

    def _store_new(self, key: tuple[ApiResource, str, str], obj: JSON) -> JSON:
        meta = obj.setdefault("metadata", {})
        meta["name"] = key[2]
        if key[0].namespaced:
            meta["namespace"] = key[1]
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        meta["resourceVersion"] = str(self._next_revision())
        self._objects[key] = obj
        self._record("ADDED", key, obj)
        return copy.deepcopy(obj)

    def _store_update(self, key: tuple[ApiResource, str, str], old: JSON, new: JSON) -> JSON:
        """Replace ``old`` with ``new`` (server-owned metadata kept); no-op writes take no revision."""
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if "managedFields" in old["metadata"]:
            meta["managedFields"] = old["metadata"]["managedFields"]
        if new == old:
            return copy.deepcopy(old)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._next_revision())
        self._objects[key] = new
        self._record("MODIFIED", key, new, old)  # old is out of _objects now: no one changes it
        return copy.deepcopy(new)

    def _delete(self, key: tuple[ApiResource, str, str]) -> JSON:
        res, ns, name = key
        if res.kind == "Namespace" and res.group == "":
            for inner in [k for k in self._objects if k[0].namespaced and k[1] == name]:
                self._delete(inner)
        obj = self._objects.pop(key)
        self._owners.pop(key, None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._next_revision())
        self._record("DELETED", key, gone)
        return copy.deepcopy(obj)

    # --- HTTP --------------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                keep_going = await self._handle(conn, reader, writer, request, body)
                if not keep_going or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.ProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _handle(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        request: h11.Request, body: bytes,
    ) -> bool:
        method = request.method.decode()
        url = urlsplit(request.target.decode())
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        try:
            log = _LOG_PATH.fullmatch(url.path)
            if log is not None:
                return await self._pod_log(conn, writer, method, query, log["ns"], log["pod"])
            exec_ = _EXEC_PATH.fullmatch(url.path)
            if exec_ is not None:
                params = parse_qs(url.query, keep_blank_values=True)
                await self._pod_exec(conn, reader, writer, method, headers, params, exec_["ns"], exec_["pod"])
                return False
            forward = _PORTFORWARD_PATH.fullmatch(url.path)
            if forward is not None:
                ports = [p for v in parse_qs(url.query).get("ports", []) for p in v.split(",")]
                await self._port_forward(conn, reader, writer, method, headers, forward["ns"], forward["pod"], ports)
                return False
            if url.path.rstrip("/") == TOKEN_REVIEWS:
                self._inject_fault("create")
                status, payload = self._token_review(method, body)
                await self._send(conn, writer, status, json.dumps(payload).encode())
                return True
            target = self._route(url.path)
            self._inject_fault(_verb(method, target, query))
            if method == "GET" and query.get("watch") in ("1", "true"):
                self._audit("watch", target)
                await self._watch(conn, writer, target, query)
                return False
            status, payload = self._dispatch(method, target, query, headers, body)
        except ApiError as e:
            status, payload = e.code, e.status()
        extra = [("retry-after", "1")] if status in (429, 503) else []
        await self._send(conn, writer, status, json.dumps(payload).encode(), extra)
        return True

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, data: bytes,
        extra: list[tuple[str, str]] | None = None, *, content_type: str = "application/json",
    ) -> None:
        headers = [("content-type", content_type), ("content-length", str(len(data))), *(extra or [])]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        writer.write(conn.send(h11.Data(data=data)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    def _route(self, path: str) -> _Target:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in self._by_path:
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, version, rest[0]) not in self._by_path or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        res = self._by_path[(group, version, rest[0])]
        if namespace and not res.namespaced:
            raise ApiError(404, "NotFound", f"{res.plural} is not namespaced ({path})")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and (sub != "status" or not res.has_status):
            raise ApiError(404, "NotFound", f"{res.plural} has no subresource {sub!r}")
        if name and res.namespaced and not namespace:
            raise ApiError(404, "NotFound", f"{res.plural} is namespaced: use /namespaces/NS/{res.plural}/{name}")
        return _Target(res, namespace, name, sub)

    # --- pods/log -------------------------------------------------------------------------------------------

    async def _pod_log(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, query: dict[str, str],
        namespace: str, pod: str,
    ) -> bool:
        """Answer one pods/log request (module docstring); True when the connection may be reused."""
        self.requests.append(RecordedRequest("get", "", "pods", "log", namespace, pod))
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"method {method} is not supported on pods/log")
        self._inject_fault("get")
        found = self.get_object("Pod", namespace, pod)
        if found is None:
            raise ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        container = _pod_container(found, pod, query.get("container", ""))
        if _flag(query, "previous"):
            raise ApiError(400, "BadRequest", f'previous terminated container "{container}" in pod "{pod}" not found')
        since = _log_since(query)
        tail = _log_int(query, "tailLines", 0)
        limit = _log_int(query, "limitBytes", 1)
        stamps = _flag(query, "timestamps")
        key = (namespace, pod, container)

        def render(entries: list[tuple[datetime, str]]) -> bytes:
            return "".join((f"{_rfc3339_nano(w)} " if stamps else "") + line + "\n" for w, line in entries).encode()

        entries = [e for e in self._logs.get(key, []) if since is None or e[0] >= since]
        if tail is not None:
            entries = entries[len(entries) - tail:] if tail else []
        data = render(entries)
        if limit is not None:
            data = data[:limit]
        if not _flag(query, "follow"):
            await self._send(conn, writer, 200, data, content_type="text/plain")
            return True
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "text/plain"), ("transfer-encoding", "chunked")])) or b"")
        sent, position = len(data), len(self._logs.get(key, []))
        follower = _Watch()
        self._watches.add(follower)
        try:
            while True:
                if data:
                    writer.write(conn.send(h11.Data(data=data)) or b"")
                    await writer.drain()
                if limit is not None and sent >= limit:
                    break
                follower.wake.clear()
                now = self.get_object("Pod", namespace, pod)
                log = self._logs.get(key, [])
                if follower.closed or now is None or now["metadata"].get("uid") != found["metadata"].get("uid"):
                    break
                if len(log) == position:
                    await follower.wake.wait()
                    data = b""
                    continue
                data, position = render(log[position:]), len(log)
                if limit is not None:
                    data = data[:limit - sent]
                sent += len(data)
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            self._watches.discard(follower)
        return False

    # --- exec over WebSocket ----------------------------------------------------------------------------

    async def _pod_exec(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
        headers: dict[str, str], params: dict[str, list[str]], namespace: str, pod: str,
    ) -> None:
        """Validate, answer 101, gather stdin, run ``exec_handler``, send its output and the Status."""
        # RBAC: ``create`` on pods/exec, and ``get`` as the upgrade is a GET (API servers check either or both).
        self.requests.append(RecordedRequest("get", "", "pods", "exec", namespace, pod))
        self.requests.append(RecordedRequest("create", "", "pods", "exec", namespace, pod))
        query = {k: v[-1] for k, v in params.items()}
        if method not in ("GET", "POST") or headers.get("upgrade", "").lower() != "websocket" \
                or "sec-websocket-key" not in headers:  # fmt: skip
            raise ApiError(400, "BadRequest", "Upgrade request required (the stand-in serves exec as a WebSocket "
                           f"upgrade with subprotocol {' or '.join(EXEC_PROTOCOLS)})")
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        protocol = next((p for p in EXEC_PROTOCOLS if p in offered), None)
        if protocol is None:
            raise ApiError(400, "BadRequest", f"exec: the WebSocket subprotocol must be one of {', '.join(EXEC_PROTOCOLS)}")
        argv = params.get("command", [])
        if not argv:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command")
        stdin, stdout, stderr = _flag(query, "stdin"), _flag(query, "stdout"), _flag(query, "stderr")
        if not (stdin or stdout or stderr):
            raise ApiError(400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr")
        if _flag(query, "tty"):
            raise ApiError(400, "BadRequest", "tty=true: the API stand-in models no terminal")
        if stdin and protocol == EXEC_PROTOCOLS[-1]:
            raise ApiError(400, "BadRequest", f"stdin=true on {protocol}: the stand-in needs "
                           f"{EXEC_PROTOCOLS[0]} to see stdin end")
        found = self.get_object("Pod", namespace, pod)
        if found is None:
            raise ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        container = _pod_container(found, pod, query.get("container", ""))
        handler = self.exec_handler
        if handler is None:
            raise ApiError(500, "InternalError", "the API stand-in has no exec_handler (a test sets one)")
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _WS_GUID).encode()).digest()).decode()
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept),
            ("sec-websocket-protocol", protocol)])) or b"")
        await writer.drain()
        given = bytearray()
        if stdin:
            async for message in _client_messages(reader, writer, conn.trailing_data[0]):
                if message[:1] == bytes([EXEC_STDIN]):
                    given += message[1:]
                elif message == bytes([EXEC_CLOSE, EXEC_STDIN]):
                    break
            else:
                return  # the client went away before stdin ended
        try:
            result = handler(namespace, pod, container, list(argv), bytes(given))
            out, err, code = await result if inspect.isawaitable(result) else result
            status = exec_status(argv, code)
        except Exception as e:  # the handler's failure is the runtime's error, as the API server reports it
            out, err, status = b"", b"", {"metadata": {}, "status": "Failure", "reason": "InternalError",
                                          "message": f"error executing command in container: {e}"}
        for channel, data, wanted in ((EXEC_STDOUT, out, stdout), (EXEC_STDERR, err, stderr)):
            for i in range(0, len(data) if wanted else 0, 65536):
                writer.write(ws_frame(WS_BINARY, bytes([channel]) + data[i:i + 65536]))
        writer.write(ws_frame(WS_BINARY, bytes([EXEC_ERROR]) + json.dumps(status).encode()))
        writer.write(ws_frame(WS_CLOSE, (1000).to_bytes(2, "big")))
        await writer.drain()

    # --- port-forward over WebSocket ---------------------------------------------------------------------

    async def _port_forward(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
        headers: dict[str, str], namespace: str, pod: str, port_texts: list[str],
    ) -> None:
        """Validate, answer 101, then relay each port's bytes between its channel and its target."""
        self.requests.append(RecordedRequest("create", "", "pods", "portforward", namespace, pod))
        if method != "GET" or headers.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in headers:
            raise ApiError(400, "BadRequest", "port-forward: the stand-in serves it as a WebSocket upgrade of a GET "
                           f"(subprotocol {PORTFORWARD_PROTOCOL})")
        if PORTFORWARD_PROTOCOL not in [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]:
            raise ApiError(400, "BadRequest", f"port-forward: the WebSocket subprotocol must be {PORTFORWARD_PROTOCOL}")
        if not port_texts or not all(p.isdigit() and 0 < int(p) < 65536 for p in port_texts):
            raise ApiError(400, "BadRequest", f"port-forward: ports must be 1-65535, got {','.join(port_texts)!r}")
        if self.get_object("Pod", namespace, pod) is None:
            raise ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        ports = [int(p) for p in port_texts]
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _WS_GUID).encode()).digest()).decode()
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept),
            ("sec-websocket-protocol", PORTFORWARD_PROTOCOL)])) or b"")
        buffered = conn.trailing_data[0]
        targets: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task[None]] = []

        def send(channel: int, data: bytes) -> None:
            writer.write(ws_frame(WS_BINARY, bytes([channel]) + data))

        for i, port in enumerate(ports):
            send(2 * i, port.to_bytes(2, "little"))
            send(2 * i + 1, port.to_bytes(2, "little"))
        for i, port in enumerate(ports):
            address = self._forwards.get((namespace, pod, port))
            try:
                if address is None:
                    raise OSError(f"nothing listens on port {port} of pod {namespace}/{pod}")
                target_reader, target_writer = await asyncio.open_connection(*address)
            except OSError as e:
                send(2 * i + 1, f"error forwarding port {port} to pod {namespace}/{pod}: {e}".encode())
                continue
            targets[2 * i] = target_writer
            pumps.append(asyncio.create_task(self._pump_out(target_reader, writer, 2 * i)))
        from_client = asyncio.create_task(self._pump_in(reader, writer, buffered, targets))
        try:
            if pumps:
                # return_exceptions: a pump cancelled below must not leave an exception nobody retrieves (logged at GC)
                await asyncio.wait([asyncio.gather(*pumps, return_exceptions=True), from_client],
                                   return_when=asyncio.FIRST_COMPLETED)
            writer.write(ws_frame(WS_CLOSE, (1000).to_bytes(2, "big")))
            await writer.drain()
        finally:
            from_client.cancel()
            for task in pumps:
                task.cancel()
            await asyncio.gather(from_client, *pumps, return_exceptions=True)
            for target in targets.values():
                target.close()

    @staticmethod
    async def _pump_out(target: asyncio.StreamReader, writer: asyncio.StreamWriter, channel: int) -> None:
        with contextlib.suppress(OSError):
            while data := await target.read(65536):
                writer.write(ws_frame(WS_BINARY, bytes([channel]) + data))
                await writer.drain()

    @staticmethod
    async def _pump_in(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffered: bytes,
        targets: dict[int, asyncio.StreamWriter],
    ) -> None:
        """Client frames to the targets until the client closes (or breaks the protocol)."""
        async for whole in _client_messages(reader, writer, buffered):
            target = targets.get(whole[0]) if whole else None
            if target is not None and len(whole) > 1:
                target.write(whole[1:])
                await target.drain()

    def _audit(self, verb: str, t: _Target) -> None:
        self.requests.append(RecordedRequest(verb, t.resource.group, t.resource.plural, t.subresource,
                                             t.namespace, t.name))

    def _dispatch(
        self, method: str, t: _Target, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, JSON]:
        if query.get("labelSelector"):
            raise ApiError(400, "BadRequest", "labelSelector is not supported by the API stand-in")
        if query.get("fieldSelector") and (method != "GET" or t.name):
            raise ApiError(400, "BadRequest", "the stand-in takes fieldSelector on a list or watch of a collection")
        if method == "GET":
            self._audit("get" if t.name else "list", t)
            return (200, self._get(t)) if t.name else (200, self._list(t, query))
        if not t.name and method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not supported")
        if method == "POST":
            self._audit("create", t)
            if t.name:
                raise ApiError(405, "MethodNotAllowed", "POST goes to the collection, not an object")
            return 201, self._create(t, _json_body(body))
        if method == "PUT":
            self._audit("update", t)
            return 200, self._update(t, _json_body(body), query.get("fieldManager", "unknown"))
        if method == "PATCH":
            self._audit("patch", t)
            return self._patch(t, query, headers.get("content-type", "").split(";")[0].strip(), body)
        if method == "DELETE":
            self._audit("delete", t)
            key = self._key(t)
            if key not in self._objects:
                raise self._not_found(t)
            return 200, self._delete(key)
        raise ApiError(405, "MethodNotAllowed", f"method {method} is not supported")

    def _key(self, t: _Target) -> tuple[ApiResource, str, str]:
        return (t.resource, t.namespace, t.name)

    def _not_found(self, t: _Target) -> ApiError:
        return ApiError(404, "NotFound", f'{t.resource.plural} "{t.name}" not found',
                        {"name": t.name, "group": t.resource.group, "kind": t.resource.plural})

    def _get(self, t: _Target) -> JSON:
        obj = self._objects.get(self._key(t))
        if obj is None:
            raise self._not_found(t)
        return copy.deepcopy(obj)

    def _list(self, t: _Target, query: dict[str, str]) -> JSON:
        limit_text, token = query.get("limit", ""), query.get("continue", "")
        if limit_text and (not limit_text.isdigit() or int(limit_text) < 0):
            raise ApiError(400, "BadRequest", f"limit must be a non-negative integer, not {limit_text!r}")
        limit = int(limit_text or 0)
        selector = query.get("fieldSelector", "")
        if token:
            if query.get("resourceVersion", "") not in ("", "0"):
                raise ApiError(400, "BadRequest", "specifying resourceVersion is not allowed with continue")
            return self._list_chunk(t, token, limit, selector)
        listed = self._list_now(t, query)
        if limit and len(listed["items"]) > limit:
            revision = int(listed["metadata"]["resourceVersion"])
            self._list_snapshots[(revision, t.resource, t.namespace, selector)] = listed["items"]
            while len(self._list_snapshots) > MAX_LIST_SNAPSHOTS:
                del self._list_snapshots[next(iter(self._list_snapshots))]
            return self._chunk(t, revision, listed["items"], 0, limit, selector)
        return listed

    def _list_chunk(self, t: _Target, token: str, limit: int, selector: str) -> JSON:
        try:
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            revision, start, namespace = int(state["rv"]), int(state["start"]), str(state["ns"])
        except (ValueError, KeyError, TypeError) as e:
            raise ApiError(400, "BadRequest", f"the continue token is not valid: {e}") from None
        if namespace != t.namespace:
            raise ApiError(400, "BadRequest", "the continue token belongs to another collection")
        if str(state.get("fs", "")) != selector:
            raise ApiError(400, "BadRequest", "the continue token belongs to a list with another fieldSelector")
        if self._expire_continues > 0:
            self._expire_continues -= 1
            self._list_snapshots.pop((revision, t.resource, t.namespace, selector), None)
        items = self._list_snapshots.get((revision, t.resource, t.namespace, selector))
        if items is None:
            raise ApiError(410, "Expired", f"the continue token's resource version {revision} is too old (the "
                           f"history up to {self.compacted} was compacted); start a new list without continue")
        return self._chunk(t, revision, items, start, limit, selector)

    def _chunk(self, t: _Target, revision: int, items: list[JSON], start: int, limit: int, selector: str) -> JSON:
        end = start + limit if limit else len(items)
        meta: JSON = {"resourceVersion": str(revision)}
        if end < len(items):
            state: JSON = {"rv": revision, "start": end, "ns": t.namespace}
            if selector:
                state["fs"] = selector
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        return {"kind": f"{t.resource.kind}List", "apiVersion": t.resource.api_version, "metadata": meta,
                "items": items[start:end]}  # the snapshot's objects are copies no one changes

    def _list_now(self, t: _Target, query: dict[str, str]) -> JSON:
        rv = query.get("resourceVersion", "")
        if rv not in ("", "0"):
            n = _parse_rv(rv)
            if query.get("resourceVersionMatch") == "Exact" and n != self.revision:
                code = 410 if n < self.compacted else 400
                raise ApiError(code, _REASONS[code], f"resourceVersion {rv}: the stand-in lists only the latest "
                               "state exactly" if code == 400 else f"too old resource version: {rv}")
            if n > self.revision:
                raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self.revision}")
        selected = parse_field_selector(query.get("fieldSelector", ""), t.resource)
        items = [copy.deepcopy(o) for k, o in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
                 if k[0] == t.resource and (not t.namespace or k[1] == t.namespace) and selects(selected, o)]
        return {"kind": f"{t.resource.kind}List", "apiVersion": t.resource.api_version,
                "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    def _check_body(self, t: _Target, obj: JSON) -> JSON:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body must be an object with metadata")
        res = t.resource
        if obj.get("kind", res.kind) != res.kind or obj.get("apiVersion", res.api_version) != res.api_version:
            raise ApiError(400, "BadRequest", f"the body is {obj.get('apiVersion')} {obj.get('kind')}, "
                           f"the URL is {res.api_version} {res.kind}")
        meta = obj.setdefault("metadata", {})
        if t.name and meta.get("name", t.name) != t.name:
            raise ApiError(400, "BadRequest", f"the name in the body ({meta.get('name')}) does not match the URL")
        if res.namespaced and meta.get("namespace", t.namespace) != t.namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                           "namespace sent on the request")
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        meta.pop("managedFields", None)
        return obj

    def _check_namespace(self, t: _Target) -> None:
        if not self.require_namespaces or not t.resource.namespaced:
            return
        ns_res = next((r for r in self.resources if r.kind == "Namespace" and r.group == ""), None)
        if ns_res is not None and (ns_res, "", t.namespace) not in self._objects:
            raise ApiError(404, "NotFound", f'namespaces "{t.namespace}" not found',
                           {"name": t.namespace, "kind": "namespaces"})

    def _create(self, t: _Target, obj: JSON) -> JSON:
        if t.resource.namespaced and not t.namespace:
            raise ApiError(405, "MethodNotAllowed", f"create {t.resource.plural} in a namespace")
        obj = self._check_body(t, obj)
        name = obj["metadata"].get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        key = (t.resource, t.namespace, name)
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{t.resource.plural} "{name}" already exists',
                           {"name": name, "kind": t.resource.plural})
        self._check_namespace(_Target(t.resource, t.namespace, name, ""))
        if t.resource.has_status:
            obj.pop("status", None)  # status is a subresource: set through /status only
        obj["metadata"].pop("resourceVersion", None)
        return self._store_new(key, obj)

    def _update(self, t: _Target, obj: JSON, manager: str) -> JSON:
        obj = self._check_body(t, obj)
        key = self._key(t)
        old = self._objects.get(key)
        if old is None:
            raise self._not_found(t)
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(t)
        return self._write_scoped(key, old, obj, t.subresource, manager)

    def _conflict(self, t: _Target) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {t.resource.plural} "{t.name}": the '
                        "object has been modified; please apply your changes to the latest version and try again",
                        {"name": t.name, "group": t.resource.group, "kind": t.resource.plural})

    def _write_scoped(self, key: tuple[ApiResource, str, str], old: JSON, given: JSON, sub: str, manager: str) -> JSON:
        """Write ``given`` through the main resource (status kept) or ``/status`` (only status taken)."""
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in given:
                new["status"] = given["status"]
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(given)
            if key[0].has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        self._take_changed(key, old, new, manager)
        return self._store_update(key, old, new)

    def _take_changed(self, key: tuple[ApiResource, str, str], old: JSON, new: JSON, manager: str) -> None:
        """An update's manager owns every leaf it changed (so a later apply by another manager conflicts)."""
        changed = {p for p in _leaves(_ownable(new)) if _at(_ownable(old), p) != _at(_ownable(new), p)}
        if not changed:
            return
        owners = self._owners.setdefault(key, {})
        for other, paths in owners.items():
            if other != manager:
                paths.difference_update(changed)
        owners.setdefault(manager, set()).update(changed)
        self._render_managed_fields(key, new)

    def _patch(self, t: _Target, query: dict[str, str], content_type: str, body: bytes) -> tuple[int, JSON]:
        key = self._key(t)
        if content_type == MERGE_PATCH:
            old = self._objects.get(key)
            if old is None:
                raise self._not_found(t)
            patch = _json_body(body)
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            rv = (patch.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(t)
            merged = _merge_patch(copy.deepcopy(old), patch)
            merged["metadata"].pop("resourceVersion", None)
            return 200, self._write_scoped(key, old, merged, t.subresource, query.get("fieldManager", "unknown"))
        if content_type == APPLY_PATCH:
            return self._apply(t, query, body)
        raise ApiError(415, "UnsupportedMediaType", f"the stand-in accepts {MERGE_PATCH} and {APPLY_PATCH} "
                       f"patches, not {content_type or 'no content type'}")

    def _apply(self, t: _Target, query: dict[str, str], body: bytes) -> tuple[int, JSON]:
        manager = query.get("fieldManager", "")
        if not manager:
            raise ApiError(400, "BadRequest", "PATCH, application/apply-patch+yaml: fieldManager is required")
        force = query.get("force", "") in ("true", "1")
        try:
            applied = yaml.safe_load(body.decode())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ApiError(400, "BadRequest", f"the applied configuration is not YAML: {e}") from None
        applied = self._check_body(t, applied if isinstance(applied, dict) else None)  # type: ignore[arg-type]
        applied["metadata"].pop("resourceVersion", None)
        key = self._key(t)
        old = self._objects.get(key)
        creating = old is None
        if old is None:
            if t.subresource == "status":
                raise self._not_found(t)
            self._check_namespace(t)
            old = {"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": {"name": t.name}}
        scope_status = t.subresource == "status"
        in_scope = (lambda p: p[:1] == ("status",)) if scope_status else (lambda p: p[:1] != ("status",))
        mine = {p for p in _leaves(_ownable(applied)) if in_scope(p)}
        owners = self._owners.setdefault(key, {})
        current = _ownable(old)
        conflicts: list[tuple[str, Path]] = []
        for other, paths in owners.items():
            if other == manager:
                continue
            for p in paths:
                if any(_overlaps(p, q) and _at(current, p) != _at(_ownable(applied), p)
                       and not (len(p) > len(q) and _at(_ownable(applied), q) == {}) for q in mine):
                    conflicts.append((other, p))
        if conflicts and not force:
            lines = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in sorted(conflicts))
            raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): {lines}",
                           {"causes": [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                                        "field": "." + ".".join(p)} for m, p in sorted(conflicts)]})
        for other, p in conflicts:
            owners[other].discard(p)
        new = copy.deepcopy(old)
        before = owners.get(manager, set())
        held_by_others = set().union(*(ps for m, ps in owners.items() if m != manager)) if owners else set()
        for p in sorted(before - mine, key=len, reverse=True):
            if in_scope(p) and p not in held_by_others:
                _remove(new, p)
        for p in mine:
            _put(new, p, copy.deepcopy(_at(_ownable(applied), p)))
        owners[manager] = {p for p in before if not in_scope(p)} | mine
        self._render_managed_fields(key, new)
        if creating:
            return 201, self._store_new(key, new)
        return 200, self._store_update(key, old, new)

    def _render_managed_fields(self, key: tuple[ApiResource, str, str], obj: JSON) -> None:
        entries = []
        for manager, paths in sorted(self._owners.get(key, {}).items()):
            for sub, scope in (("", [p for p in paths if p[:1] != ("status",)]),
                               ("status", [p for p in paths if p[:1] == ("status",)])):
                if not scope:
                    continue
                fields: JSON = {}
                for p in scope:
                    node = fields
                    for part in p:
                        node = node.setdefault(f"f:{part}", {})
                entry: JSON = {"manager": manager, "operation": "Apply", "apiVersion": key[0].api_version,
                               "fieldsType": "FieldsV1", "fieldsV1": fields}
                if sub:
                    entry["subresource"] = sub
                entries.append(entry)
        if entries:
            obj["metadata"]["managedFields"] = entries
        else:
            obj["metadata"].pop("managedFields", None)

    # --- watch -------------------------------------------------------------------------------------------

    async def _watch(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, t: _Target, query: dict[str, str]
    ) -> None:
        if t.name:
            raise ApiError(400, "BadRequest", "watch a collection (with a name, use the list's fieldSelector)")
        rv = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(query.get("timeoutSeconds") or 1800)
        selector = query.get("fieldSelector", "")
        selected = parse_field_selector(selector, t.resource)  # refused (400) before the stream starts
        initial: list[JSON] = []
        if rv in ("", "0"):
            position = self.revision
            initial = [{"type": "ADDED", "object": o} for o in self._list(t, {"fieldSelector": selector})["items"]]
        else:
            position = _parse_rv(rv)
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/json"), ("transfer-encoding", "chunked")])) or b"")
        watch = _Watch()
        self._watches.add(watch)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            await self._write_events(conn, writer, initial)
            while not watch.closed:
                if watch.stalled:
                    watch.wake.clear()
                    await watch.wake.wait()
                    continue
                if position < self.compacted:
                    err = ApiError(410, "Expired", f"too old resource version: {position} ({self.compacted})")
                    await self._write_events(conn, writer, [{"type": "ERROR", "object": err.status()}])
                    break
                start = bisect.bisect_right(self._log_revs, position)
                batch = [e for e in itertools.islice(self._log, start, None)]
                events = [ev for e in batch
                          if e.resource == t.resource and (not t.namespace or e.namespace == t.namespace)
                          and (ev := _selected_event(e, selected)) is not None]
                if batch:
                    position = batch[-1].revision
                await self._write_events(conn, writer, events)
                now = loop.time()
                if bookmarks and (watch.bookmark or now >= next_bookmark):
                    watch.bookmark = False
                    next_bookmark = now + self.bookmark_interval
                    mark = {"kind": t.resource.kind, "apiVersion": t.resource.api_version,
                            "metadata": {"resourceVersion": str(max(position, self.revision))}}
                    position = max(position, self.revision)
                    await self._write_events(conn, writer, [{"type": "BOOKMARK", "object": mark}])
                if now >= end:
                    break
                if self._log_revs and self._log_revs[-1] > position:
                    continue
                watch.wake.clear()
                wait = min(end, next_bookmark if bookmarks else end) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.wake.wait(), timeout=max(wait, 0.0))
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            self._watches.discard(watch)

    async def _write_events(self, conn: h11.Connection, writer: asyncio.StreamWriter, events: list[JSON]) -> None:
        if not events:
            return
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        writer.write(conn.send(h11.Data(data=data)) or b"")
        await writer.drain()


# --- helpers (pure) -------------------------------------------------------------------------------------

PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"
_LOG_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log/?")
_PORTFORWARD_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/portforward/?")
_EXEC_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/exec/?")
# Exec's subprotocols, the stand-in's preference first, and their channels (module docstring).
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
EXEC_STDIN, EXEC_STDOUT, EXEC_STDERR, EXEC_ERROR, EXEC_CLOSE = 0, 1, 2, 3, 255
# What runs an exec'd command: (namespace, pod, container, argv, stdin) -> (stdout, stderr, exit code).
ExecHandler = Callable[[str, str, str, list[str], bytes],
                       "tuple[bytes, bytes, int] | Awaitable[tuple[bytes, bytes, int]]"]
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's key suffix
WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_MAX_PAYLOAD = 1 << 20


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One RFC 6455 frame (a server's unmasked; a client's with its 4-byte ``mask``)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += n.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def exec_status(argv: list[str], code: int) -> JSON:
    """The v1 Status exec's error channel carries when the command ends with ``code``."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def _pod_container(pod_obj: JSON, pod: str, container: str) -> str:
    """The container a pods/log or pods/exec request names (it must be the pod's), else the pod's only one;
    the API server's 400 otherwise."""
    spec = pod_obj.get("spec") or {}
    names = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, dict)]
    others = [str(c.get("name")) for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    if not container:
        if len(names) != 1:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod}, choose one "
                           f"of: [{' '.join(names)}]" + (f" or one of the init containers: [{' '.join(others)}]"
                                                         if others else ""))
        return names[0]
    if container not in names + others:
        raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
    return container


async def _client_messages(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           buffered: bytes) -> AsyncIterator[bytes]:  # fmt: skip
    """A WebSocket client's whole binary messages until it closes (or breaks the protocol: closed 1002);
    pings are answered."""
    data = bytearray(buffered)
    message = bytearray()
    while True:
        try:
            parsed = parse_ws_frame(bytes(data), require_mask=True)
        except ValueError:
            writer.write(ws_frame(WS_CLOSE, (1002).to_bytes(2, "big")))
            return
        if parsed is None:
            chunk = await reader.read(65536)
            if not chunk:
                return
            data += chunk
            continue
        fin, opcode, payload, used = parsed
        del data[:used]
        if opcode == WS_CLOSE:
            return
        if opcode == WS_PING:
            writer.write(ws_frame(WS_PONG, payload))
            continue
        if opcode in (WS_BINARY, WS_CONTINUATION):
            message += payload
            if fin:
                yield bytes(message)
                message = bytearray()


def parse_ws_frame(data: bytes, *, require_mask: bool = False) -> tuple[bool, int, bytes, int] | None:
    """The first frame in ``data``: (fin, opcode, unmasked payload, bytes used), None when incomplete;
    ``ValueError`` for a frame this side must refuse (reserved bits or opcode, an unmasked client frame, a
    control frame over 125 bytes or fragmented, a payload over ``WS_MAX_PAYLOAD``)."""
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
    if b0 & 0x70:
        raise ValueError("reserved bits set (no extension was negotiated)")
    if opcode not in (WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG):
        raise ValueError(f"reserved opcode {opcode:#x}")
    if require_mask and not masked:
        raise ValueError("a client frame must be masked")
    pos = 2
    if n == 126:
        if len(data) < 4:
            return None
        n, pos = int.from_bytes(data[2:4], "big"), 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, pos = int.from_bytes(data[2:10], "big"), 10
    if opcode >= WS_CLOSE and (n > 125 or not fin):
        raise ValueError("a control frame must be whole and at most 125 bytes")
    if n > WS_MAX_PAYLOAD:
        raise ValueError(f"frame payload of {n} bytes is over {WS_MAX_PAYLOAD}")
    mask = b""
    if masked:
        if len(data) < pos + 4:
            return None
        mask, pos = data[pos:pos + 4], pos + 4
    if len(data) < pos + n:
        return None
    payload = data[pos:pos + n]
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload, pos + n


# Field selectors: fields every resource is selectable by, and those of particular kinds (the API server's
# field label conversions; the stand-in has the ones the mesh's clients use).
COMMON_SELECTABLE_FIELDS = ("metadata.name", "metadata.namespace")
SELECTABLE_FIELDS: dict[str, tuple[str, ...]] = {"Pod": ("spec.nodeName",)}


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """One term of a field selector: ``field`` equals (or, ``equal=False``, differs from) ``value``."""

    field: str
    equal: bool
    value: str


def parse_field_selector(text: str, resource: ApiResource) -> tuple[FieldRequirement, ...]:
    """The terms of ``text`` (``f=v,f==v,f!=v``, values escaped with backslash), or ``ApiError`` 400 for a
    term that does not parse or a field ``resource`` is not selectable by."""
    terms: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        op_at = _find_operator(term)
        if op_at is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}: expected FIELD=VALUE, "
                           "FIELD==VALUE or FIELD!=VALUE")
        at, op = op_at
        name, value = term[:at].strip(), _unescape(term[at + len(op):], text)
        allowed = COMMON_SELECTABLE_FIELDS + SELECTABLE_FIELDS.get(resource.kind, ())
        if name not in allowed:
            raise ApiError(400, "BadRequest", f'"{name}" is not a known field selector: only "'
                           + '", "'.join(allowed) + f'" (field label not supported: {name})')
        terms.append(FieldRequirement(name, op != "!=", value))
    return tuple(terms)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for c in text:
        if escaped:
            current.append("\\" + c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _find_operator(term: str) -> tuple[int, str] | None:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return i, op
        i += 1
    return None


def _unescape(value: str, selector: str) -> str:
    out, escaped = [], False
    for c in value:
        if escaped:
            if c not in "\\,=":
                raise ApiError(400, "BadRequest", f"invalid field selector {selector!r}: invalid escape \\{c}")
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in ",=":
            raise ApiError(400, "BadRequest", f"invalid field selector {selector!r}: unescaped {c!r} in a value")
        else:
            out.append(c)
    if escaped:
        raise ApiError(400, "BadRequest", f"invalid field selector {selector!r}: a value ends in a lone backslash")
    return "".join(out)


def field_value(obj: JSON, field_name: str) -> str:
    """The value a field selector compares (absent: the empty string, as the API server's field sets have)."""
    node: Any = obj
    for part in field_name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def selects(terms: tuple[FieldRequirement, ...], obj: JSON) -> bool:
    return all((field_value(obj, r.field) == r.value) == r.equal for r in terms)


def _selected_event(event: _Event, terms: tuple[FieldRequirement, ...]) -> JSON | None:
    """The event a watch with field selector ``terms`` sends for ``event``, or None: a change into the
    selection is ADDED, out of it DELETED (the object as it was, at the new resourceVersion)."""
    if not terms:
        return {"type": event.type, "object": event.object}
    now = selects(terms, event.object)
    if event.type == "MODIFIED" and event.previous is not None:
        before = selects(terms, event.previous)
        if now and not before:
            return {"type": "ADDED", "object": event.object}
        if before and not now:
            gone = copy.deepcopy(event.previous)
            gone["metadata"]["resourceVersion"] = event.object["metadata"]["resourceVersion"]
            return {"type": "DELETED", "object": gone}
    return {"type": event.type, "object": event.object} if now else None


def _verb(method: str, t: _Target, query: dict[str, str]) -> str:
    if method == "GET":
        if query.get("watch") in ("1", "true"):
            return "watch"
        return "get" if t.name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true")


def _log_int(query: dict[str, str], name: str, least: int) -> int | None:
    text = query.get(name, "")
    if not text:
        return None
    if not text.lstrip("-").isdigit() or int(text) < least:
        raise ApiError(422, "Invalid", f"{name}: Invalid value: {text!r}: must be an integer of at least {least}")
    return int(text)


def _log_since(query: dict[str, str]) -> datetime | None:
    """``sinceSeconds`` (at least 1) or ``sinceTime`` (RFC 3339) as the earliest time shown; not both."""
    seconds, time_text = query.get("sinceSeconds", ""), query.get("sinceTime", "")
    if seconds and time_text:
        raise ApiError(422, "Invalid", "at most one of sinceTime or sinceSeconds may be specified")
    if seconds:
        value = _log_int(query, "sinceSeconds", 1)
        assert value is not None
        return datetime.now(UTC) - timedelta(seconds=value)
    if time_text:
        try:
            when = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "BadRequest", f"sinceTime {time_text!r} is not an RFC 3339 time") from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def _rfc3339_nano(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as e:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {e}") from None


def _parse_rv(rv: str) -> int:
    if not rv.isdigit():
        raise ApiError(400, "BadRequest", f"invalid resource version {rv!r}")
    return int(rv)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge_patch(target.get(k), v)
    return target


_SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "name",
                "namespace", "deletionTimestamp")


def _ownable(obj: JSON) -> JSON:
    """The fields managers can own: everything but identity and server-set metadata."""
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_META}
    if meta:
        out["metadata"] = meta
    return out


def _leaves(obj: Any, prefix: Path = ()) -> Iterator[Path]:
    """Leaf paths: maps are recursed (an empty map is a leaf), lists and scalars are leaves."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaves(v, (*prefix, str(k)))
    elif prefix:
        yield prefix


_MISSING = object()


def _at(obj: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _put(obj: JSON, path: Path, value: Any) -> None:
    for part in path[:-1]:
        nxt = obj.get(part)
        if not isinstance(nxt, dict):
            nxt = obj[part] = {}
        obj = nxt
    if value == {} and isinstance(obj.get(path[-1]), dict):
        return  # an empty map applied claims the map, not the fields others set in it
    obj[path[-1]] = value


def _remove(obj: JSON, path: Path) -> None:
    """Remove the leaf at ``path`` and any map left empty above it."""
    trail: list[tuple[JSON, str]] = []
    node: Any = obj
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return
        trail.append((node, part))
        node = node[part]
    for parent, part in reversed(trail):
        if parent[part] == {} or (parent, part) == trail[-1]:
            del parent[part]
        if parent:
            break


def _overlaps(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def write_kubeconfig(path: Any, server_url: str, *, context: str = "standin") -> Any:
    """A kubeconfig at ``path`` whose ``context`` (also the current one) points at ``server_url`` with a
    token the stand-in does not check; a second context ``nowhere`` points at a closed loopback port."""
    text = (
        f"apiVersion: v1\nkind: Config\ncurrent-context: {context}\n"
        f"clusters: [{{name: standin, cluster: {{server: '{server_url}'}}}},"
        " {name: nowhere, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        f"contexts: [{{name: {context}, context: {{cluster: standin, user: tester}}}},"
        " {name: nowhere, context: {cluster: nowhere, user: tester}}]\n"
    )
    with open(path, "w") as f:
        f.write(text)
    return path


class ThreadedKubeApi:
    """A ``KubeApiServer`` on its own event loop in a thread, for synchronous code under test (such as
    ``KubernetesStore``, whose calls block their caller). ``call(fn, ...)`` runs ``fn`` on the server's
    loop and returns its result (the server's state is touched only from its own loop).

    ``with ThreadedKubeApi() as api: ... api.url ... api.call(api.server.compact)``
    """

    def __init__(self, server: KubeApiServer | None = None) -> None:
        import threading

        self.server = server or KubeApiServer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-api", daemon=True)

    def start(self) -> ThreadedKubeApi:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> ThreadedKubeApi:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
