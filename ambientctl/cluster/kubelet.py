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
replaced atomically. A pod whose credential cannot be written fails alone (Pending, retried). A
manifest's ``spec.containers[0].env`` literal ``value``s reach the process; ``valueFrom`` is refused
with the reason (the downward-API facts POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME, SERVICE_ACCOUNT
are always set).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import structlog

from meshcore import satoken
from meshcore.store import Resource, ResourceRef, Store, StoreError, build_resource, spec_as
from meshcore.store.schema import PodSpec as K8sPodSpec
from meshcore.store.schema import ServiceSpec as K8sServiceSpec

from . import podstatus
from .cluster import ROOT_CERT_FILE, TOKEN_FILE, Cluster
from .errors import ClusterError, InvalidClusterSpec, PodNotFound
from .podstatus import ContainerTrack
from .probes import Probe, parse_probe, run_probe
from .spec import PodPort, PodSpec, Protocol, ServicePort
from .state import PodRecord

log = structlog.get_logger("ambientctl.cluster.kubelet")

CONTAINER_NAME = "main"
LOCAL_IMAGE = "local"  # pods of the local cluster run host commands, not images
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
TOKEN_TTL = timedelta(hours=1)
TOKEN_REFRESH_AT = 0.8  # of the token's lifetime, as kubelet refreshes projected tokens


@dataclass(frozen=True, slots=True)
class _Backoff:
    pod: PodSpec  # the spec that failed: a changed spec is tried at once
    attempts: int
    retry_at: float
    error: str


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
    ) -> None:
        self.cluster = cluster
        self.store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._backoff: dict[str, _Backoff] = {}
        # "namespace/name" -> the pod's container history (podstatus), and when its sandbox started.
        self._tracks: dict[str, ContainerTrack] = {}
        self._start_times: dict[str, str] = {}
        # "namespace/name" -> the pod's readinessProbe, and when (kubelet clock) it is next due.
        self._probes: dict[str, Probe] = {}
        self._next_probe: dict[str, float] = {}
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
        try:
            self.cluster.remove_pod(name, namespace)
        except PodNotFound:
            log.info("pod not in the cluster; removing it from the store only", pod=f"{namespace}/{name}")
        self.store.delete([ResourceRef("Pod", namespace, name)])
        self.sync_services()

    def sync_pods(self) -> SyncReport:
        """Make the cluster run exactly the store's Pods (a manifest's first container command runs in
        the pod); pods without ``spec.nodeName`` are scheduled on the node with the fewest pods. Then
        services follow. A pod that cannot run is rejected alone."""
        layout = self.cluster.layout()
        running = {f"{p.spec.namespace}/{p.spec.name}": p for p in self.cluster.pods()}
        stored = {f"{r.namespace}/{r.name}": r for r in self.store.list("Pod")}
        synced: dict[str, str] = {}
        rejected: dict[str, str] = {}
        now = self._clock()
        for key in [k for k in self._backoff if k not in stored]:
            del self._backoff[key]
        for key, resource in sorted(stored.items()):
            current = running.get(key)
            default_node = (
                current.spec.node if current else schedule([n.name for n in layout.nodes], running.values())
            )
            try:
                pod = pod_spec_from_resource(resource, default_node)
            except (ClusterError, StoreError, ValueError) as e:
                rejected[key] = str(e)
                log.warning("pod not run", pod=key, error=str(e))
                continue
            waiting = self._backoff.get(key)
            if waiting is not None and waiting.pod == pod and waiting.retry_at > now:
                rejected[key] = f"{waiting.error} (retrying in {waiting.retry_at - now:.1f} s)"
                continue
            try:
                resource = self._bind(resource, pod.node)
                if current is not None and msgspec.structs.replace(current.spec, labels=pod.labels) != pod:
                    # A changed pod restarts (pods are immutable); a relabelled one does not (add_pod).
                    self.cluster.remove_pod(pod.name, pod.namespace)
                    del running[key]
                    current = None
                self.credentials.ensure(resource, pod.node)  # before the process starts, as a volume is
                self.cluster.add_pod(pod)
            except (ClusterError, StoreError, ValueError) as e:
                rejected[key] = str(e)
                self._failed(key, pod, resource, str(e), now)
                continue
            self._backoff.pop(key, None)
            record = self.cluster.find_pod(pod.name, pod.namespace)
            assert record is not None, "add_pod returned but the pod is not recorded"
            running[key] = record
            synced[key] = record.ip
            if current is None or key not in self._tracks:
                self._started(key, resource)
            self._register(resource, record)
        removed = []
        for key, record in sorted(running.items()):
            if key not in stored:
                self.cluster.remove_pod(record.spec.name, record.spec.namespace)
                removed.append(key)
        for key in [k for k in self._tracks if k not in stored or k not in running]:
            self._tracks.pop(key, None)
            self._start_times.pop(key, None)
            self._probes.pop(key, None)
            self._next_probe.pop(key, None)
        self.sync_services()
        return SyncReport(synced=synced, rejected=rejected, removed=tuple(removed))

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

    def _register(self, stored: Resource, record: PodRecord) -> None:
        """Write nodeName and the observed status into a stored manifest, keeping the rest as applied."""
        key = f"{record.spec.namespace}/{record.spec.name}"
        status = self._status(key, stored, record)
        spec = {**stored.spec, "nodeName": record.spec.node}
        if spec != stored.spec or status != stored.status:
            self.store.apply([msgspec.structs.replace(stored, spec=spec, status=status)])

    def _wall(self) -> str:
        return self._wall_clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _started(self, key: str, resource: Resource) -> None:
        """A pod's sandbox and container were just (re)created: a fresh history."""
        container = _first_container(resource)
        name = container.get("name") or CONTAINER_NAME
        wall = self._wall()
        probe = parse_probe(container, f"pod {key}")  # validated when the pod spec was read
        if probe is None:
            self._probes.pop(key, None)
        else:
            self._probes[key] = probe
        self._next_probe.pop(key, None)
        self._tracks[key] = podstatus.started(
            ContainerTrack(name=str(name)), self._clock(), wall, probed=probe is not None
        )
        self._start_times[key] = wall

    def _status(self, key: str, stored: Resource, record: PodRecord) -> dict[str, Any]:
        track = self._tracks.get(key)
        if track is None:
            return pod_resource(record).status
        image = str(_first_container(stored).get("image") or LOCAL_IMAGE)
        return podstatus.pod_status(
            [track],
            {track.name: image},
            pod_ip=record.ip,
            host_ip=record.node_ip,
            start_time=self._start_times.get(key, ""),
        )

    def is_ready(self, key: str) -> bool:
        """Whether the pod's container runs (pods this kubelet has no history of count as ready)."""
        track = self._tracks.get(key)
        return track is None or podstatus.is_ready(track)

    def check_containers(self) -> list[str]:
        """Observe every pod's process: record exits, restart what the restart policy and back-off
        allow, write the statuses that changed; returns the keys of pods whose status changed. Services
        follow when a pod's readiness changed (an unready pod gets no traffic)."""
        stored = {f"{r.namespace}/{r.name}": r for r in self.store.list("Pod")}
        changed: list[str] = []
        readiness_changed = False
        for record in self.cluster.pods():
            key = f"{record.spec.namespace}/{record.spec.name}"
            resource = stored.get(key)
            track = self._tracks.get(key)
            if resource is None or track is None or record.process is None:
                continue
            before = track
            now = self._clock()
            policy = str(resource.spec.get("restartPolicy") or "Always")
            if track.running_since is not None and not self.cluster.procs.is_running(record.process):
                code = self.cluster.procs.collect_exit(record.process)
                track = podstatus.exited(track, code, policy, now, self._wall())
                log.warning(
                    "container exited",
                    pod=key,
                    exit_code=code,
                    restart_in=track.restart_at and track.backoff_s,
                )
            probe = self._probes.get(key)
            if podstatus.restart_due(track, now):
                try:
                    record = self.cluster.restart_pod_process(record.spec.name, record.spec.namespace)
                    track = podstatus.started(track, now, self._wall(), probed=probe is not None)
                    self._next_probe.pop(key, None)
                except (ClusterError, OSError) as e:
                    track = podstatus.exited(track, None, policy, now, self._wall())
                    log.warning("container not restarted", pod=key, error=str(e))
            if probe is not None and track.running_since is not None:
                due = self._next_probe.get(key, track.running_since + probe.initial_delay)
                if now >= due:
                    ok = run_probe(
                        probe, str(self.cluster.net.netns_path(record.netns)), self._exec_for(record)
                    )
                    track = podstatus.probed(track, ok, probe.success_threshold, probe.failure_threshold)
                    self._next_probe[key] = self._clock() + probe.period
            if track == before:
                continue
            self._tracks[key] = track
            readiness_changed |= podstatus.is_ready(before) != podstatus.is_ready(track)
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
        return changed

    def _exec_for(self, record: PodRecord) -> Callable[[Sequence[str], float], int]:
        def run(argv: Sequence[str], timeout: float) -> int:
            try:
                return self.cluster.exec(
                    record.spec.name, record.spec.namespace, argv, timeout=timeout
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
        return min((t.restart_at for t in self._tracks.values() if t.restart_at is not None), default=None)

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


def _first_container(resource: Resource) -> Mapping[str, Any]:
    containers = resource.spec.get("containers") or []
    return containers[0] if containers and isinstance(containers[0], Mapping) else {}


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
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": LOCAL_IMAGE}
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
        "spec": {"nodeName": pod.node, "serviceAccountName": pod.service_account, "containers": [container]},
    }


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
    """A stored Pod manifest as a local-cluster pod: the first container's command + args run inside
    it; ``spec.nodeName`` picks the node (``default_node`` when unset: the caller schedules)."""
    source = f"pod {resource.namespace}/{resource.name}"
    spec = spec_as(resource, K8sPodSpec)
    if spec.host_network:
        raise InvalidClusterSpec(
            source, "$.spec.hostNetwork", "host-network pods are not supported by the local cluster"
        )
    first = _first_container(resource)
    command = [*(first.get("command") or []), *(first.get("args") or [])]
    if not all(isinstance(part, str) for part in command):
        raise InvalidClusterSpec(
            source, "$.spec.containers[0].command", "every command and args item must be a string"
        )
    ports = tuple(
        PodPort(port=p.container_port, name=p.name, protocol="UDP" if p.protocol == "UDP" else "TCP")
        for c in spec.containers or ()
        for p in c.ports or ()
        if p.protocol in ("TCP", "UDP")
    )
    if not command and first.get("image") not in (None, "", LOCAL_IMAGE):
        command = standin_command([p.port for p in ports if p.protocol == "TCP"])
    env, from_status = container_env(first.get("env"), source, resource, spec.node_name or default_node)
    if command and command[:3] == standin_command([])[:3]:
        env.setdefault("POD_VERSION", resource.labels.get("version", ""))  # the stand-in's answer names it
    parse_probe(first, source)  # a bad readinessProbe fails the pod alone, with the field named
    working_dir = first.get("workingDir") or ""
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        raise InvalidClusterSpec(source, "$.spec.containers[0].workingDir", "must be an absolute path")
    return PodSpec(
        name=resource.name,
        namespace=resource.namespace,
        node=spec.node_name or default_node,
        command=tuple(command),
        labels=dict(resource.labels),
        service_account=spec.service_account_name,
        uid=resource.uid,
        ports=ports,
        env=env,
        env_from_status=from_status,
        working_dir=working_dir,
    )


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
    entries: object, source: str, pod: Resource | None = None, node: str = ""
) -> tuple[dict[str, str], dict[str, str]]:
    """A container's ``env`` list as the process environment: literal ``value``s (a missing value is
    ""); a later entry of the same name wins, as in Kubernetes. ``valueFrom.fieldRef`` (the downward
    API) is resolved from ``pod``: ``metadata.name|namespace|uid``, ``metadata.labels['k']``,
    ``metadata.annotations['k']``, ``spec.nodeName``, ``spec.serviceAccountName`` now; ``status.podIP``
    and ``status.hostIP`` returned apart (name -> field) as they are known only once the pod exists.
    Other ``valueFrom`` sources (ConfigMaps, Secrets, resources) are refused, naming the entry."""
    if entries is None:
        return {}, {}
    where = "$.spec.containers[0].env"
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
