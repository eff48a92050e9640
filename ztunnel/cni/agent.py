"""The node agent (istio-cni's node agent): captures this node's enrolled pods and hands them to ztunnel.

Composition root and run loop. Inputs: the store (Pods with ``spec.nodeName`` == this node, Namespace
labels; list-then-watch), plugin events (``events``: a pod's netns path, and "capture it now" for CNI
ADD), ztunnel connections (``zds_server``). Each pass, the pure ``enroll.plan`` turns the view into
actions; each pod's actions run in their own task (never two for one pod; at most ``max_parallel`` pods
in the kernel step at once), so one pod's failure (netns gone, nft error, a nack) is logged, counted and
retried with backoff while every other pod carries on. Capture order (istio-cni's): open the netns,
apply redirection (all-or-nothing, ``ztunnel.redirect``), send ZDS AddWorkload and wait for the ack,
annotate the pod.
If ztunnel is absent or refuses, the rules stay and the pod is annotated ``pending``: its traffic fails
closed (nothing listens on 15001/15006 yet) and the next snapshot or retry hands it over. Release order:
remove the rules, then DelWorkload, then the annotation. Netns fds are opened per operation, checked
against the recorded identity, and closed: the agent never keeps a pod's namespace alive.
Stopping the agent leaves every pod as it is (rules in place; ztunnel keeps serving and gets a fresh
snapshot when the agent is back). On Kubernetes ``main`` also installs ``ambient-cni`` into the host's CNI
directories at start and removes it at SIGTERM only when its DaemonSet is being deleted (``cni.install``),
and with ``STORE=kubernetes`` reads the API server (``open_store``): every Namespace, and only the Pods of
its own node (a ``spec.nodeName`` field selector), annotations patched as ``ztunnel-node-agent``.
CNI ADD: the agent decides whether the pod is enrolled (``enroll.pod_facts``, the rule istiod_lite uses)
from its view; when the view lacks the pod or has another uid than the ADD's (a pod created or recreated a
moment ago, not yet delivered by the watch) and the store can read live (``LiveReader``: the Kubernetes
store), the Pod and its Namespace are read from the API server (GETs, not the cache) and the pod stands in
the view until the watch delivers it (``LIVE_VIEW_TTL`` at most). From a plugin that decided nothing
(``enrollment: agent``), a pod that cannot be read (the API server refuses or is unreachable), is not
found or is another node's fails the ADD with the reason (fail closed); one not enrolled passes.
HTTP: ``/metrics`` and ``/readyz`` on the monitoring address (istio-cni's :15014, may face the network);
``/debug/pods`` (pods' netns paths and rules) only on the admin address, loopback unless the operator sets
``ADMIN_ALLOW_REMOTE=true`` (``ztunnel.cni.config``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from meshcore.aio.httpserver import HttpServer, Request, Response, metrics_handler
from meshcore.aio.netns import NetnsError, NetnsHandle, NetnsId, current_netns_id
from meshcore.enrollment import REDIRECTION_ANNOTATION, REDIRECTION_PENDING
from meshcore.store import Resource, ResourceNotFound, ResourceRef, Store, StoreError
from ztunnel import redirect
from ztunnel.cni import config as cfg
from ztunnel.cni.enroll import (
    Action,
    Annotate,
    Capture,
    Captured,
    Failure,
    HandOver,
    PodFacts,
    Release,
    node_pods,
    plan,
    pod_facts,
    retry_delay,
)
from ztunnel.cni.errors import (
    AnnotateFailed,
    ConfigError,
    PodCaptureError,
    PodNetnsGone,
    PodNetnsUnknown,
    RedirectFailed,
)
from ztunnel.cni.events import EventReply, EventServer, PluginEvent
from ztunnel.cni.podnetns import NetnsEntry, NetnsMap, find_pod_netns
from ztunnel.cni.zds_server import ZdsPod, ZdsServer
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.transport import open_listener

log = structlog.get_logger("ztunnel.cni.agent")

EVENT_WAIT = 25.0  # a CNI ADD waits this long for the capture (the plugin's default timeout is 30 s)
WATCH_RETRY = 1.0
LIVE_READ_TIMEOUT = 5.0  # one live read of a pod or namespace from the API server (within EVENT_WAIT)
# A pod read live stands in the view until the watch delivers it (same uid), at most this long: after
# that the watch is the only source again (a pod deleted before the watch caught up must not linger).
LIVE_VIEW_TTL = 60.0


class Redirector(Protocol):
    """Installs and removes a pod's redirection (the kernel boundary; tests may pass a recorder)."""

    async def apply(self, netns_fd: int) -> None: ...

    async def remove(self, netns_fd: int) -> None: ...


@runtime_checkable
class LiveReader(Protocol):
    """A store whose reads are a cache (``KubernetesStore``) and that can read one object from its source
    now; the embedded store has no such method, its ``get`` is already current."""

    def read_live(self, ref: ResourceRef, *, timeout: float | None = None) -> Resource | None: ...


@runtime_checkable
class RedirectionChecker(Protocol):
    """A redirector that can also say how a pod netns differs from what it installs (``/debug/pods``)."""

    async def check(self, netns_fd: int) -> list[redirect.Drift]: ...


class NftRedirector:
    """``ztunnel.redirect`` inside the pod netns. ``nft``: None for libnftables (the ``nft`` binary where
    it is missing), or the path of the nft binary to run.

    Calls run on this redirector's own threads (at most ``workers``), not on the shared
    ``asyncio.to_thread`` pool: slow store writes queued there (an fsync each) must not delay a capture,
    and each call starts the pod's netns worker thread from there, never from the event loop."""

    def __init__(self, options: redirect.RedirectOptions, nft: str | None = None, workers: int = 4) -> None:
        self._ruleset = redirect.render(options)
        self._nft = redirect.nft_runner(nft)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="redirect")
        log.info("redirection backend", nft=repr(self._nft), workers=workers)

    async def apply(self, netns_fd: int) -> None:
        call = functools.partial(redirect.apply, netns_fd, self._ruleset, nft=self._nft)
        await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def remove(self, netns_fd: int) -> None:
        call = functools.partial(redirect.remove, netns_fd, nft=self._nft)
        await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def check(self, netns_fd: int) -> list[redirect.Drift]:
        """Rule by rule, how the pod netns differs from the rules this redirector installs (changes nothing)."""
        call = functools.partial(redirect.check, netns_fd, self._ruleset, nft=self._nft)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Stop the threads once idle; queued calls are dropped (their pods are retried by the next
        agent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class AgentMetrics:
    """The agent's metrics, on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pods_captured = Gauge(
            "ambient_cni_pods_captured", "Pods on this node with redirection installed", registry=registry
        )
        self.pods_pending = Gauge(
            "ambient_cni_pods_pending", "Captured pods that ztunnel has not acknowledged", registry=registry
        )
        self.failures = Counter(
            "ambient_cni_pod_failures",
            "Failed capture or release attempts, by reason",
            ["reason"],
            registry=registry,
        )
        self.ztunnel_ready = Gauge(
            "ambient_cni_ztunnel_connected",
            "1 when a ztunnel is connected and past its snapshot",
            registry=registry,
        )
        self.events = Counter(
            "ambient_cni_plugin_events",
            "Plugin events handled, by command and result",
            ["cmd", "result"],
            registry=registry,
        )
        self.bad_events = Counter(
            "ambient_cni_bad_plugin_events", "Plugin events that could not be parsed", registry=registry
        )
        self.live_reads = Counter(
            "ambient_cni_live_pod_reads",
            "CNI ADDs for a pod not (yet) in the agent's view, read live from the API server, by result",
            ["result"],
            registry=registry,
        )


@dataclass(slots=True)
class _Capture:
    """A pod whose rules this agent applied: where, and whether ztunnel took it."""

    pod: PodFacts
    path: str
    netns_id: str
    handed_over: bool = False


def _open_checked(pod: str, path: str, netns_id: str) -> int:
    """An fd of the namespace at ``path``, only if it is still the recorded one (caller closes it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise PodNetnsGone(pod, path, e.strerror or str(e)) from None
    if str(NetnsId.of_fd(fd)) != netns_id:
        os.close(fd)
        raise PodNetnsGone(pod, path, "the path now names another namespace (a new sandbox)")
    return fd


def _probe_netns(path: str) -> str:
    """The identity of the network namespace at ``path`` (``NetnsError`` if it is not one)."""
    with NetnsHandle.open(path) as handle:
        return str(handle.id)


class NodeAgent:
    """Keeps this node's enrolled pods captured and handed to ztunnel. ``run()`` until cancelled."""

    def __init__(
        self,
        config: cfg.NodeAgentConfig,
        store: Store,
        *,
        registry: CollectorRegistry | None = None,
        redirector: Redirector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self._redirector = redirector or NftRedirector(config.redirect, config.nft, config.max_parallel)
        self._clock = clock
        self.netns_map = NetnsMap(config.netns_map_path)
        self._pods: dict[ResourceRef, Resource] = {}
        # Pods read live for a CNI ADD that the watch had not delivered (or had as an earlier pod of the
        # name): ref -> (pod, until when it stands in the view); dropped once the watch has that uid.
        self._live_pods: dict[ResourceRef, tuple[Resource, float]] = {}
        self._ns_labels: dict[str, dict[str, str]] = {}
        self._captured: dict[str, _Capture] = {}
        self._failures: dict[str, Failure] = {}
        # uid -> (number of the attempt that failed, message), for CNI waiters: attempts are numbered as
        # they start, so a waiter only counts failures of attempts that began after its event.
        self._errors: dict[str, tuple[int, str]] = {}
        self._attempts = 0  # attempts started so far (see _errors)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._dirty = asyncio.Event()
        self._progress: set[asyncio.Future[None]] = set()
        # Pods whose sandbox a CNI DEL just removed: no /proc scan for them until the next CNI ADD (the
        # dying sandbox's processes must not be captured again).
        self._cni_deleted: set[tuple[str, str]] = set()
        self._listener: socket.socket | None = None
        self._parallel = asyncio.Semaphore(config.max_parallel)
        self._own_netns: NetnsId | None = None
        self._zds: ZdsServer | None = None
        self._events: EventServer | None = None
        self._http: HttpServer | None = None  # monitoring: /metrics, /readyz
        self._admin: HttpServer | None = None  # admin (loopback by default): /debug/pods
        self._tg: asyncio.TaskGroup | None = None
        self.started = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, serve until cancelled, then close sockets (pods stay as they are)."""
        try:
            revision = await self._start()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                assert self._zds is not None
                tg.create_task(self._zds.serve())
                tg.create_task(self._watch(revision))
                tg.create_task(self._reconcile_loop())
                self.started.set()
                log.info(
                    "node agent started",
                    node=self.config.node_name,
                    zds=str(self.config.zds_socket),
                    events=str(self.config.event_socket),
                    pods=len(self._pods),
                )
        finally:
            await self._close()

    async def _start(self) -> int:
        for problem in self.netns_map.load():
            log.warning("pod netns map", problem=problem)
        self._own_netns = current_netns_id()
        revision = await self._relist()
        zds_path = self.config.zds_socket
        zds_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        listener = open_listener(str(zds_path))
        self._zds = ZdsServer(
            listener,
            snapshot=self._snapshot_pods,
            on_snapshot=self._snapshot_done,
            ack_timeout=self.config.zds_ack_timeout,
            on_ready_change=self._ztunnel_ready_changed,
        )
        self._listener = listener
        self._events = EventServer(
            self.config.event_socket,
            self._on_plugin_event,
            handler_timeout=EVENT_WAIT,
            on_bad_event=lambda _problem: self.metrics.bad_events.inc(),
        )
        await self._events.start()
        if self.config.monitoring_addr is not None:
            self._http = HttpServer(
                {
                    "/metrics": metrics_handler(self.registry),
                    "/readyz": self._readyz,
                    "/debug/pods": self._debug_moved,
                },
                name="node-agent",
            )
            await self._http.start(self.config.monitoring_addr.host, self.config.monitoring_addr.port)
        if self.config.admin_addr is not None:
            self._admin = HttpServer({"/debug/pods": self._debug_pods}, name="node-agent-admin")
            await self._admin.start(self.config.admin_addr.host, self.config.admin_addr.port)
        return revision

    async def _close(self) -> None:
        if self._events is not None:
            await self._events.close()
        if self._http is not None:
            await self._http.close()
        if self._admin is not None:
            await self._admin.close()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.zds_socket)
        if isinstance(self._redirector, NftRedirector):
            self._redirector.close()  # a call still running finishes; its pod stays all-or-nothing

    @property
    def ztunnel_ready(self) -> bool:
        return self._zds is not None and self._zds.ready

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, checked whenever pods' state changes (bound it with
        ``asyncio.timeout``)."""
        loop = asyncio.get_running_loop()
        while not predicate():
            changed: asyncio.Future[None] = loop.create_future()
            self._progress.add(changed)
            try:
                await changed
            finally:
                self._progress.discard(changed)

    def _notify_progress(self) -> None:
        for waiter in self._progress:
            if not waiter.done():
                waiter.set_result(None)

    def captured(self) -> dict[str, tuple[str, bool]]:
        """uid -> (netns path, handed over), for status pages and tests."""
        return {uid: (c.path, c.handed_over) for uid, c in self._captured.items()}

    def failures(self) -> dict[str, str]:
        """uid -> the last error of pods that are backing off."""
        return {uid: self._errors[uid][1] for uid in self._failures if uid in self._errors}

    # -- the view of the store -------------------------------------------------------------------------

    async def _relist(self) -> int:
        """Replace the view with a fresh list (read on a thread, applied on the loop)."""
        revision, objects = await asyncio.to_thread(self.store.snapshot)
        self._pods = {}
        self._ns_labels = {}
        for obj in objects:
            self._observe(obj, deleted=False)
        self._dirty.set()
        return revision

    def _observe(self, obj: Resource, *, deleted: bool) -> None:
        if obj.kind == "Namespace":
            if deleted:
                self._ns_labels.pop(obj.name, None)
            else:
                self._ns_labels[obj.name] = dict(obj.labels)
        elif obj.kind == "Pod":
            live = self._live_pods.get(obj.ref)
            if live is not None and live[0].uid == obj.uid:
                del self._live_pods[obj.ref]  # the watch has caught up with the live read
            current = self._pods.get(obj.ref)
            if current is not None and current.resource_version > obj.resource_version:
                return  # an older copy (our own write's result arriving late)
            if deleted or obj.spec.get("nodeName") != self.config.node_name:
                self._pods.pop(obj.ref, None)
            else:
                self._pods[obj.ref] = obj

    def _observe_own_write(self, obj: Resource) -> None:
        current = self._pods.get(obj.ref)
        if current is not None and current.resource_version < obj.resource_version:
            self._pods[obj.ref] = obj

    async def _watch(self, revision: int) -> None:
        while True:
            try:
                async for event in self.store.watch(revision):
                    revision = event.revision
                    self._observe(event.resource, deleted=event.type == "DELETED")
                    self._dirty.set()
                return  # the store was closed
            except StoreError as e:
                log.warning("store watch failed; re-listing", error=str(e))
                await asyncio.sleep(WATCH_RETRY)
                with contextlib.suppress(StoreError):
                    revision = await self._relist()

    def _facts(self) -> dict[str, PodFacts]:
        pods = self._pods
        if self._live_pods:
            now = self._clock()
            for ref in [r for r, (_, until) in self._live_pods.items() if now >= until]:
                del self._live_pods[ref]
            pods = {**pods, **{ref: pod for ref, (pod, _) in self._live_pods.items()}}
        return node_pods(pods.values(), self._ns_labels, self.config.node_name)

    # -- reconciling -----------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            self._dirty.clear()
            self._reconcile_once()
            now = self._clock()
            waiting = [f.retry_at for uid, f in self._failures.items() if uid not in self._inflight]
            timeout = max(0.0, min(waiting) - now) + 0.001 if waiting else None
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that races
            # with the event, and the loop would then schedule work on a TaskGroup shutting down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()

    def _reconcile_once(self) -> None:
        facts = self._facts()
        for uid in [u for u in self._failures if u not in facts and u not in self._captured]:
            del self._failures[uid]  # the pod is gone and nothing of it is left to release
        for uid in [u for u in self._errors if u not in facts and u not in self._captured]:
            del self._errors[uid]
        netns_ids = {key: entry.netns_id for key, entry in self.netns_map.items()}
        captured = {uid: Captured(c.netns_id, c.handed_over) for uid, c in self._captured.items()}
        actions = plan(
            facts,
            captured,
            self._failures,
            netns_ids,
            now=self._clock(),
            ztunnel_ready=self.ztunnel_ready,
        )
        per_pod: dict[str, list[Action]] = {}
        for action in actions:
            uid = action.uid if isinstance(action, Release) else action.pod.uid
            per_pod.setdefault(uid, []).append(action)
        assert self._tg is not None
        for uid, todo in per_pod.items():
            if uid not in self._inflight:
                self._inflight[uid] = self._tg.create_task(self._run_actions(uid, todo))

    async def _run_actions(self, uid: str, actions: Sequence[Action]) -> None:
        self._attempts += 1
        attempt = self._attempts
        try:
            for action in actions:
                await self._do(action)
            self._failures.pop(uid, None)
        except PodCaptureError as e:
            self._fail(uid, e.reason, str(e), attempt)
        except Exception as e:  # a bug for one pod must not stop the agent or the other pods
            log.exception("pod action failed unexpectedly", uid=uid)
            self._fail(uid, "internal", f"internal error: {e}", attempt)
        finally:
            self._inflight.pop(uid, None)
            self._update_gauges()
            self._dirty.set()
            self._notify_progress()

    def _fail(self, uid: str, reason: str, message: str, attempt: int | None = None) -> None:
        """Record a failure of ``uid``'s attempt number ``attempt`` (None: news that is not an attempt of
        ours, such as ztunnel refusing the pod in its snapshot: counted as a fresh attempt)."""
        if attempt is None:
            self._attempts += 1
            attempt = self._attempts
        previous = self._failures.get(uid)
        attempts = previous.attempts + 1 if previous else 1
        delay = retry_delay(attempts, self.config.retry_initial, self.config.retry_max)
        self._failures[uid] = Failure(attempts, self._clock() + delay, reason)
        self._errors[uid] = (attempt, message)
        self.metrics.failures.labels(reason).inc()
        log.warning(
            "pod not captured as wanted; will retry",
            uid=uid,
            reason=reason,
            error=message,
            attempt=attempts,
            retry_in=round(delay, 3),
        )

    def _update_gauges(self) -> None:
        self.metrics.pods_captured.set(len(self._captured))
        self.metrics.pods_pending.set(sum(1 for c in self._captured.values() if not c.handed_over))

    async def _do(self, action: Action) -> None:
        if isinstance(action, Capture):
            await self._capture(action.pod)
        elif isinstance(action, HandOver):
            await self._hand_over(action.pod.uid)
        elif isinstance(action, Annotate):
            await self._annotate(action.pod, action.value)
        else:
            await self._release(action)

    # -- actions ---------------------------------------------------------------------------------------

    async def _find_netns(self, pod: PodFacts) -> NetnsEntry:
        entry = self.netns_map.get(*pod.key)
        if entry is not None:
            return entry
        if pod.key in self._cni_deleted:
            raise PodNetnsUnknown(str(pod))
        found = await asyncio.to_thread(
            find_pod_netns, pod.namespace, pod.name, proc_root=self.config.proc_root, exclude=self._own_netns,
            uid=pod.uid,
        )
        if found is None:
            raise PodNetnsUnknown(str(pod))
        self.netns_map.record(pod.namespace, pod.name, found)
        log.info("pod netns found by process scan", pod=str(pod), netns=found.path)
        return found

    async def _capture(self, pod: PodFacts) -> None:
        entry = await self._find_netns(pod)
        try:
            fd = _open_checked(str(pod), entry.path, entry.netns_id)
        except PodNetnsGone:
            self.netns_map.forget(pod.namespace, pod.name)
            raise
        try:
            async with self._parallel:  # only the kernel work is bounded; ZDS and the store are not
                await self._redirector.apply(fd)
        except redirect.NetnsGone as e:
            raise PodNetnsGone(str(pod), entry.path, str(e)) from None
        except redirect.RedirectError as e:
            raise RedirectFailed(str(pod), str(e)) from None
        finally:
            os.close(fd)
        self._captured[pod.uid] = _Capture(pod, entry.path, entry.netns_id)
        self._update_gauges()
        log.info("pod redirected", pod=str(pod), uid=pod.uid, netns=entry.path)
        await self._hand_over(pod.uid)

    async def _hand_over(self, uid: str) -> None:
        record = self._captured[uid]
        pod = record.pod
        assert self._zds is not None
        try:
            fd = _open_checked(str(pod), record.path, record.netns_id)
            try:
                await self._zds.add(uid, WorkloadInfo(pod.name, pod.namespace, pod.service_account), fd)
            finally:
                os.close(fd)
        except PodCaptureError:
            with contextlib.suppress(AnnotateFailed):
                await self._annotate(pod, REDIRECTION_PENDING)
            raise
        record.handed_over = True
        self._update_gauges()
        log.info("pod handed to ztunnel", pod=str(pod), uid=uid)
        # A CNI ADD waiting for this pod answers now, not after the annotation (a write that returns once
        # the store's watch shows it: a lagging watch must not hold the pod's sandbox).
        self._notify_progress()
        await self._annotate(pod, "enabled")

    async def _annotate(self, pod: PodFacts, value: str | None) -> None:
        ref = ResourceRef("Pod", pod.namespace, pod.name)
        add = {REDIRECTION_ANNOTATION: value} if value is not None else {}
        remove = [] if value is not None else [REDIRECTION_ANNOTATION]
        try:
            result = await asyncio.to_thread(self.store.set_annotations, ref, add, remove)
        except ResourceNotFound:
            return  # deleted meanwhile; its Release follows from the watch
        except StoreError as e:
            raise AnnotateFailed(str(pod), str(e)) from None
        if result.resource.uid == pod.uid:
            self._observe_own_write(result.resource)

    async def _release(self, action: Release) -> None:
        record = self._captured.get(action.uid)
        label = str(action.pod) if action.pod is not None else (str(record.pod) if record else action.uid)
        if record is not None:
            target: tuple[str, str] | None = (record.path, record.netns_id)
        elif action.pod is not None and (entry := self.netns_map.get(*action.pod.key)) is not None:
            target = (entry.path, entry.netns_id)  # rules an earlier agent run may have left
        else:
            target = None
        if target is not None:
            try:
                fd = _open_checked(label, *target)
            except PodNetnsGone:
                fd = -1  # the sandbox is gone, and its rules with it
            if fd >= 0:
                try:
                    async with self._parallel:
                        await self._redirector.remove(fd)
                except redirect.NetnsGone:
                    pass
                except redirect.RedirectError as e:
                    raise RedirectFailed(label, f"could not remove redirection: {e}") from None
                finally:
                    os.close(fd)
        if record is not None:
            assert self._zds is not None
            for problem in await self._zds.delete(action.uid):
                log.warning("ztunnel did not acknowledge a pod's removal", pod=label, problem=problem)
            del self._captured[action.uid]
            self._update_gauges()
            log.info("pod released", pod=label, uid=action.uid)
        if action.unannotate and action.pod is not None and action.pod.annotation is not None:
            await self._annotate(action.pod, None)

    # -- ZDS callbacks ---------------------------------------------------------------------------------

    def _snapshot_pods(self) -> list[ZdsPod]:
        pods = []
        for uid, record in self._captured.items():
            try:
                fd = _open_checked(str(record.pod), record.path, record.netns_id)
            except PodNetnsGone as e:
                log.warning(
                    "captured pod's netns is gone; left out of the snapshot",
                    pod=str(record.pod),
                    error=str(e),
                )
                continue
            info = WorkloadInfo(record.pod.name, record.pod.namespace, record.pod.service_account)
            pods.append(ZdsPod(uid, info, fd))
        return pods

    def _snapshot_done(self, results: dict[str, str | None]) -> None:
        for uid, error in results.items():
            record = self._captured.get(uid)
            if record is None:
                continue
            if error is None:
                record.handed_over = True
                self._failures.pop(uid, None)
            else:
                record.handed_over = False
                self._fail(
                    uid, "ztunnel_nack", f"pod {record.pod}: ztunnel refused it in its snapshot: {error}"
                )
        self._update_gauges()
        self._dirty.set()
        self._notify_progress()

    def _ztunnel_ready_changed(self, ready: bool) -> None:
        self.metrics.ztunnel_ready.set(1 if ready else 0)
        self._dirty.set()

    # -- plugin events ---------------------------------------------------------------------------------

    async def _on_plugin_event(self, event: PluginEvent) -> EventReply:
        reply = await (self._on_add(event) if event.cmd == "add" else self._on_del(event))
        self.metrics.events.labels(event.cmd, "ok" if reply.ok else "error").inc()
        return reply

    async def _on_add(self, event: PluginEvent) -> EventReply:
        """Record the pod's netns; decide (the shared rule) whether it is enrolled, from the view, or read
        live when the view lacks the pod or has another uid; if enrolled, wait for its capture. With
        ``event.agent_decides`` (the plugin decided nothing) a pod that cannot be read or decided fails
        the ADD; otherwise (the plugin decided from the embedded store) such a pod is left to the watch."""
        deadline = asyncio.get_running_loop().time() + EVENT_WAIT
        pod_label = f"{event.pod_namespace}/{event.pod_name}"
        try:
            netns_id = _probe_netns(event.netns)
        except NetnsError as e:
            return EventReply(ok=False, error=f"pod {pod_label}: {e}")
        self.netns_map.record(
            event.pod_namespace, event.pod_name, NetnsEntry(event.netns, netns_id, event.container_id)
        )
        # An attempt started before this line may have looked for the netns before it was recorded: its
        # failure says nothing about this event, so only attempts started from now on count. Taken before
        # the store read below yields: an attempt started meanwhile (it sees the netns) must count.
        seen = self._attempts
        self._cni_deleted.discard((event.pod_namespace, event.pod_name))
        try:
            pod, namespace = await asyncio.to_thread(self._read_pod, event.pod_namespace, event.pod_name)
        except StoreError as e:
            return EventReply(ok=False, error=f"pod {pod_label}: cannot read the store: {e}")
        live = isinstance(self.store, LiveReader) and (
            pod is None or (bool(event.pod_uid) and pod.uid != event.pod_uid)
        )
        if live:
            try:
                pod, namespace = await asyncio.to_thread(self._read_pod_live, event.pod_namespace, event.pod_name)
            except StoreError as e:
                self.metrics.live_reads.labels("error").inc()
                log.warning("pod not in the view and not readable from the API server", pod=pod_label,
                            error=str(e))
                return EventReply(ok=False, error=f"pod {pod_label} is not in the node agent's view yet and "
                                                  f"reading it from the Kubernetes API server failed: {e}")
            self.metrics.live_reads.labels("found" if pod is not None else "not_found").inc()
        if namespace is not None:
            self._observe(namespace, deleted=False)
        if pod is not None and live:
            in_view = self._pods.get(pod.ref)
            if pod.spec.get("nodeName") == self.config.node_name and (in_view is None or in_view.uid != pod.uid):
                self._live_pods[pod.ref] = (pod, self._clock() + LIVE_VIEW_TTL)
        elif pod is not None:
            self._observe(pod, deleted=False)
        self._dirty.set()
        where = "on the Kubernetes API server" if live else "in the store"
        if pod is None:
            if event.agent_decides:
                return EventReply(ok=False, error=f"pod {pod_label}: not found {where}")
            return EventReply(ok=True, captured=False)  # not (yet) ours; the watch brings it when it is
        if pod.spec.get("nodeName") != self.config.node_name:
            if event.agent_decides:
                return EventReply(ok=False, error=(
                    f"pod {pod_label} is scheduled on node {pod.spec.get('nodeName')!r} {where}, not on this "
                    f"agent's node {self.config.node_name!r} (check the node agent's NODE_NAME)"))
            return EventReply(ok=True, captured=False)
        facts = pod_facts(pod, namespace.labels if namespace is not None else {})
        if not facts.enrolled:
            if live:
                log.info("pod read live from the API server: not enrolled", pod=pod_label, uid=pod.uid)
            return EventReply(ok=True, captured=False, enrolled=False)
        if live:
            log.info("pod read live from the API server: enrolled, capturing", pod=pod_label, uid=pod.uid)
        uid = pod.uid
        self._failures.pop(uid, None)  # an explicit ADD is a retry now

        def settled() -> bool:
            record = self._captured.get(uid)
            done = record is not None and record.netns_id == netns_id and record.handed_over
            return done or self._errors.get(uid, (0, ""))[0] > seen

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.wait_until(settled)
        record = self._captured.get(uid)
        if record is not None and record.netns_id == netns_id and record.handed_over:
            return EventReply(ok=True, captured=True, enrolled=True)
        error = (
            self._errors[uid][1]
            if uid in self._errors
            else f"pod {pod_label}: not captured within {EVENT_WAIT:g}s"
        )
        return EventReply(ok=False, error=error, captured=record is not None, enrolled=True)

    async def _on_del(self, event: PluginEvent) -> EventReply:
        entry = self.netns_map.forget(event.pod_namespace, event.pod_name, event.container_id)
        if entry is None:
            return EventReply(ok=True)
        self._cni_deleted.add((event.pod_namespace, event.pod_name))
        uids = [u for u, c in self._captured.items() if c.netns_id == entry.netns_id]
        self._dirty.set()
        if uids:
            # Release before the runtime deletes the netns: ztunnel closes its sockets in the pod first.
            # A release that fails is retried later; DEL itself never fails, so stop waiting then.
            seen = self._attempts

            def settled() -> bool:
                return all(u not in self._captured or self._errors.get(u, (0, ""))[0] > seen for u in uids)

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EVENT_WAIT):
                    await self.wait_until(settled)
        return EventReply(ok=True)

    def _read_pod(self, namespace: str, name: str) -> tuple[Resource | None, Resource | None]:
        return (
            self.store.get(ResourceRef("Pod", namespace, name)),
            self.store.get(ResourceRef("Namespace", "", namespace)),
        )

    def _read_pod_live(self, namespace: str, name: str) -> tuple[Resource | None, Resource | None]:
        """The Pod and its Namespace as the API server has them now (two GETs, past the store's cache)."""
        assert isinstance(self.store, LiveReader)
        pod = self.store.read_live(ResourceRef("Pod", namespace, name), timeout=LIVE_READ_TIMEOUT)
        if pod is None:
            return None, None
        return pod, self.store.read_live(ResourceRef("Namespace", "", namespace), timeout=LIVE_READ_TIMEOUT)

    # -- HTTP --------------------------------------------------------------------------------------------

    async def _readyz(self, _: Request) -> Response:
        return Response.text("ready\n") if self.started.is_set() else Response.text("starting\n", 503)

    async def _debug_moved(self, _: Request) -> Response:
        """The monitoring address may face the network: pods' netns paths and rules are not served there."""
        admin = self.config.admin_addr
        if admin is None:
            text = f"/debug/pods is served only on the node agent's admin address, which is off ({cfg.ADMIN_ADDR}='')"
        else:
            text = (f"/debug/pods is served on the node agent's admin address ({cfg.ADMIN_ADDR}: {admin}), not on "
                    f"the monitoring one; from a host: ambientctl fetch node/<node> :{admin.port}/debug/pods")
        return Response.text(text + "\n", 404)

    async def _debug_pods(self, _: Request) -> Response:
        """Every captured pod: its netns, whether ztunnel took it and, read from its netns now, whether the
        rules this agent installed are all there (``drift``: each difference, rule by rule)."""
        captured = sorted(self._captured.items())
        verdicts = await asyncio.gather(*(self._verify(c) for _, c in captured))
        body: dict[str, Any] = {
            "node": self.config.node_name,
            "ztunnel_connected": self.ztunnel_ready,
            "captured": {
                uid: {"pod": str(c.pod), "netns": c.path, "handed_over": c.handed_over, **verdict}
                for (uid, c), verdict in zip(captured, verdicts, strict=True)
            },
            "failing": {uid: self._errors[uid][1] for uid in sorted(self._failures) if uid in self._errors},
        }
        return Response.json(body)

    async def _verify(self, record: _Capture) -> dict[str, Any]:
        """``redirected`` and ``drift`` of one captured pod, or ``check_error`` when its netns cannot be
        read (the pod's sandbox gone, nft failing); ``{}`` when the redirector cannot check."""
        checker = self._redirector
        if not isinstance(checker, RedirectionChecker):
            return {}
        try:
            fd = _open_checked(str(record.pod), record.path, record.netns_id)
        except PodNetnsGone as e:
            return {"redirected": False, "check_error": str(e)}
        try:
            drift = await checker.check(fd)
        except redirect.RedirectError as e:
            return {"redirected": False, "check_error": str(e)}
        finally:
            os.close(fd)
        return {"redirected": not drift, "drift": [d.to_json() for d in drift]}


# -- command line -------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ztunnel-node-agent", description="ambient mesh node agent: captures this node's enrolled pods"
    )
    flags = {
        cfg.NODE_NAME: "node whose pods this agent captures",
        cfg.STATE_DIR: "state directory of the embedded store",
        cfg.INPOD_UDS: f"ZDS socket ztunnel connects to (default {cfg.DEFAULT_INPOD_UDS})",
        cfg.CNI_EVENT_ADDRESS: f"socket the CNI plugin notifies (default {cfg.DEFAULT_EVENT_SOCKET})",
        cfg.NETNS_MAP_PATH: f"where pod netns paths are kept (default {cfg.DEFAULT_NETNS_MAP})",
        cfg.MONITORING_ADDR: f"HOST:PORT of /metrics and /readyz (default :{cfg.DEFAULT_MONITORING_PORT}; '' off)",
        cfg.ADMIN_ADDR: f"HOST:PORT of /debug/pods (default {cfg.DEFAULT_ADMIN_ADDR}; loopback only unless "
        f"{cfg.ADMIN_ALLOW_REMOTE}=true; '' off)",
        cfg.ADMIN_ALLOW_REMOTE: "allow a non-loopback ADMIN_ADDR (true/false)",
        cfg.ZDS_ACK_TIMEOUT: "how long ztunnel gets to ack one ZDS message (default 5s)",
        cfg.AMBIENT_IPV6: "also redirect IPv6 (true/false)",
        cfg.AMBIENT_DNS_CAPTURE: "redirect DNS to ztunnel's 15053 (true/false)",
        cfg.NFT_PATH: "run this nft binary instead of libnftables (default: the library, else nft)",
        cfg.LOG_LEVEL: "debug, info, warning or error",
        cfg.LOG_FORMAT: "console or json",
        cfg.STORE: "where pods and namespaces are read: sqlite (the embedded store, default) or kubernetes",
        cfg.KUBECONFIG: "with STORE=kubernetes outside a pod: the kubeconfig file",
        cfg.KUBE_CONTEXT: "with STORE=kubernetes: the kubeconfig context",
    }
    for name, text in flags.items():
        p.add_argument("--" + name.lower().replace("_", "-"), dest=name, help=f"{text} (env {name})")
    return p


async def _serve(agent: NodeAgent) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(agent.run())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def open_store(config: cfg.NodeAgentConfig) -> Store:
    """The store ``config.store`` names: the embedded one, or the API server, read as the node agent's
    RBAC allows (Namespaces, and only this node's Pods: ``spec.nodeName`` field selector; annotations
    patched under the field manager ``ztunnel-node-agent``). The Kubernetes client is imported only then."""
    if config.store == "kubernetes":
        from meshcore.store import kubernetes as kube

        return kube.KubernetesStore.connect(
            kubeconfig=config.kubeconfig,
            context=config.kube_context,
            kinds=kube.NODE_AGENT_KINDS,
            field_selectors=kube.node_agent_field_selectors(config.node_name),
            field_manager=kube.NODE_AGENT_FIELD_MANAGER,
        )
    from meshcore.store import open_store as open_embedded

    return open_embedded(str(config.state_dir) if config.state_dir else None)


def main(argv: list[str] | None = None) -> None:
    """``ztunnel-node-agent``: run the node agent until SIGTERM/SIGINT; a bad setting exits 2."""
    from meshcore.logs import configure_logging

    args = vars(_parser().parse_args(argv))
    try:
        config = cfg.parse_config(flags={k: v for k, v in args.items() if v is not None})
    except ConfigError as e:
        print(f"ztunnel-node-agent: {e}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    try:
        store = open_store(config)
    except StoreError as e:
        print(f"ztunnel-node-agent: {e}", file=sys.stderr)
        sys.exit(2)
    from ztunnel.cni import install  # the host's CNI directories (Kubernetes only; None on the local cluster)

    try:
        host = install.host_install_from_env(config.event_socket)
        if host is not None:
            install.install_plugin(host)
    except install.InstallError as e:
        print(f"ztunnel-node-agent: {e}", file=sys.stderr)
        store.close()
        sys.exit(2)
    try:
        status = asyncio.run(_serve(NodeAgent(config, store)))
        if host is not None:  # SIGTERM: remove the plugin only when the DaemonSet is being deleted
            asyncio.run(install.clean_up_in_cluster(host))
        sys.exit(status)
    except OSError as e:  # a socket path we cannot bind, a port in use
        print(f"ztunnel-node-agent: cannot start: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        store.close()


if __name__ == "__main__":
    main()
