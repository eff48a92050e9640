"""The local cluster's kubelet and service controllers: mirror pods and services between the store and
the network namespaces, as Kubernetes' kubelet, VIP allocator, endpoints controller and kube-proxy do.

Pods: a pod is bound to its node in the store (``spec.nodeName``: the scheduler's write) before the
cluster creates it, so the node's CNI plugin and node agent know it as theirs when its sandbox comes
up; once it runs, its status is written (``status.podIP``, phase ``Running``, ``Ready``), which is what
istiod_lite watches. ``run_pod`` does this for one pod; ``sync_pods`` runs exactly the store's Pod
manifests (apply or delete one, then sync). A pod that fails (a CNI plugin refused it, say) is marked
``Pending`` with the reason in its Ready condition and retried with a doubling delay
(``next_retry`` says when), while the other pods sync. Services: the store is the source of truth; ``sync_services`` allocates missing VIPs (written back as ``spec.clusterIP``),
selects endpoints by label among the cluster's pods and has the cluster program DNAT and hosts files.
A service that cannot be realised (a clusterIP outside the service subnet, say) is rejected alone,
logged and reported; the others still sync. The pure pieces (``pod_resource``, ``select_endpoints``,
``pod_spec_from_resource``) are table-tested.

Credentials, as kubelet's projected service-account token volume: before a pod's process starts,
``PodCredentials`` writes ``<cluster dir>/pods/<ns>/<name>/istio-token`` (0600, a 1 h ES256 token with
audience ``istio-ca`` bound to the pod's name, uid, service account and node, signed with the issuer key
in ``<state-dir>/sa-issuer/``) and ``root-cert.pem`` (the mesh root istiod_lite handed out with the
node's credential). While the pod runs, ``refresh_credentials`` re-issues the token once 80% of its
lifetime has passed (kubelet's rule), so a long-running waypoint keeps a valid one; the file is
replaced atomically. A pod whose credential cannot be written fails alone (Pending, retried).

Containers: every container and init container of a manifest is its own process (``ContainerSpec``:
``command`` + ``args``, ``env`` values and ``valueFrom.fieldRef``, other sources refused with the
reason; ``workingDir``; ``securityContext`` runAsUser/runAsGroup, the container's over the pod's, and
runAsNonRoot refused with the kubelet's message; an image without command runs the stand-in). The
downward-API facts POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME, SERVICE_ACCOUNT are always set.
``check_containers`` keeps one ``ContainerTrack`` per container (``PodTracks``): init containers run one
at a time, each started once the one before completed, then the app containers, each restarted on its
own per ``restartPolicy`` and back-off, each probed by its own readinessProbe; the pod is Ready only
when all of its containers are.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog

from meshcore import satoken
from meshcore.store import Resource, ResourceRef, Store, StoreError, build_resource, spec_as
from meshcore.store.schema import PodSpec as K8sPodSpec
from meshcore.store.schema import ServiceSpec as K8sServiceSpec

from . import podstatus
from .cluster import ROOT_CERT_FILE, TOKEN_FILE, Cluster
from .errors import ClusterError, InvalidClusterSpec, PodNotFound
from .events import DEPLOYMENT_CONTROLLER, EventBook, InvolvedObject
from .events import flush as flush_events
from .events import seed as seed_events
from .podstatus import ContainerTrack, Termination
from .probes import Probe, parse_probe, run_probe
from .spec import DEFAULT_TERMINATION_GRACE_S, ContainerSpec, PodPort, PodSpec, Protocol, ServicePort
from .state import PodRecord

log = structlog.get_logger("ambientctl.cluster.kubelet")

CONTAINER_NAME = "main"
LOCAL_IMAGE = "local"  # pods of the local cluster run host commands, not images
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
POD_START_WORKERS = 8  # pods one sync pass starts at once
# Pods one sync pass removes at once (``Cluster.remove_pod`` holds the lock only to mark and drop a pod; a
# removal is mostly waiting: 6 measured as fast as 8 and faster than 2-4, docs/benchmarks.md "Local cluster").
POD_REMOVE_WORKERS = 6
TOKEN_TTL = timedelta(hours=1)
TOKEN_REFRESH_AT = 0.8  # of the token's lifetime, as kubelet refreshes projected tokens


@dataclass(frozen=True, slots=True)
class _Backoff:
    pod: PodSpec  # the spec that failed: a changed spec is tried at once
    attempts: int
    retry_at: float
    error: str


class PodTracks(msgspec.Struct, frozen=True, kw_only=True):
    """A pod's containers' histories: init containers in order, then the app containers."""

    init: tuple[ContainerTrack, ...] = ()
    app: tuple[ContainerTrack, ...] = ()


def _due(track: ContainerTrack, now: float) -> bool:
    """Not running and to be started now: never started yet, or its restart back-off is over."""
    return (
        track.running_since is None
        and not track.finished
        and (track.restart_at is None or now >= track.restart_at)
    )


def _completed(track: ContainerTrack, wall: str) -> ContainerTrack:
    """A container taken as having run to completion (exit 0): an init container without a process."""
    last = Termination(exit_code=0, started_at=track.started_at or wall, finished_at=wall)
    return msgspec.structs.replace(track, running_since=None, last=last, restart_at=None, finished=True)


class SyncReport(msgspec.Struct, frozen=True, kw_only=True):
    # "namespace/name" -> what the object got: a service's VIP, a pod's IP.
    synced: dict[str, str]
    # "namespace/name" -> why that object was not realised (the others were).
    rejected: dict[str, str]
    removed: tuple[str, ...]


class Kubelet:
    """Keeps the store and the local cluster in step for pods and services."""

    def __init__(
        self,
        cluster: Cluster,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        credentials: PodCredentials | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventBook | None = None,
    ) -> None:
        self.cluster = cluster
        self.store = store
        # What kubectl users read under ``Events:``; written in one batch per sync/check pass.
        self.events = events or EventBook(wall_clock=wall_clock, adopts=lambda c: c != DEPLOYMENT_CONTROLLER)
        self._clock = clock
        self._wall_clock = wall_clock
        self._backoff: dict[str, _Backoff] = {}
        # "namespace/name" -> the pod's containers' histories (podstatus), and when its sandbox started.
        self._tracks: dict[str, PodTracks] = {}
        self._start_times: dict[str, str] = {}
        # "namespace/name" -> container name -> its readinessProbe, and when (kubelet clock) it is next due.
        self._probes: dict[str, dict[str, Probe]] = {}
        self._next_probe: dict[str, dict[str, float]] = {}
        # "namespace/name" -> the stored Pod last seen (what its Events name, also once it is deleted).
        self._involved: dict[str, Resource] = {}
        self.credentials = credentials or PodCredentials(cluster)

    def run_pod(self, pod: PodSpec) -> Resource:
        """Bind the pod in the store, create it in the cluster, register its status; returns the stored
        Pod. If the cluster cannot run it, the Pod is taken out of the store again and the error raised."""
        ref = ResourceRef("Pod", pod.namespace, pod.name)
        existed = self.store.get(ref) is not None
        (pending,) = self.store.apply([pending_pod_resource(pod)])
        try:
            self.credentials.ensure(pending.resource, pod.node)
            self.cluster.add_pod(pod)
        except BaseException:
            if not existed:
                self.store.delete([ref])
            raise
        record = self.cluster.find_pod(pod.name, pod.namespace)
        assert record is not None, "add_pod returned but the pod is not recorded"
        (result,) = self.store.apply([pod_resource(record)])
        self.sync_services()
        return result.resource

    def next_retry(self) -> float | None:
        """When (on this kubelet's clock) the earliest failed pod is due for another try."""
        return min((b.retry_at for b in self._backoff.values()), default=None)

    def delete_pod(self, name: str, namespace: str) -> None:
        """Remove the pod from the cluster (if there) and the store; endpoints follow."""
        record = self.cluster.find_pod(name, namespace)
        try:
            self.cluster.remove_pod(name, namespace)
        except PodNotFound:
            log.info("pod not in the cluster; removing it from the store only", pod=f"{namespace}/{name}")
        stored = self.store.get(ResourceRef("Pod", namespace, name))
        if record is not None and stored is not None:
            self._killing(stored, record)
        self.store.delete([ResourceRef("Pod", namespace, name)])
        self.sync_services()
        self.flush_events()

    def sync_pods(self) -> SyncReport:
        """Make the cluster run exactly the store's Pods; pods without ``spec.nodeName`` are scheduled on
        the node with the fewest pods. Then services follow. A pod that cannot run is rejected alone.

        One pass: the pods to start are decided and bound (``spec.nodeName``, one store write) here; then
        up to ``POD_START_WORKERS`` of them start at once on a thread pool (``Cluster.add_pod`` holds the
        cluster lock only to reserve and commit), while the pods gone from the store are removed, up to
        ``POD_REMOVE_WORKERS`` at once, on another pool (``Cluster.remove_pod`` holds it only to mark and
        drop); then their statuses are written here, in key order. The store is only
        used from the calling thread."""
        seed_events(self.store, self.events)  # before recording: a restarted kubelet counts on its Events
        layout = self.cluster.layout()
        nodes = [n.name for n in layout.nodes]
        running = {f"{p.spec.namespace}/{p.spec.name}": p for p in self.cluster.pods()}
        stored = {f"{r.namespace}/{r.name}": r for r in self.store.list("Pod")}
        synced: dict[str, str] = {}
        rejected: dict[str, str] = {}
        now = self._clock()
        for key in [k for k in self._backoff if k not in stored]:
            del self._backoff[key]
        load = Counter(p.spec.node for p in running.values())  # as ``schedule``, plus this pass's pods
        wanted: dict[str, tuple[PodSpec, Resource, PodRecord | None]] = {}
        for key, resource in sorted(stored.items()):
            current = running.get(key)
            default_node = current.spec.node if current else min(nodes, key=lambda n: load[n])
            try:
                pod = pod_spec_from_resource(resource, default_node)
            except (ClusterError, StoreError, ValueError) as e:
                rejected[key] = str(e)
                log.warning("pod not run", pod=key, error=str(e))
                self._write_status(resource, config_error_status(resource, str(e)))
                self.events.record(InvolvedObject.of(resource), "Warning", "Failed", f"Error: {e}")
                continue
            waiting = self._backoff.get(key)
            if waiting is not None and waiting.pod == pod and waiting.retry_at > now:
                rejected[key] = f"{waiting.error} (retrying in {waiting.retry_at - now:.1f} s)"
                continue
            if current is None:
                load[pod.node] += 1
            wanted[key] = (pod, resource, current)
        bound = self._bind_all({k: (r, pod.node) for k, (pod, r, _) in wanted.items()})
        for key, (pod, resource, _) in wanted.items():
            written = bound[key]
            if resource.spec.get("nodeName") != pod.node and isinstance(written, Resource):
                self.events.record(
                    InvolvedObject.of(written),
                    "Normal",
                    "Scheduled",
                    f"Successfully assigned {pod.namespace}/{pod.name} to {pod.node}",
                    component="default-scheduler",
                )
        gone = [(k, r) for k, r in sorted(running.items()) if k not in stored]

        def start(key: str) -> PodRecord | None:
            pod, _, current = wanted[key]
            resource = bound[key]
            if isinstance(resource, Exception):
                raise resource
            if current is not None and msgspec.structs.replace(current.spec, labels=pod.labels) != pod:
                # A changed pod restarts (pods are immutable); a relabelled one does not (add_pod).
                self.cluster.remove_pod(pod.name, pod.namespace)
                current = None
            self.credentials.ensure(resource, pod.node)  # before the process starts, as a volume is
            self.cluster.add_pod(pod)
            return current

        def remove(record: PodRecord) -> None:
            self.cluster.remove_pod(record.spec.name, record.spec.namespace)

        with (
            ThreadPoolExecutor(max_workers=POD_START_WORKERS, thread_name_prefix="pod-start") as pool,
            ThreadPoolExecutor(max_workers=POD_REMOVE_WORKERS, thread_name_prefix="pod-remove") as remover,
        ):
            # Removals beside the starts, up to POD_REMOVE_WORKERS at once (measured: see the constant).
            removals = [(key, remover.submit(remove, record)) for key, record in gone]
            starts = {key: pool.submit(start, key) for key in wanted}
            outcomes: dict[str, PodRecord | None | Exception] = {}
            for key, future in starts.items():
                try:
                    outcomes[key] = future.result()
                except (ClusterError, StoreError, ValueError) as e:
                    outcomes[key] = e
            removed = []
            for key, future in removals:
                future.result()
                removed.append(key)
        for key, record in gone:
            self._killing(self._involved.get(key), record)
        running = {f"{p.spec.namespace}/{p.spec.name}": p for p in self.cluster.pods()}
        for key, outcome in outcomes.items():
            pod, resource, _ = wanted[key]
            written = bound[key]
            resource = written if isinstance(written, Resource) else resource
            if isinstance(outcome, Exception):
                rejected[key] = str(outcome)
                self._failed(key, pod, resource, str(outcome), now)
                self.events.record(
                    InvolvedObject.of(resource),
                    "Warning",
                    "FailedCreatePodSandBox",
                    f"Failed to create pod sandbox: {outcome}",
                )
                continue
            self._backoff.pop(key, None)
            record = running.get(key)
            assert record is not None, "add_pod returned but the pod is not recorded"
            synced[key] = record.ip
            if outcome is None and wanted[key][2] is not None:  # its spec changed: a new sandbox
                self._killing(resource, wanted[key][2])
                self.events.record(
                    InvolvedObject.of(resource),
                    "Normal",
                    "SandboxChanged",
                    "Pod sandbox changed, it will be killed and re-created.",
                )
            if outcome is None or key not in self._tracks:
                # Events only for a sandbox just made, not for a running pod this kubelet meets anew.
                self._started(key, resource, fresh=outcome is None)
            self._register(resource, record)
        for key in [k for k in self._tracks if k not in stored or k not in running]:
            self._tracks.pop(key, None)
            self._start_times.pop(key, None)
            self._probes.pop(key, None)
            self._next_probe.pop(key, None)
            self._involved.pop(key, None)
        self.sync_services()
        self.flush_events()
        return SyncReport(synced=synced, rejected=rejected, removed=tuple(removed))

    def _bind_all(self, pods: Mapping[str, tuple[Resource, str]]) -> dict[str, Resource | Exception]:
        """``_bind`` for many pods in one store write (each alone if that write is refused): key -> the
        stored Pod, or the error that pod's write met."""
        changed = {k: r for k, (r, node) in pods.items() if r.spec.get("nodeName") != node}
        out: dict[str, Resource | Exception] = {k: r for k, (r, _) in pods.items() if k not in changed}
        if not changed:
            return out
        try:
            results = self.store.apply(
                [
                    msgspec.structs.replace(r, spec={**r.spec, "nodeName": pods[k][1]})
                    for k, r in changed.items()
                ]
            )
            out.update(zip(changed, (result.resource for result in results), strict=True))
        except StoreError:
            for key, (resource, node) in changed.items():
                try:
                    out[key] = self._bind(resource, node)
                except StoreError as e:
                    out[key] = e
        return out

    def refresh_credentials(self) -> list[str]:
        """Re-issue the tokens of running pods that are due (see ``PodCredentials``); returns their keys.
        A pod whose token cannot be written is logged and tried again on the next call."""
        stored = {f"{r.namespace}/{r.name}": r for r in self.store.list("Pod")}
        refreshed = []
        for record in self.cluster.pods():
            key = f"{record.spec.namespace}/{record.spec.name}"
            resource = stored.get(key)
            if resource is None:
                continue
            try:
                if self.credentials.ensure(resource, record.spec.node):
                    refreshed.append(key)
            except (ClusterError, StoreError) as e:
                log.warning("pod token not refreshed", pod=key, error=str(e))
        return refreshed

    def _bind(self, stored: Resource, node: str) -> Resource:
        """Write the scheduler's decision (``spec.nodeName``) before the pod is created on that node."""
        if stored.spec.get("nodeName") == node:
            return stored
        bound = msgspec.structs.replace(stored, spec={**stored.spec, "nodeName": node})
        (result,) = self.store.apply([bound])
        return result.resource

    def _failed(self, key: str, pod: PodSpec, stored: Resource, error: str, now: float) -> None:
        previous = self._backoff.get(key)
        attempts = previous.attempts + 1 if previous is not None and previous.pod == pod else 1
        delay = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(attempts - 1, 16))
        self._backoff[key] = _Backoff(pod=pod, attempts=attempts, retry_at=now + delay, error=error)
        log.warning("pod not run", pod=key, error=error, attempt=attempts, retry_in=delay)
        status = pending_status(error)
        if stored.status != status:
            try:
                self.store.apply([msgspec.structs.replace(stored, status=status)])
            except StoreError as e:
                log.warning("pod status not written", pod=key, error=str(e))

    def _write_status(self, stored: Resource, status: dict[str, Any]) -> None:
        """Write ``status`` on a stored Pod when it differs (a failed write is logged: retried next pass)."""
        if stored.status == status:
            return
        try:
            self.store.set_status(stored.ref, status)
        except StoreError as e:
            log.warning("pod status not written", pod=f"{stored.namespace}/{stored.name}", error=str(e))

    def _register(self, stored: Resource, record: PodRecord) -> None:
        """Write nodeName and the observed status into a stored manifest, keeping the rest as applied."""
        key = f"{record.spec.namespace}/{record.spec.name}"
        status = self._status(key, stored, record)
        spec = {**stored.spec, "nodeName": record.spec.node}
        if spec != stored.spec or status != stored.status:
            self.store.apply([msgspec.structs.replace(stored, spec=spec, status=status)])

    def _wall(self) -> str:
        return self._wall_clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _started(
        self, key: str, resource: Resource, record: PodRecord | None = None, *, fresh: bool = True
    ) -> None:
        """A pod's sandbox was just (re)created, or this kubelet meets a running pod for the first time:
        a fresh history for each container, from the processes the pod's record holds (containers
        before the one running completed; none running yet: the first init container, else every app
        container, is what ``add_pod`` started)."""
        if record is None:
            record = self.cluster.find_pod(resource.name, resource.namespace)
        pod = record.spec if record is not None else pod_spec_from_resource(resource, "")
        procs = record.container_processes() if record is not None else {}
        wall = self._wall()
        now = self._clock()
        probes = {}
        for i, raw in enumerate(_containers(resource, "containers")):
            probe = parse_probe(raw, f"pod {key}", i)  # validated when the pod spec was read
            if probe is not None:
                probes[str(raw.get("name") or CONTAINER_NAME)] = probe
        self._probes[key] = probes
        self._next_probe[key] = {}
        apps = pod.app_containers()
        inits = pod.init_containers
        if not any(c.name in procs for c in (*inits, *apps)):
            procs = {c.name: None for c in pod.first_containers()}  # type: ignore[misc]
        apps_started = not inits or any(c.name in procs for c in apps)
        current = max((i for i, c in enumerate(inits) if c.name in procs), default=-1)
        init_tracks = []
        for i, c in enumerate(inits):
            track = ContainerTrack(name=c.name)
            if apps_started or i < current:
                track = _completed(track, wall)
            elif i == current and c.command:  # one without command is due: it completes on the next check
                track = podstatus.started(track, now, wall)
            init_tracks.append(track)
        app_tracks = [
            podstatus.started(ContainerTrack(name=c.name), now, wall, probed=c.name in probes)
            if apps_started
            else ContainerTrack(name=c.name)
            for c in apps
        ]
        self._tracks[key] = PodTracks(init=tuple(init_tracks), app=tuple(app_tracks))
        self._start_times[key] = wall
        self._involved[key] = resource
        for tracks, is_init in ((init_tracks, True), (app_tracks, False)) if fresh else ():
            for track in tracks:
                if track.running_since is not None:
                    self._container_started(key, track.name, init=is_init)

    def _status(self, key: str, stored: Resource, record: PodRecord) -> dict[str, Any]:
        tracks = self._tracks.get(key)
        if tracks is None:
            return pod_resource(record).status
        return podstatus.pod_status(
            tracks.app,
            _images(stored, "containers"),
            pod_ip=record.ip,
            host_ip=record.node_ip,
            start_time=self._start_times.get(key, ""),
            init_tracks=tracks.init,
            init_images=_images(stored, "initContainers"),
        )

    def is_ready(self, key: str) -> bool:
        """Whether the pod is initialised and every container is ready (pods this kubelet has no history
        of count as ready)."""
        tracks = self._tracks.get(key)
        return tracks is None or podstatus.pod_ready(tracks.app, tracks.init)

    def check_containers(self) -> list[str]:
        """Observe every pod's processes: record exits, start the next init container once one
        completed and the app containers once all did, restart what the restart policy and back-off
        allow, run readiness probes, write the statuses that changed; returns the keys of pods whose
        status changed. Services follow when a pod's readiness changed (an unready pod gets no
        traffic)."""
        seed_events(self.store, self.events)
        stored = {f"{r.namespace}/{r.name}": r for r in self.store.list("Pod")}
        changed: list[str] = []
        readiness_changed = False
        for record in self.cluster.pods():
            key = f"{record.spec.namespace}/{record.spec.name}"
            resource = stored.get(key)
            before = self._tracks.get(key)
            if resource is None or before is None:
                continue
            policy = str(resource.spec.get("restartPolicy") or "Always")
            self._involved[key] = resource
            record, after = self._step(key, record, before, policy)
            if after == before:
                continue
            self._tracks[key] = after
            readiness_changed |= podstatus.pod_ready(before.app, before.init) != podstatus.pod_ready(
                after.app, after.init
            )
            status = self._status(key, resource, record)
            if status != resource.status:
                try:
                    self.store.set_status(resource.ref, status)
                except StoreError as e:
                    log.warning("pod status not written", pod=key, error=str(e))
                    continue
                changed.append(key)
        if readiness_changed:
            self.sync_services()
        self.flush_events()
        return changed

    def _step(
        self, key: str, record: PodRecord, tracks: PodTracks, policy: str
    ) -> tuple[PodRecord, PodTracks]:
        """One observation of a pod's containers (see ``check_containers``)."""
        now = self._clock()
        procs = record.container_processes()
        init = list(tracks.init)
        app = list(tracks.app)
        for group, is_init in ((init, True), (app, False)):
            for i, track in enumerate(group):
                process = procs.get(track.name)
                if track.running_since is None or process is None or self.cluster.procs.is_running(process):
                    continue
                code = self.cluster.procs.collect_exit(process)
                group[i] = podstatus.exited(track, code, policy, now, self._wall(), init=is_init)
                if group[i].restart_at is not None:
                    self._record(
                        key, "Warning", "BackOff", self._backoff_message(key, track.name), track.name, is_init
                    )
                log.warning(
                    "init container exited" if is_init else "container exited",
                    pod=key,
                    container=track.name,
                    exit_code=code,
                    restart_in=group[i].restart_at and group[i].backoff_s,
                )
        for _ in range(len(init)):
            index = podstatus.current_init(init)
            if index is None or podstatus.init_failed(init) or not _due(init[index], now):
                break
            record, init[index] = self._start(key, record, init[index], policy, init=True)
            if not podstatus.completed(init[index]):
                break
        if podstatus.initialized(init):
            for i, track in enumerate(app):
                if _due(track, now):
                    record, app[i] = self._start(key, record, track, policy, init=False)
        probes = self._probes.get(key, {})
        next_probe = self._next_probe.setdefault(key, {})
        for i, track in enumerate(app):
            probe = probes.get(track.name)
            if probe is None or track.running_since is None:
                continue
            due = next_probe.get(track.name, track.running_since + probe.initial_delay)
            if now >= due:
                ok = run_probe(
                    probe, str(self.cluster.net.netns_path(record.netns)), self._exec_for(record, track.name)
                )
                app[i] = podstatus.probed(track, ok, probe.success_threshold, probe.failure_threshold)
                if not ok:
                    self._record(
                        key,
                        "Warning",
                        "Unhealthy",
                        f"Readiness probe failed: {_probe_text(probe)}",
                        track.name,
                    )
                next_probe[track.name] = self._clock() + probe.period
        return record, PodTracks(init=tuple(init), app=tuple(app))

    def _start(
        self, key: str, record: PodRecord, track: ContainerTrack, policy: str, *, init: bool
    ) -> tuple[PodRecord, ContainerTrack]:
        """Start (or restart) one container; a container without command has no process: an init
        container of that kind completes at once, an app container counts as running."""
        wall = self._wall()
        now = self._clock()
        spec = record.spec.container(track.name)
        if spec is not None and not spec.command:
            return record, (_completed(track, wall) if init else podstatus.started(track, now, wall))
        try:
            record = self.cluster.start_container(record.spec.name, record.spec.namespace, track.name)
        except (ClusterError, OSError) as e:
            log.warning("container not started", pod=key, container=track.name, error=str(e))
            self._record(key, "Warning", "Failed", f"Error: {e}", track.name, init)
            return record, podstatus.exited(track, None, policy, now, wall, init=init)
        self._container_started(key, track.name, init=init)
        self._next_probe.setdefault(key, {}).pop(track.name, None)
        probed = not init and track.name in self._probes.get(key, {})
        return record, podstatus.started(track, now, wall, probed=probed)

    # --- events ---------------------------------------------------------------------------------------

    def flush_events(self) -> None:
        """Write the Events recorded since the last flush (``events.flush``: one store write)."""
        flush_events(self.store, self.events)

    def _object(self, key: str, container: str = "", init: bool = False) -> InvolvedObject:
        resource = self._involved.get(key)
        if resource is None:  # a pod this kubelet never saw in the store (uid unknown)
            namespace, _, name = key.partition("/")
            resource = Resource(kind="Pod", name=name, namespace=namespace)
        return InvolvedObject.of(resource, container=container, init=init)

    def _record(
        self,
        key: str,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        container: str = "",
        init: bool = False,
    ) -> None:
        self.events.record(self._object(key, container, init), type_, reason, message)

    def _backoff_message(self, key: str, container: str) -> str:
        namespace, _, name = key.partition("/")
        resource = self._involved.get(key)
        uid = resource.uid if resource is not None else ""
        return f"Back-off restarting failed container {container} in pod {name}_{namespace}({uid})"

    def _container_started(self, key: str, container: str, *, init: bool) -> None:
        """Pulled (what the local cluster made of the image), Created and Started for one container."""
        resource = self._involved.get(key)
        group = "initContainers" if init else "containers"
        raw = (
            next(
                (
                    c
                    for c in _containers(resource, group)
                    if str(c.get("name") or CONTAINER_NAME) == container
                ),
                {},
            )
            if resource is not None
            else {}
        )
        image = raw.get("image")
        if isinstance(image, str) and image not in ("", LOCAL_IMAGE):
            if raw.get("command") or raw.get("args") or init:
                pulled = (
                    f'Container image "{image}" not pulled: the local cluster runs the container\'s command'
                )
            else:
                pulled = (
                    f'Container image "{image}" is not run by the local cluster: its stand-in HTTP server '
                    "answers on the container's ports"
                )
            self._record(key, "Normal", "Pulled", pulled, container, init)
        self._record(key, "Normal", "Created", f"Created container {container}", container, init)
        self._record(key, "Normal", "Started", f"Started container {container}", container, init)

    def _killing(self, resource: Resource | None, record: PodRecord) -> None:
        """Killing for each container of a pod being removed."""
        pod = record.spec
        key = f"{pod.namespace}/{pod.name}"
        if resource is not None:
            self._involved.setdefault(key, resource)
        for container in pod.app_containers():
            self._record(key, "Normal", "Killing", f"Stopping container {container.name}", container.name)

    def _exec_for(
        self, record: PodRecord, container: str | None = None
    ) -> Callable[[Sequence[str], float], int]:
        def run(argv: Sequence[str], timeout: float) -> int:
            try:
                return self.cluster.exec(
                    record.spec.name, record.spec.namespace, argv, timeout=timeout, container=container
                ).returncode
            except (ClusterError, OSError) as e:
                log.info(
                    "readiness probe command failed",
                    pod=f"{record.spec.namespace}/{record.spec.name}",
                    error=str(e),
                )
                return -1

        return run

    def next_restart(self) -> float | None:
        """When (on this kubelet's clock) the earliest container restart is due."""
        return min(
            (
                t.restart_at
                for tracks in self._tracks.values()
                for t in (*tracks.init, *tracks.app)
                if t.restart_at is not None
            ),
            default=None,
        )

    def apply_service(
        self, name: str, namespace: str, ports: Sequence[Mapping[str, Any]], selector: Mapping[str, str]
    ) -> str:
        """Store a ClusterIP Service (ports as in a manifest: port, targetPort, name, protocol) and
        program it; returns its VIP."""
        spec: dict[str, Any] = {"selector": dict(selector), "ports": [dict(p) for p in ports]}
        existing = self.store.get(ResourceRef("Service", namespace, name))
        if existing is not None and existing.spec.get("clusterIP"):
            spec["clusterIP"] = existing.spec["clusterIP"]  # a VIP never changes while the service exists
        doc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        self.store.apply([build_resource(doc, source="ambientctl cluster")])
        report = self.sync_services()
        key = f"{namespace}/{name}"
        if key in report.rejected:
            raise ClusterError(f"service {key}: {report.rejected[key]}")
        return report.synced[key]

    def sync_services(self) -> SyncReport:
        """Program every stored ClusterIP Service into the cluster; remove the cluster's others. Only
        ready pods (their container running) are endpoints."""
        pods = [p for p in self.cluster.pods() if self.is_ready(f"{p.spec.namespace}/{p.spec.name}")]
        synced: dict[str, str] = {}
        rejected: dict[str, str] = {}
        for svc in self.store.list("Service"):
            key = f"{svc.namespace}/{svc.name}"
            try:
                spec = spec_as(svc, K8sServiceSpec)
                if spec.cluster_ip == "None":
                    continue  # headless: no VIP, names resolve to pods (not modelled by hosts files)
                ports, endpoints = select_endpoints(svc.namespace, spec, pods)
                vip = self.cluster.set_service(
                    svc.name, svc.namespace, spec.cluster_ip or None, ports, endpoints
                )
            except (ClusterError, StoreError, ValueError) as e:
                rejected[key] = str(e)
                log.warning("service not programmed", service=key, error=str(e))
                continue
            synced[key] = vip
            if spec.cluster_ip != vip:
                # As the API server's allocator does: the VIP becomes part of the object.
                new_spec = {**svc.spec, "clusterIP": vip, "clusterIPs": [vip]}
                self.store.apply([msgspec.structs.replace(svc, spec=new_spec)])
        removed = []
        stored = {f"{s.namespace}/{s.name}" for s in self.store.list("Service")}
        for record in self.cluster.services():
            key = f"{record.namespace}/{record.name}"
            if key not in stored:
                self.cluster.remove_service(record.name, record.namespace)
                removed.append(key)
        return SyncReport(synced=synced, rejected=rejected, removed=tuple(removed))


class PodCredentials:
    """Each pod's projected token and mesh root in ``Cluster.pod_dir`` (see module doc).

    The issuer key is loaded (created if missing, atomically) from ``<state-dir>/sa-issuer`` on first use.
    ``wall_clock`` gives aware UTC time (tokens carry wall-clock times).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        ttl: timedelta = TOKEN_TTL,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cluster = cluster
        self.state_dir = cluster.directory.parent
        self.ttl = ttl
        self._now = wall_clock
        self._key: Any = None  # the issuer's private key, once loaded

    def ensure(self, pod: Resource, node: str) -> bool:
        """Write the pod's token (when missing, not this pod's, or due) and root file; True when the
        token was (re)issued. Raises ``ClusterError`` naming what could not be written."""
        directory = self.cluster.pod_dir(pod.namespace, pod.name)
        sa = spec_as(pod, K8sPodSpec).service_account_name
        try:
            if self._key is None:
                self._key = satoken.ensure_issuer_key(self.state_dir)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write_root(directory / ROOT_CERT_FILE, node)
            now = self._now()
            token_path = directory / TOKEN_FILE
            if not self._due(token_path, pod, sa, node, now):
                return False
            token = satoken.issue_token(
                self._key,
                namespace=pod.namespace,
                service_account=sa,
                pod=satoken.BoundObject(pod.name, pod.uid),
                node=satoken.BoundObject(node),
                now=now,
                ttl=self.ttl,
            )
            satoken.write_private_file(token_path, token.encode("ascii"))
        except satoken.IssuerKeyError as e:
            raise ClusterError(f"pod {pod.namespace}/{pod.name}: no service-account token: {e}") from e
        except OSError as e:
            raise ClusterError(
                f"pod {pod.namespace}/{pod.name}: cannot write its credentials in {directory}: {e.strerror or e}"
            ) from e
        log.info("pod token issued", pod=f"{pod.namespace}/{pod.name}", expires_in=str(self.ttl))
        return True

    def _due(self, path: Path, pod: Resource, sa: str, node: str, now: datetime) -> bool:
        try:
            current = satoken.verify_token(
                path.read_text("ascii"), self._key.public_key(), now=now, leeway=timedelta(0)
            )
        except (OSError, UnicodeDecodeError, satoken.TokenError):
            return True  # missing, damaged, expired or from an old issuer key: issue a new one
        bound = current.pod
        if bound is None or (bound.name, bound.uid) != (pod.name, pod.uid) or current.service_account != sa:
            return True  # the file belongs to an earlier pod of that name
        if current.node is None or current.node.name != node:
            return True
        lifetime = current.expires_at - current.issued_at
        return now >= current.issued_at + lifetime * TOKEN_REFRESH_AT

    def _write_root(self, path: Path, node: str) -> None:
        """The mesh root as istiod_lite gave it to the node (its credential's root-cert.pem), else the
        state dir's CA root; none yet (no mesh running) leaves the file absent."""
        sources = (
            self.cluster.nodes_dir / node / "credential" / ROOT_CERT_FILE,
            self.state_dir / "ca" / ROOT_CERT_FILE,
        )
        for source in sources:
            try:
                roots = source.read_bytes()
            except FileNotFoundError:
                continue
            try:
                same = path.read_bytes() == roots
            except FileNotFoundError:
                same = False
            if not same:
                satoken.write_private_file(path, roots, mode=0o644)
            return


def pod_resource(record: PodRecord) -> Resource:
    """The Pod object a kubelet would report for a running pod of the local cluster."""
    doc = _pod_document(record.spec)
    doc["status"] = {
        "phase": "Running",
        "podIP": record.ip,
        "podIPs": [{"ip": record.ip}],
        "hostIP": record.node_ip,
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return build_resource(doc, source="local cluster kubelet")


def _pod_document(pod: PodSpec) -> dict[str, Any]:
    apps = pod.app_containers()
    container: dict[str, Any] = {"name": apps[0].name if apps else CONTAINER_NAME, "image": LOCAL_IMAGE}
    if pod.command:
        container["command"] = list(pod.command)
    if pod.ports:
        container["ports"] = [
            {"containerPort": p.port, "protocol": p.protocol, **({"name": p.name} if p.name else {})}
            for p in pod.ports
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": dict(pod.labels)},
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": pod.service_account,
            "containers": [container, *(_container_document(c) for c in apps[1:])],
            **(
                {"initContainers": [_container_document(c) for c in pod.init_containers]}
                if pod.init_containers
                else {}
            ),
        },
    }


def _container_document(container: ContainerSpec) -> dict[str, Any]:
    return {"name": container.name, "image": LOCAL_IMAGE, "command": list(container.command)}


def pending_pod_resource(pod: PodSpec) -> Resource:
    """The Pod object of a pod bound to its node but not running yet (phase ``Pending``)."""
    doc = _pod_document(pod)
    doc["status"] = {"phase": "Pending"}
    return build_resource(doc, source="local cluster kubelet")


def pending_status(reason: str) -> dict[str, Any]:
    """The status of a pod whose sandbox could not be created (``reason`` says why)."""
    return {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "SandboxFailed", "message": reason},
        ],
    }


def config_error_status(pod: Resource, message: str) -> dict[str, Any]:
    """The status of a pod whose containers cannot be created from its spec (``runAsNonRoot`` with root,
    an env source not supported, ...): ``Pending``, each container waiting with the kubelet's reason
    ``CreateContainerConfigError`` and ``message`` (so ``get pods`` shows why)."""
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
    return {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": message},
        ],
        "containerStatuses": [
            {"name": name, "image": image, "ready": False, "restartCount": 0, "state": waiting}
            for name, image in _images(pod, "containers").items()
        ],
    }


CLUSTER_DOWN_MESSAGE = "the local cluster is down; `ambientctl cluster up` starts this pod again"


def stopped_status() -> dict[str, Any]:
    """The status of a pod whose cluster is down: nothing runs it, it has no IP, it is not ready."""
    return {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ClusterDown", "message": CLUSTER_DOWN_MESSAGE},
        ],
    }


def mark_pods_stopped(store: Store) -> list[str]:
    """Write ``stopped_status`` on every stored Pod (``cluster down``: no pod claims to run or to have an
    IP while nothing runs it); returns the keys written. The kubelet writes real statuses on ``up``."""
    written = []
    for pod in store.list("Pod"):
        if store.set_status(pod.ref, stopped_status()).action != "unchanged":
            written.append(f"{pod.namespace}/{pod.name}")
    return written


def schedule(nodes: Sequence[str], pods: Iterable[PodRecord]) -> str:
    """The node with the fewest pods (the first such in ``nodes`` order): a scheduler's simplest policy."""
    load = dict.fromkeys(nodes, 0)
    for pod in pods:
        if pod.spec.node in load:
            load[pod.spec.node] += 1
    return min(nodes, key=lambda n: load[n])


def pod_spec_from_resource(resource: Resource, default_node: str) -> PodSpec:
    """A stored Pod manifest as a local-cluster pod: each container (and init container) runs its
    command + args as its own process, with its env, workingDir and securityContext (the container's
    runAsUser/runAsGroup/runAsNonRoot over the pod's); ``spec.nodeName`` picks the node
    (``default_node`` when unset: the caller schedules)."""
    source = f"pod {resource.namespace}/{resource.name}"
    spec = spec_as(resource, K8sPodSpec)
    if spec.host_network:
        raise InvalidClusterSpec(
            source, "$.spec.hostNetwork", "host-network pods are not supported by the local cluster"
        )
    node = spec.node_name or default_node
    ports = tuple(
        PodPort(port=p.container_port, name=p.name, protocol="UDP" if p.protocol == "UDP" else "TCP")
        for c in spec.containers or ()
        for p in c.ports or ()
        if p.protocol in ("TCP", "UDP")
    )
    pod_security = resource.spec.get("securityContext")
    if pod_security is not None and not isinstance(pod_security, Mapping):
        raise InvalidClusterSpec(source, "$.spec.securityContext", "must be a mapping")
    built = {
        group: tuple(
            _container_spec(raw, group, i, source, resource, node, pod_security or {})
            for i, raw in enumerate(_containers(resource, group))
        )
        for group in ("initContainers", "containers")
    }
    for i, raw in enumerate(_containers(resource, "containers")):
        parse_probe(raw, source, i)  # a bad readinessProbe fails the pod alone, with the field named
    containers = built["containers"]
    first = containers[0] if containers else ContainerSpec(name=CONTAINER_NAME)
    if not built["initContainers"] and containers == (
        ContainerSpec(
            name=CONTAINER_NAME,
            command=first.command,
            env=first.env,
            env_from_status=first.env_from_status,
            working_dir=first.working_dir,
        ),
    ):
        containers = ()  # the form a pod built in code has (PodSpec(command=...)): equal specs compare equal
    return PodSpec(
        name=resource.name,
        namespace=resource.namespace,
        node=node,
        command=first.command,
        labels=dict(resource.labels),
        service_account=spec.service_account_name,
        uid=resource.uid,
        ports=ports,
        env=first.env,
        env_from_status=first.env_from_status,
        working_dir=first.working_dir,
        containers=containers,
        init_containers=built["initContainers"],
        termination_grace_s=termination_grace(resource.spec, source),
    )


def termination_grace(spec: Mapping[str, Any], source: str) -> int:
    """``spec.terminationGracePeriodSeconds`` (Kubernetes' default 30 when unset; 0: SIGKILL at once);
    anything but a whole number of seconds >= 0 is refused, naming the field."""
    value = spec.get("terminationGracePeriodSeconds")
    if value is None:
        return DEFAULT_TERMINATION_GRACE_S
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidClusterSpec(
            source,
            "$.spec.terminationGracePeriodSeconds",
            f"{value!r} is not a number of seconds (a whole number, 0 or more)",
        )
    return value


def _containers(resource: Resource, group: str) -> list[Mapping[str, Any]]:
    """``spec.containers`` or ``spec.initContainers`` of a stored Pod (mappings only)."""
    return [c for c in resource.spec.get(group) or () if isinstance(c, Mapping)]


def _images(resource: Resource, group: str) -> dict[str, str]:
    return {
        str(c.get("name") or CONTAINER_NAME): str(c.get("image") or LOCAL_IMAGE)
        for c in _containers(resource, group)
    }


def _container_spec(
    raw: Mapping[str, Any],
    group: str,
    index: int,
    source: str,
    resource: Resource,
    node: str,
    pod_security: Mapping[str, Any],
) -> ContainerSpec:
    where = f"$.spec.{group}[{index}]"
    name = raw.get("name") or (CONTAINER_NAME if group == "containers" and index == 0 else None)
    if not isinstance(name, str):
        raise InvalidClusterSpec(source, f"{where}.name", "every container needs a name")
    command = [*(raw.get("command") or []), *(raw.get("args") or [])]
    if not all(isinstance(part, str) for part in command):
        raise InvalidClusterSpec(source, f"{where}.command", "every command and args item must be a string")
    if not command and group == "containers" and raw.get("image") not in (None, "", LOCAL_IMAGE):
        ports = [
            p.get("containerPort")
            for p in raw.get("ports") or ()
            if isinstance(p, Mapping) and p.get("protocol", "TCP") == "TCP"
        ]
        command = standin_command([p for p in ports if isinstance(p, int)])
    env, from_status = container_env(raw.get("env"), source, resource, node, where=f"{where}.env")
    if command and command[:3] == standin_command([])[:3]:
        env.setdefault("POD_VERSION", resource.labels.get("version", ""))  # the stand-in's answer names it
    working_dir = raw.get("workingDir") or ""
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        raise InvalidClusterSpec(source, f"{where}.workingDir", "must be an absolute path")
    user, group_id = _run_as(raw, pod_security, where, source, resource, name)
    return ContainerSpec(
        name=name,
        command=tuple(command),
        env=env,
        env_from_status=from_status,
        working_dir=working_dir,
        run_as_user=user,
        run_as_group=group_id,
    )


def _run_as(
    raw: Mapping[str, Any],
    pod_security: Mapping[str, Any],
    where: str,
    source: str,
    resource: Resource,
    container: str,
) -> tuple[int | None, int | None]:
    """The container's (uid, gid) from securityContext (the container's field over the pod's), checked
    against ``runAsNonRoot`` as the kubelet checks it (refused with its message)."""
    security = raw.get("securityContext")
    if security is not None and not isinstance(security, Mapping):
        raise InvalidClusterSpec(source, f"{where}.securityContext", "must be a mapping")
    security = security or {}

    def pick(key: str) -> tuple[Any, str]:
        if security.get(key) is not None:
            return security[key], f"{where}.securityContext.{key}"
        return pod_security.get(key), f"$.spec.securityContext.{key}"

    ids: list[int | None] = []
    for key in ("runAsUser", "runAsGroup"):
        value, at = pick(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31
        ):
            raise InvalidClusterSpec(source, at, f"{value!r} is not a user or group id (0 to 2147483647)")
        ids.append(value)
    non_root, at = pick("runAsNonRoot")
    if non_root is True and not ids[0]:
        pod = f'"{resource.name}_{resource.namespace}({resource.uid})"'
        message = (
            "container has runAsNonRoot and image will run as root"
            if ids[0] is None
            else "container's runAsUser breaks non-root policy"
        )
        raise InvalidClusterSpec(source, at, f"{message} (pod: {pod}, container: {container})")
    return ids[0], ids[1]


STANDIN_MODULE = "ambientctl.apps.standin"


def standin_command(ports: Sequence[int]) -> list[str]:
    """What runs for a container whose image the local cluster cannot run (see ``apps/standin``)."""
    return [sys.executable, "-m", STANDIN_MODULE, *(arg for p in ports for arg in ("--port", str(p)))]


# fieldRef paths a container's env may name, resolved from the stored Pod (status.* once it runs).
_STATIC_FIELDS: dict[str, Callable[[Resource, str], str]] = {
    "metadata.name": lambda pod, _node: pod.name,
    "metadata.namespace": lambda pod, _node: pod.namespace,
    "metadata.uid": lambda pod, _node: pod.uid,
    "spec.nodeName": lambda _pod, node: node,
    "spec.serviceAccountName": lambda pod, _node: str(pod.spec.get("serviceAccountName") or "default"),
    "spec.serviceAccount": lambda pod, _node: str(pod.spec.get("serviceAccountName") or "default"),
}
_STATUS_FIELDS = {"status.podIP": "podIP", "status.hostIP": "hostIP"}
_MAP_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def container_env(
    entries: object,
    source: str,
    pod: Resource | None = None,
    node: str = "",
    *,
    where: str = "$.spec.containers[0].env",
) -> tuple[dict[str, str], dict[str, str]]:
    """A container's ``env`` list as the process environment: literal ``value``s (a missing value is
    ""); a later entry of the same name wins, as in Kubernetes. ``valueFrom.fieldRef`` (the downward
    API) is resolved from ``pod``: ``metadata.name|namespace|uid``, ``metadata.labels['k']``,
    ``metadata.annotations['k']``, ``spec.nodeName``, ``spec.serviceAccountName`` now; ``status.podIP``
    and ``status.hostIP`` returned apart (name -> field) as they are known only once the pod exists.
    Other ``valueFrom`` sources (ConfigMaps, Secrets, resources) are refused, naming the entry."""
    if entries is None:
        return {}, {}
    if not isinstance(entries, list):
        raise InvalidClusterSpec(source, where, "must be a list of {name, value} entries")
    env: dict[str, str] = {}
    from_status: dict[str, str] = {}
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidClusterSpec(source, at, "must be a mapping with name and value")
        name = entry.get("name")
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidClusterSpec(source, f"{at}.name", f"{name!r} is not an environment variable name")
        if "valueFrom" in entry:
            field = _field_ref(entry.get("valueFrom"))
            if field is None or pod is None:
                raise InvalidClusterSpec(
                    source,
                    f"{at}.valueFrom",
                    f"{name}: only valueFrom.fieldRef (metadata.name, metadata.namespace, metadata.uid, "
                    "metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, "
                    "status.podIP, status.hostIP) is supported by the local cluster; ConfigMaps, Secrets and "
                    "resourceFieldRef are not",
                )
            from_status.pop(name, None)
            env.pop(name, None)
            if field in _STATUS_FIELDS:
                from_status[name] = _STATUS_FIELDS[field]
                continue
            mapped = _MAP_FIELD.match(field)
            if mapped:
                table = pod.labels if mapped.group(1) == "labels" else pod.annotations
                env[name] = table.get(mapped.group(2), "")
                continue
            resolve = _STATIC_FIELDS.get(field)
            if resolve is None:
                raise InvalidClusterSpec(
                    source, f"{at}.valueFrom.fieldRef.fieldPath", f"{name}: unsupported field path {field!r}"
                )
            env[name] = resolve(pod, node)
            continue
        from_status.pop(name, None)
        value = entry.get("value", "")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidClusterSpec(
                source, f"{at}.value", f"{name}: the value must be a string (quote numbers)"
            )
        env[name] = value
    return env, from_status


def _field_ref(value_from: object) -> str | None:
    """``valueFrom.fieldRef.fieldPath`` when that is the (only) source, else None."""
    if not isinstance(value_from, Mapping) or set(value_from) != {"fieldRef"}:
        return None
    ref = value_from["fieldRef"]
    path = ref.get("fieldPath") if isinstance(ref, Mapping) else None
    return path if isinstance(path, str) else None


def _probe_text(probe: Probe) -> str:
    """What a failed readiness probe checked, for its Unhealthy event."""
    if probe.kind == "exec":
        return f"command {' '.join(probe.command)!r} did not exit 0"
    if probe.kind == "tcpSocket":
        return f"no TCP connection to {probe.host}:{probe.port}"
    return f"HTTP GET http://{probe.host}:{probe.port}{probe.path} did not answer 200-399"


def select_endpoints(
    namespace: str, spec: K8sServiceSpec, pods: Sequence[PodRecord]
) -> tuple[list[ServicePort], list[str]]:
    """Service ports with resolved target ports, and the IPs of the pods the selector picks.

    As Kubernetes: a service without a selector has no automatic endpoints; a named targetPort
    resolves against the pods' container ports. The cluster keeps one target port per service port,
    so a pod whose named port differs from the first selected pod's (or lacks it) is left out.
    """
    selector = spec.selector or {}
    selected = (
        sorted(
            (p for p in pods if p.spec.namespace == namespace and _matches(selector, p.spec.labels)),
            key=lambda p: (p.spec.node, p.ip),
        )
        if selector
        else []
    )
    ports: list[ServicePort] = []
    eligible = {p.ip for p in selected}
    for port in spec.ports or ():
        if port.protocol not in ("TCP", "UDP"):
            continue
        target = port.target_port if port.target_port is not None else port.port
        protocol: Protocol = "UDP" if port.protocol == "UDP" else "TCP"
        if isinstance(target, str) and not target.isdigit():
            resolved = {p.ip: _named_port(p, target, protocol) for p in selected}
            numbers = [n for n in resolved.values() if n is not None]
            if not numbers:
                continue  # no selected pod has that port: it gets no rule (the others still work)
            number = numbers[0]
            eligible &= {ip for ip, n in resolved.items() if n == number}
        else:
            number = int(target)
        ports.append(ServicePort(port=port.port, target_port=number, protocol=protocol, name=port.name))
    return ports, [p.ip for p in selected if p.ip in eligible]


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _named_port(pod: PodRecord, name: str, protocol: str) -> int | None:
    return next((p.port for p in pod.spec.ports if p.name == name and p.protocol == protocol), None)
