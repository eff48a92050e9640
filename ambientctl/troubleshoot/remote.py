"""Reaching the mesh's endpoints on a Kubernetes cluster through its API server: what ``reach`` is for
the local cluster, for ``--kubeconfig``/``--context``.

Every troubleshooting command that reads a proxy or istiod on Kubernetes goes through ``KubeReach``; the
source is chosen in one place, ``reach_for(state)``, which returns a ``MeshView``: ``Reach`` or
``KubeReach`` (the same ``get``/``json``/``istiod``/``ztunnel`` calls and ``ReachError`` on failure) with
the nodes, the waypoint pods, the proxies to scrape and the ztunnels' and waypoints' access logs (read or
followed: the local cluster's files, or ``pods/log``), so a command never branches on where it runs.
Nothing here needs more of the cluster than a user who may read pods, port-forward to them and read their
logs (``USER_RBAC``):

- finding a pod: the istio-system pods are listed (``GET /api/v1/namespaces/istio-system/pods``; labels
  are matched here, a Running pod first): istiod by ``app=istiod``, a node's ztunnel by ``app=ztunnel``
  and ``spec.nodeName``, a node agent by ``app=istio-cni``; a waypoint by its gateway label
  (``gateway.networking.k8s.io/gateway-name``) in its namespace; ``pod/NS/NAME`` is that pod.
- ``GET`` on a pod's port: the API server's pod port-forward, a WebSocket with the ``v4.channel.k8s.io``
  subprotocol to ``pods/NAME/portforward?ports=PORT``; one HTTP/1.1 request on the data channel
  (channel 0), the answer read until complete; each channel's first two bytes are the port number; text
  on the error channel (1) is the API server's or kubelet's error and becomes the ``ReachError``.
- logs: the ``pods/log`` subresource (``GET .../pods/NAME/log?container=&sinceSeconds=&tailLines=``, and
  ``follow=true`` streamed line by line while the caller iterates).
- exec: the ``pods/exec`` subresource as kubectl speaks it over WebSocket (``GET .../pods/NAME/exec?
  command=C&command=ARG...&container=&stdin=&stdout=true&stderr=true&tty=false``, subprotocols
  ``v5.channel.k8s.io`` then ``v4.channel.k8s.io``): each message is a channel byte then bytes; stdout (1)
  and stderr (2) are relayed as they come, stdin (0) streamed from the caller's file, its end sent as v5's
  close signal (channel 255, ``[255, 0]``; v4 has none, so a command reading stdin to its end waits there);
  the error channel (3) carries one v1 ``Status``: ``Success`` is exit 0, ``NonZeroExitCode`` gives the
  code from ``details.causes`` (reason ``ExitCode``), any other failure is the ``ReachError``. Without a
  container named, the pod is read and kubectl's default chosen (``default_container``).

Invariants: a command never sees a half answer (an answer is complete or a ``ReachError``); every network
wait is bounded by ``timeout`` except a followed log, which ends when the caller stops iterating, and an
exec's command, which runs as long as it runs (its connection and upgrade are bounded);
pod lists are read once per ``KubeReach`` (one command) and reused. The Kubernetes client is imported
only when a method runs (the local cluster's commands never load it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from ambientctl.cluster import Cluster, ClusterError

from .logs import GATEWAY_NAME_LABEL, LogRecord, component_files, follow, parse_line, read
from .reach import (
    AGENT_ADMIN,
    AGENT_MONITORING,
    ISTIOD,
    MAX_BODY,
    ZTUNNEL_ADMIN,
    Answer,
    Endpoints,
    Reach,
    ReachError,
    Target,
    parse_target,
)

if TYPE_CHECKING:
    from meshcore.store import Store

ISTIO_SYSTEM = "istio-system"
ISTIOD_LABEL = ("app", "istiod")
ZTUNNEL_LABEL = ("app", "ztunnel")
NODE_AGENT_LABEL = ("app", "istio-cni")
PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"
# pods/exec: the subprotocols offered (v5 first: it can close stdin, as kubectl prefers) and the channels.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
EXEC_STDIN, EXEC_STDOUT, EXEC_STDERR, EXEC_ERROR, EXEC_CLOSE = 0, 1, 2, 3, 255
EXEC_STDIN_CHUNK = 32 * 1024
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
KUBE_TIMEOUT_S = 10.0
# The verbs a user needs for what this module does (docs/kubernetes.md says the same).
USER_RBAC = (
    ("pods", ("get", "list")),
    ("pods/portforward", ("get", "create")),
    ("pods/log", ("get",)),
    ("pods/exec", ("get", "create")),
)
# Of each ztunnel's and waypoint's log on Kubernetes, the commands that read recent access records (explain)
# ask for at most this many lines (the local cluster reads a tail of each file by bytes).
KUBE_ACCESS_TAIL_LINES = 20_000
FOLLOW_POLL_S = 0.2

JSON = dict[str, Any]


# --- pure: which pod --------------------------------------------------------------------------------------


def _labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _running_first(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: ((p.get("status") or {}).get("phase") != "Running",
                                       str((p.get("metadata") or {}).get("name"))))  # fmt: skip


def _ref(pod: Mapping[str, Any], namespace: str) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace") or namespace), str(meta.get("name"))


def labelled(pods: Iterable[Mapping[str, Any]], label: tuple[str, str]) -> list[Mapping[str, Any]]:
    """The pods carrying ``label`` (key, value), Running ones first, then by name."""
    key, value = label
    return _running_first(p for p in pods if _labels(p).get(key) == value)


def pick_ztunnel_pod(pods: Iterable[Mapping[str, Any]], node: str) -> tuple[str, str]:
    """(namespace, name) of the ztunnel pod on ``node`` (a Running one first), or a ``ReachError`` naming
    the nodes that do have one."""
    ztunnels = labelled(pods, ZTUNNEL_LABEL)
    here = [p for p in ztunnels if (p.get("spec") or {}).get("nodeName") == node]
    if here:
        return _ref(here[0], ISTIO_SYSTEM)
    nodes = sorted({str((p.get("spec") or {}).get("nodeName")) for p in ztunnels})
    key, value = ZTUNNEL_LABEL
    where = (f"ztunnel pods run on: {', '.join(nodes)}" if nodes else
             f"no pod labelled {key}={value} there: is the mesh installed (`ambientctl install`)?")
    raise ReachError(f"no ztunnel pod on node {node!r} in {ISTIO_SYSTEM} ({where})")


def pick_istiod_pod(pods: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """(namespace, name) of an istiod-lite pod (a Running one first), or a ``ReachError``."""
    found = labelled(pods, ISTIOD_LABEL)
    if not found:
        key, value = ISTIOD_LABEL
        raise ReachError(f"no istiod pod (label {key}={value}) in {ISTIO_SYSTEM}: is the mesh installed "
                         "(`ambientctl install`)?")  # fmt: skip
    return _ref(found[0], ISTIO_SYSTEM)


def pick_waypoint_pod(pods: Iterable[Mapping[str, Any]], namespace: str, gateway: str) -> tuple[str, str]:
    """(namespace, name) of a pod of waypoint ``gateway`` in ``namespace`` (its gateway label)."""
    found = labelled(pods, (GATEWAY_NAME_LABEL, gateway))
    if not found:
        names = sorted({str(_labels(p).get(GATEWAY_NAME_LABEL)) for p in pods if GATEWAY_NAME_LABEL in _labels(p)})
        raise ReachError(f"no pod of waypoint {namespace}/{gateway} (label {GATEWAY_NAME_LABEL}={gateway})"
                         + (f"; waypoints with pods in {namespace}: {', '.join(names)}" if names else ""))
    return _ref(found[0], namespace)


def parse_remote_target(text: str) -> Target:
    """``reach.parse_target``'s targets plus ``waypoint/<namespace>/<gateway>`` (its pod, by gateway label)."""
    parts = text.strip().split("/")
    if len(parts) == 3 and parts[0] == "waypoint" and parts[1] and parts[2]:
        return Target("waypoint", namespace=parts[1], name=parts[2])
    try:
        return parse_target(text)
    except ReachError:
        raise ReachError(f"{text!r} is not a target: use istiod, node/<node> (its ztunnel), "
                         "pod/<namespace>/<name> or waypoint/<namespace>/<gateway>") from None


def default_container(pod: Mapping[str, Any]) -> str | None:
    """kubectl's choice when none is named: the default-container annotation, else the first container."""
    annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated:
        return str(annotated)
    containers = (pod.get("spec") or {}).get("containers") or []
    return str(containers[0].get("name")) if containers and isinstance(containers[0], Mapping) else None


@dataclass(frozen=True, slots=True)
class LogSource:
    """One container log to read: ``label`` prefixes its lines (``ztunnel-node-1``, ``waypoint ns/name``)."""

    label: str
    namespace: str
    pod: str
    container: str | None = None


def log_query(container: str | None, since_seconds: int | None, tail_lines: int | None,
              follow: bool = False, previous: bool = False) -> list[tuple[str, str]]:  # fmt: skip
    """The ``pods/log`` query parameters, only those that are set."""
    query: list[tuple[str, str]] = []
    if container:
        query.append(("container", container))
    if previous:
        query.append(("previous", "true"))
    if since_seconds is not None:
        query.append(("sinceSeconds", str(max(1, since_seconds))))
    if tail_lines is not None:
        query.append(("tailLines", str(tail_lines)))
    if follow:
        query.append(("follow", "true"))
    return query


def component_sources(component: str, system_pods: Sequence[Mapping[str, Any]],
                      waypoint_pods: Sequence[Mapping[str, Any]], *, node: str | None = None,
                      pod: tuple[str, str] | None = None) -> list[LogSource]:  # fmt: skip
    """The container logs of ``component`` on Kubernetes, labelled as the local cluster labels its log
    files: ``ztunnel-<node>``, ``node-agent-<node>``, ``istiod`` (``istiod <pod>`` when several),
    ``waypoint <ns>/<pod>``. ``system_pods``: istio-system's pods; ``waypoint_pods``: pods carrying the
    gateway label (``pod`` narrows to that one, which must be a waypoint's). A ``ValueError`` says what
    matched nothing."""
    if component in ("ztunnel", "node-agent"):
        label = ZTUNNEL_LABEL if component == "ztunnel" else NODE_AGENT_LABEL
        found = labelled(system_pods, label)
        chosen = [p for p in found if node is None or (p.get("spec") or {}).get("nodeName") == node]
        if not chosen:
            nodes = sorted({str((p.get("spec") or {}).get("nodeName")) for p in found})
            raise ValueError(f"no {component} pod (label {label[0]}={label[1]}) in {ISTIO_SYSTEM}"
                             + (f" on node {node!r} (it runs on: {', '.join(nodes) or 'no node'})" if node else ""))
        return [LogSource(f"{component}-{(p.get('spec') or {}).get('nodeName')}", *_ref(p, ISTIO_SYSTEM),
                          default_container(p)) for p in chosen]  # fmt: skip
    if component == "istiod":
        found = labelled(system_pods, ISTIOD_LABEL)
        if not found:
            raise ValueError(f"no istiod pod (label app=istiod) in {ISTIO_SYSTEM}")
        return [LogSource("istiod" if len(found) == 1 else f"istiod {_ref(p, ISTIO_SYSTEM)[1]}",
                          *_ref(p, ISTIO_SYSTEM), default_container(p)) for p in found]  # fmt: skip
    if component == "waypoint":
        refs = [(_ref(p, ""), p) for p in _running_first(waypoint_pods) if GATEWAY_NAME_LABEL in _labels(p)]
        chosen = [(r, p) for r, p in refs if pod is None or r == pod]
        if pod is not None and not chosen:
            raise ValueError(f"{pod[0]}/{pod[1]} is not a waypoint pod (waypoints: "
                             f"{', '.join(f'{n}/{m}' for (n, m), _ in refs) or 'none'})")  # fmt: skip
        return [LogSource(f"waypoint {ns}/{name}", ns, name, default_container(p)) for (ns, name), p in chosen]
    raise ValueError(f"unknown component {component!r}: one of ztunnel, waypoint, istiod, node-agent")


def merge_logs(texts: Iterable[tuple[LogSource, str]], keep: Callable[[LogRecord], bool]) -> list[LogRecord]:
    """Every kept line of each log text, merged by time (stable: a line without a time stays after its
    log's previous line), as ``logs.read`` merges the local cluster's files."""
    out: list[tuple[datetime, int, LogRecord]] = []
    seq = 0
    for source, text in texts:
        last = datetime.min.replace(tzinfo=UTC)
        for line in text.splitlines():
            record = parse_line(line, source.label)
            last = record.time or last
            seq += 1
            if keep(record):
                out.append((last, seq, record))
    return [r for _, _, r in sorted(out, key=lambda t: (t[0], t[1]))]


# --- through the API server -------------------------------------------------------------------------------


class LogFollow:
    """Lines of followed container logs (``KubeReach.follow_logs``): an iterator of (source, line);
    ``close()`` (idempotent, also at the end) stops every stream and its thread."""

    def __init__(self, lines: queue.Queue[tuple[LogSource, str] | ReachError | None], loop: asyncio.AbstractEventLoop,
                 task: asyncio.Task[None], thread: threading.Thread, until: Callable[[], bool] | None,
                 timeout: float) -> None:  # fmt: skip
        self._lines, self._loop, self._task, self._thread = lines, loop, task, thread
        self._until = until
        self._timeout = timeout
        self._closed = False

    def __iter__(self) -> LogFollow:
        return self

    def __next__(self) -> tuple[LogSource, str]:
        while not self._closed:
            if self._until is not None and self._until():
                break
            try:
                item = self._lines.get(timeout=FOLLOW_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                break
            if isinstance(item, ReachError):
                self.close()
                raise item
            return item
        self.close()
        raise StopIteration

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()


class KubeReach(Endpoints):
    """The mesh's endpoints on one Kubernetes cluster, reached through its API server (module docstring)."""

    def __init__(self, configuration: Any, *, timeout: float = KUBE_TIMEOUT_S) -> None:
        self.configuration = configuration
        self.timeout = timeout
        self._pods: dict[str, list[JSON]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Forget the pod lists read so far (a long-running command, the dashboard, re-reads them)."""
        with self._lock:
            self._pods.clear()

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, *, timeout: float = KUBE_TIMEOUT_S) -> KubeReach:
        from meshcore.store.errors import StoreUnavailable
        from meshcore.store.kubernetes import load_configuration

        try:
            return cls(load_configuration(kubeconfig=kubeconfig, context=context), timeout=timeout)
        except StoreUnavailable as e:
            raise ReachError(str(e)) from None

    @property
    def where(self) -> str:
        return f"the Kubernetes API server {self.configuration.host}"

    # --- pods ----------------------------------------------------------------------------------------------

    def pods(self, namespace: str = ISTIO_SYSTEM) -> list[JSON]:
        """The pods of ``namespace`` ("" for every namespace), listed once per ``KubeReach``."""
        with self._lock:
            if namespace not in self._pods:
                path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
                listed = self._run(self._call("GET", path), f"list the pods in {namespace or 'any namespace'}")
                self._pods[namespace] = [p for p in json.loads(listed).get("items") or [] if isinstance(p, dict)]
            return self._pods[namespace]

    def waypoint_pods(self, namespace: str = "") -> list[JSON]:
        """Pods carrying the gateway label (a waypoint's), in ``namespace`` or every namespace."""
        return [p for p in self.pods(namespace) if GATEWAY_NAME_LABEL in _labels(p)]

    def ztunnel_pods(self) -> list[Mapping[str, Any]]:
        return labelled(self.pods(), ZTUNNEL_LABEL)

    def nodes(self) -> list[str]:
        """The nodes a ztunnel pod runs on (the ztunnel DaemonSet's nodes), sorted."""
        return sorted({str((p.get("spec") or {}).get("nodeName")) for p in self.ztunnel_pods()
                       if (p.get("spec") or {}).get("nodeName")})  # fmt: skip

    def resolve(self, target: Target, port: int = ZTUNNEL_ADMIN) -> tuple[str, str]:
        """The pod that serves ``target``: (namespace, name). ``node/N`` is its ztunnel, except on the node
        agent's monitoring (15014) and admin (15015, loopback) ports, which the node agent pod serves (host
        network: the port-forward dials the pod's 127.0.0.1, the node's own loopback)."""
        if target.kind == ISTIOD:
            return pick_istiod_pod(self.pods())
        if target.kind == "node":
            if port in (AGENT_MONITORING, AGENT_ADMIN):
                agents = [p for p in labelled(self.pods(), NODE_AGENT_LABEL)
                          if (p.get("spec") or {}).get("nodeName") == target.node]  # fmt: skip
                if agents:
                    return _ref(agents[0], ISTIO_SYSTEM)
            return pick_ztunnel_pod(self.pods(), target.node)
        if target.kind == "waypoint":
            return pick_waypoint_pod(self.pods(target.namespace), target.namespace, target.name)
        return target.namespace, target.name

    # --- GET through the port-forward ----------------------------------------------------------------------

    def get(self, target: Target, port: int, path: str, *, timeout: float | None = None) -> Answer:
        """``GET path`` on ``port`` of the pod serving ``target``; any status is returned, failures raise."""
        namespace, pod = self.resolve(target, port)
        return self.get_pod(namespace, pod, port, path, timeout=timeout, label=str(target))

    def get_pod(self, namespace: str, pod: str, port: int, path: str, *, timeout: float | None = None,
                label: str = "") -> Answer:  # fmt: skip
        where = f"{label or f'pod/{namespace}/{pod}'} :{port}{path} (pod {namespace}/{pod}, through the API server's port-forward)"
        wait = self.timeout if timeout is None else timeout
        status, body = self._run(self._forward_get(namespace, pod, port, path, where), where, wait)
        return Answer(status, body)

    # --- logs ----------------------------------------------------------------------------------------------

    def log(self, source: LogSource, *, since_seconds: int | None = None, tail_lines: int | None = None,
            previous: bool = False) -> str:  # fmt: skip
        """The container log's text (``pods/log``; ``previous``: the run before its last restart). The API
        server's refusal (no such pod or container, no previous run) is the ``ReachError``, its message kept."""
        path = f"/api/v1/namespaces/{source.namespace}/pods/{source.pod}/log"
        query = log_query(source.container, since_seconds, tail_lines, previous=previous)
        body = self._run(self._call("GET", path, query),
                         f"read the log of pod {source.namespace}/{source.pod}")  # fmt: skip
        return body.decode("utf-8", "replace")

    def follow_logs(self, sources: Sequence[LogSource], *, since_seconds: int | None = None,
                    tail_lines: int | None = None, until: Callable[[], bool] | None = None) -> LogFollow:  # fmt: skip
        """Follow each log (``follow=true``): the returned ``LogFollow`` yields (source, line) as the API
        server sends them. Returns once every stream is open (or failed; at most ``timeout``), so a line
        written after this returns is seen even with ``tail_lines=0``. Ends when the caller closes it,
        every stream has ended or ``until()`` is true (checked every ``FOLLOW_POLL_S``); a stream that fails
        raises its ``ReachError`` from ``next``, after the lines received before it."""
        import aiohttp

        lines: queue.Queue[tuple[LogSource, str] | ReachError | None] = queue.Queue()
        loop = asyncio.new_event_loop()
        opened = threading.Semaphore(0)

        async def one(api: Any, source: LogSource) -> None:
            path = f"/api/v1/namespaces/{source.namespace}/pods/{source.pod}/log"
            what = f"follow the log of pod {source.namespace}/{source.pod}"
            try:
                try:
                    response = await self._open(api, path, log_query(source.container, since_seconds, tail_lines,
                                                                      follow=True), what)  # fmt: skip
                finally:
                    opened.release()
                async with response:
                    async for raw in response.content:
                        lines.put((source, raw.decode("utf-8", "replace").rstrip("\r\n")))
            except ReachError as e:
                lines.put(e)
            except (aiohttp.ClientError, OSError) as e:
                lines.put(ReachError(f"cannot {what} through {self.where}: {e or type(e).__name__}"))

        async def main() -> None:
            from kubernetes_asyncio.client import ApiClient

            try:
                async with ApiClient(self.configuration) as api:
                    await asyncio.gather(*(one(api, s) for s in sources))
            finally:
                lines.put(None)

        task = loop.create_task(main())

        def run() -> None:
            with contextlib.suppress(BaseException):  # cancelled when the caller stops iterating
                loop.run_until_complete(task)

        thread = threading.Thread(target=run, name="kube-logs", daemon=True)
        thread.start()
        follow = LogFollow(lines, loop, task, thread, until, self.timeout)
        deadline = time.monotonic() + self.timeout
        for _ in sources:
            if not opened.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break  # a stream still connecting: its lines (or error) come through the iterator
        return follow

    # --- exec ----------------------------------------------------------------------------------------------

    def exec(self, namespace: str, pod: str, argv: Sequence[str], *, container: str | None = None,
             stdin: BinaryIO | None = None, stdout: BinaryIO, stderr: BinaryIO,
             defaulted: Callable[[str, list[str]], None] | None = None) -> int:  # fmt: skip
        """Run ``argv`` in the pod's container through ``pods/exec`` (module docstring); stdout and stderr
        written (and flushed) to the files as they arrive, ``stdin`` (None: none) streamed until its end.
        Returns the command's exit code. Without ``container``, the pod is read and kubectl's default
        taken; ``defaulted(chosen, containers)`` is told when the pod has several. A missing pod, an
        unknown container, a completed pod (as kubectl refuses it) and the API server's refusals are the
        ``ReachError``."""
        if not argv:
            raise ReachError("exec needs a command (after --)")
        what = f"read pod {namespace}/{pod}"
        found = json.loads(self._run(self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}"), what))
        phase = (found.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):  # as kubectl refuses it
            raise ReachError(f"cannot exec into a container in a completed pod; current phase is {phase}")
        spec = found.get("spec") or {}
        apps = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, Mapping)]
        inits = [str(c.get("name")) for c in spec.get("initContainers") or [] if isinstance(c, Mapping)]
        if container is None:
            container = default_container(found)
            if container is None:
                raise ReachError(f"pod {namespace}/{pod} has no container to exec in")
            if len(apps) > 1 and defaulted is not None:
                defaulted(container, apps)
        elif container not in apps + inits:
            raise ReachError(f"container {container} is not valid for pod {pod}")
        query = [*(("command", a) for a in argv), ("container", container),
                 ("stdin", "true" if stdin is not None else "false"), ("stdout", "true"), ("stderr", "true"),
                 ("tty", "false")]  # fmt: skip
        where = f"exec in pod {namespace}/{pod} (container {container})"
        return asyncio.run(self._exec(f"/api/v1/namespaces/{namespace}/pods/{pod}/exec", query, stdin, stdout,
                                      stderr, where))  # fmt: skip

    async def _exec(self, path: str, query: list[tuple[str, str]], stdin: BinaryIO | None, stdout: BinaryIO,
                    stderr: BinaryIO, where: str) -> int:  # fmt: skip
        import aiohttp

        from meshcore.store.errors import StoreUnavailable

        try:
            async with _exec_ws_client()(self.configuration) as ws_api:
                async with asyncio.timeout(self.timeout):
                    ws = await (await ws_api.call_api(path, "GET", query_params=query, auth_settings=["BearerToken"],
                                                      _preload_content=False))  # fmt: skip
                try:
                    return await exec_session(ws, stdin, stdout, stderr, where)
                finally:
                    await ws.close()
        except TimeoutError:
            raise ReachError(f"no answer within {self.timeout:g}s: {where} through {self.where}") from None
        except aiohttp.WSServerHandshakeError as e:
            hint = "; the user needs get and create on pods/exec" if e.status in (401, 403) else ""
            raise ReachError(f"the API server refused {where} (HTTP {e.status}){hint}") from None
        except StoreUnavailable as e:
            raise ReachError(str(e)) from None
        except (aiohttp.ClientError, OSError) as e:
            raise ReachError(f"cannot {where} through {self.where}: {e or type(e).__name__}") from None

    # --- plumbing ------------------------------------------------------------------------------------------

    def _run(self, work: Any, what: str, timeout: float | None = None) -> Any:
        """Run one coroutine to completion within the timeout; a ``ReachError`` on any failure."""
        import aiohttp

        from meshcore.store.errors import StoreUnavailable

        wait = self.timeout if timeout is None else timeout

        async def bounded() -> Any:
            async with asyncio.timeout(wait):
                return await work

        try:
            return asyncio.run(bounded())
        except TimeoutError:
            raise ReachError(f"no answer within {wait:g}s: {what} through {self.where}") from None
        except StoreUnavailable as e:
            raise ReachError(str(e)) from None
        except (aiohttp.ClientError, OSError) as e:
            raise ReachError(f"cannot {what} through {self.where}: {e or type(e).__name__}") from None

    async def _call(self, method: str, path: str, query: list[tuple[str, str]] | None = None) -> bytes:
        from kubernetes_asyncio.client import ApiClient

        async with ApiClient(self.configuration) as api:
            async with await self._open(api, path, query or [], f"{method} {path}") as response:
                return bytes(await response.read())

    async def _open(self, api: Any, path: str, query: list[tuple[str, str]], what: str) -> Any:
        """The response of a GET, or a ``ReachError`` carrying the API's Status message (and, for 401/403,
        the RBAC the user needs)."""
        response = await api.call_api(path, "GET", query_params=query, header_params={"Accept": "*/*"},
                                      auth_settings=["BearerToken"], _preload_content=False)  # fmt: skip
        if response.status == 200:
            return response
        async with response:
            data = await response.read()
        try:
            message = str(json.loads(data).get("message") or "")
        except (ValueError, AttributeError):
            message = data[:200].decode(errors="replace")
        hint = _rbac_hint(path) if response.status in (401, 403) else ""
        raise ReachError(f"cannot {what}: the API server answered HTTP {response.status}"
                         + (f": {message}" if message else "") + hint)

    async def _forward_get(self, namespace: str, pod: str, port: int, path: str, where: str) -> tuple[int, bytes]:
        import aiohttp
        from kubernetes_asyncio.stream import WsApiClient

        try:
            async with WsApiClient(self.configuration) as ws_api:
                connecting = await ws_api.call_api(
                    f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward", "GET",
                    query_params=[("ports", str(port))],
                    header_params={"sec-websocket-protocol": PORTFORWARD_PROTOCOL},
                    auth_settings=["BearerToken"], _preload_content=False,
                )
                async with connecting as ws:
                    return await http_over_portforward(ws, port, path, where)
        except aiohttp.WSServerHandshakeError as e:
            hint = _rbac_hint("portforward") if e.status in (401, 403) else ""
            gone = f": no pod {namespace}/{pod}" if e.status == 404 else ""
            raise ReachError(f"the API server refused the port-forward for {where} (HTTP {e.status}){gone}{hint}") from None


def _exec_ws_client() -> type:
    """kubernetes_asyncio's WebSocket client, offering exec's subprotocols so the chosen one is known
    (its own sends one fixed protocol header); imported when an exec runs."""
    from urllib.parse import urlencode

    from kubernetes_asyncio.stream import WsApiClient
    from kubernetes_asyncio.stream.ws_client import get_websocket_url

    class ExecWsClient(WsApiClient):  # type: ignore[misc]
        async def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                          **_kwargs: Any) -> Any:  # fmt: skip
            target = get_websocket_url(url + ("?" + urlencode(query_params) if query_params else ""))
            return self.rest_client.pool_manager.ws_connect(target, headers=headers or {}, protocols=EXEC_PROTOCOLS)

    return ExecWsClient


async def exec_session(ws: Any, stdin: BinaryIO | None, stdout: BinaryIO, stderr: BinaryIO, where: str) -> int:
    """One exec's channels on ``ws`` (an aiohttp WebSocket with ``ws.protocol`` negotiated): stdin streamed
    from a reader thread (its end: v5's close signal), stdout/stderr written as they come; the exit code
    from the error channel's Status. The socket closing without a Status is a ``ReachError``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    sender: asyncio.Task[None] | None = None
    if stdin is not None:
        read = getattr(stdin, "read1", stdin.read)

        def reader() -> None:  # a daemon thread: a stdin that never ends must not hold the process
            while True:
                try:
                    data = read(EXEC_STDIN_CHUNK)
                except (OSError, ValueError):
                    data = b""
                loop.call_soon_threadsafe(chunks.put_nowait, bytes(data or b""))
                if not data:
                    return

        threading.Thread(target=reader, name="exec-stdin", daemon=True).start()

        async def send() -> None:
            while data := await chunks.get():
                await ws.send_bytes(bytes([EXEC_STDIN]) + data)
            if ws.protocol == EXEC_PROTOCOLS[0]:
                await ws.send_bytes(bytes([EXEC_CLOSE, EXEC_STDIN]))

        sender = asyncio.create_task(send())
    status = bytearray()
    try:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            if channel in (EXEC_STDOUT, EXEC_STDERR) and data:
                out = stdout if channel == EXEC_STDOUT else stderr
                out.write(data)
                out.flush()
            elif channel == EXEC_ERROR:
                status.extend(data)
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
    if not status:
        raise ReachError(f"{where}: the connection closed before the command's exit status")
    return exec_exit_code(bytes(status), where)


def exec_exit_code(status: bytes, where: str) -> int:
    """The exit code a pods/exec error channel's v1 Status says (module docstring); a failure other than a
    non-zero exit is the ``ReachError`` with the API server's message."""
    try:
        doc = json.loads(status)
    except ValueError:
        raise ReachError(f"{where}: {status.decode(errors='replace').strip()}") from None
    if not isinstance(doc, dict):
        raise ReachError(f"{where}: unexpected error channel {doc!r}")
    if doc.get("status") == "Success":
        return 0
    if doc.get("reason") == "NonZeroExitCode":
        causes = (doc.get("details") or {}).get("causes") or []
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                with contextlib.suppress(TypeError, ValueError):
                    return int(cause.get("message"))
    raise ReachError(f"{where}: {doc.get('message') or doc.get('reason') or 'failed'}")


def _rbac_hint(path: str) -> str:
    if path.endswith("/log"):
        return "; the user needs get on pods/log"
    if path.endswith("portforward"):
        return "; the user needs get and create on pods/portforward"
    return "; the user needs get and list on pods"


async def http_over_portforward(ws: Any, port: int, path: str, where: str) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on port-forward channel 0 of ``ws`` (an aiohttp WebSocket); the status and body.
    Each channel starts with the port number (2 bytes); text on channel 1 is the API server's or kubelet's
    error. A body over ``MAX_BODY`` is refused."""
    import aiohttp
    import h11

    http = h11.Connection(h11.CLIENT)
    request = http.send(h11.Request(method="GET", target=path, headers=[
        ("Host", f"localhost:{port}"), ("Accept", "application/json, text/plain, */*"), ("Connection", "close")]))
    await ws.send_bytes(b"\x00" + (request or b"") + (http.send(h11.EndOfMessage()) or b""))
    prefix_left = {0: 2, 1: 2}
    error = bytearray()
    status, body = 0, bytearray()

    def take(data: bytes) -> bool:
        """Feed the HTTP parser; True once the response is complete."""
        nonlocal status
        http.receive_data(data)
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body.extend(event.data)
                if len(body) > MAX_BODY:
                    raise ReachError(f"{where}: answer larger than {MAX_BODY >> 20} MiB")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return True

    try:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            skip = min(prefix_left.get(channel, 0), len(data))
            prefix_left[channel] = prefix_left.get(channel, 0) - skip
            data = data[skip:]
            if channel == 1:
                error.extend(data)
            elif channel == 0 and data and take(data):
                return status, bytes(body)
        if error:
            raise ReachError(f"port-forward for {where}: {error.decode(errors='replace').strip()}")
        with contextlib.suppress(h11.RemoteProtocolError):
            if status and take(b""):
                return status, bytes(body)
    except h11.RemoteProtocolError as e:
        raise ReachError(f"{where} did not answer HTTP ({e})") from None
    raise ReachError(f"the port-forward for {where} closed before a whole answer")


# --- the commands' source: the local cluster or a Kubernetes cluster ----------------------------------------


class CliStateLike(Protocol):
    """What ``reach_for`` needs of ``ambientctl.commands.common.CliState`` (the global options)."""

    kubeconfig: str | None
    kube_context: str | None

    @property
    def on_kubernetes(self) -> bool: ...

    def state_dir(self) -> Path: ...

    def store(self) -> Store: ...


class MeshView:
    """Where a troubleshooting command reads the mesh's proxies, chosen once by ``reach_for``: the local
    cluster (``Reach``, its log files, the store's waypoint pods) or a Kubernetes cluster (``KubeReach``:
    the pod list, port-forward and pods/log). The commands call these methods and never branch on which.
    Failures are ``ReachError`` (a local cluster that is not up included)."""

    def __init__(self, reach: Reach | KubeReach, waypoints: Callable[[], list[tuple[str, str]]]) -> None:
        self.reach = reach
        self._waypoints = waypoints

    @property
    def kube(self) -> KubeReach | None:
        return self.reach if isinstance(self.reach, KubeReach) else None

    @property
    def cluster(self) -> Cluster | None:
        return self.reach.cluster if isinstance(self.reach, Reach) else None

    def refresh(self) -> None:
        """Re-read the pods at the next call (a long-running command between two rounds)."""
        if isinstance(self.reach, KubeReach):
            self.reach.refresh()

    def nodes(self) -> list[str]:
        """The nodes a ztunnel serves: the local cluster's nodes, or those a ztunnel pod runs on."""
        if isinstance(self.reach, KubeReach):
            return self.reach.nodes()
        try:
            return [n.name for n in self.reach.cluster.layout().nodes]
        except ClusterError as e:
            raise ReachError(str(e)) from None

    def waypoints(self) -> list[tuple[str, str]]:
        """(namespace, name) of every waypoint pod, sorted."""
        return self._waypoints()

    def proxy_targets(self) -> list[tuple[str, Target]]:
        """Every ztunnel (``ztunnel-<node>``) and waypoint pod (``waypoint <ns>/<name>``) with its target,
        labelled as their logs are."""
        targets = [(f"ztunnel-{n}", Target("node", node=n)) for n in self.nodes()]
        return targets + [(f"waypoint {ns}/{name}", Target("pod", namespace=ns, name=name))
                          for ns, name in self.waypoints()]  # fmt: skip

    def _access_sources(self, kube: KubeReach) -> list[LogSource]:
        """Every ztunnel's and waypoint's container log; a ``ReachError`` when no ztunnel pod runs."""
        try:
            ztunnels = component_sources("ztunnel", kube.pods(), [])
        except ValueError as e:
            raise ReachError(f"{e}: is the mesh installed (`ambientctl install`)?") from None
        return ztunnels + component_sources("waypoint", [], kube.waypoint_pods())

    def _access_files(self, cluster: Cluster) -> list[Any]:
        nodes = self.nodes()
        log_dir = cluster.procs.log_dir
        return component_files(log_dir, "ztunnel", nodes, []) + component_files(log_dir, "waypoint", nodes,
                                                                                 self.waypoints())  # fmt: skip

    def access_records(self, keep: Callable[[LogRecord], bool], *, tail_bytes: int | None = None,
                       since_seconds: int | None = None) -> tuple[list[LogRecord], list[str]]:  # fmt: skip
        """The kept lines of every ztunnel's and waypoint's log, merged by time, and the logs that could
        not be read (with why). ``tail_bytes``: only the end of each local file (on Kubernetes the last
        ``KUBE_ACCESS_TAIL_LINES`` lines); ``since_seconds``: on Kubernetes asked of the API server (``keep``
        filters by time anyway)."""
        if isinstance(self.reach, KubeReach):
            kube = self.reach
            texts: list[tuple[LogSource, str]] = []
            problems: list[str] = []
            for source in self._access_sources(kube):
                try:
                    texts.append((source, kube.log(source, since_seconds=since_seconds, tail_lines=(
                        KUBE_ACCESS_TAIL_LINES if tail_bytes is not None else None))))
                except ReachError as e:
                    problems.append(f"{source.label}: {e}")
            return merge_logs(texts, keep), problems
        files = self._access_files(self.reach.cluster)
        if tail_bytes is None:
            return read(files, keep), []
        out: list[LogRecord] = []
        for f in files:
            try:
                with f.path.open("rb") as fh:
                    size = fh.seek(0, 2)
                    fh.seek(max(0, size - tail_bytes))
                    lines = fh.read().decode("utf-8", "replace").split("\n")
            except FileNotFoundError:
                continue
            for text in lines[1:] if size > tail_bytes else lines:  # the first line of a tail may be cut
                if text and keep(record := parse_line(text, f.source)):
                    out.append(record)
        return out, []

    def follow_access(self, keep: Callable[[LogRecord], bool], *,
                      until: Callable[[], bool] = lambda: False) -> Iterator[LogRecord]:  # fmt: skip
        """Kept lines of every ztunnel's and waypoint's log written from now on, until ``until()``; the
        logs are chosen when this is called (local files: their current ends)."""
        if isinstance(self.reach, KubeReach):
            return _Kept(self.reach.follow_logs(self._access_sources(self.reach), tail_lines=0, until=until), keep)
        return follow(self._access_files(self.reach.cluster), keep, until=until)


class _Kept:
    """The kept records of followed lines; ``close()`` closes the streams."""

    def __init__(self, lines: LogFollow, keep: Callable[[LogRecord], bool]) -> None:
        self._lines, self._keep = lines, keep

    def __iter__(self) -> _Kept:
        return self

    def __next__(self) -> LogRecord:
        for source, line in self._lines:
            if self._keep(record := parse_line(line, source.label)):
                return record
        raise StopIteration

    def close(self) -> None:
        self._lines.close()


def reach_for(state: CliStateLike) -> MeshView:
    """The one choice of source for every troubleshooting command: with ``--kubeconfig``/``--context`` that
    cluster's API server (``KubeReach``; waypoint pods by their gateway label), else the local cluster
    (``Reach``; waypoint pods from the store)."""
    if state.on_kubernetes:
        kube = KubeReach.connect(state.kubeconfig, state.kube_context)
        return MeshView(kube, lambda: sorted(_ref(p, "") for p in kube.waypoint_pods()))

    def local_waypoints() -> list[tuple[str, str]]:
        return sorted((p.namespace, p.name) for p in state.store().list("Pod") if GATEWAY_NAME_LABEL in p.labels)

    return MeshView(Reach(Cluster(state.state_dir())), local_waypoints)
