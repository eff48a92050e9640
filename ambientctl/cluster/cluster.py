"""``Cluster``: the local cluster's lifecycle (up, down, status), its pods, services and processes.

Composition of the pure plan (``plan``), the kernel (``net.NetworkDriver``), processes
(``procs.ProcessSupervisor``) and the record (``state.StateFile``), under one lock per state directory.
Rules: (1) intent is recorded before the kernel changes, so a crash leaves a record ``down`` can use;
(2) a failed ``up`` or ``add_pod`` removes what it made before raising (nothing half-built stays);
(3) ``down`` removes what is recorded *and* sweeps everything named with the prefix, so it also
cleans up after a lost state file; (4) ``up`` on a running cluster changes nothing and reports it;
(5) ``add_pod`` holds the lock only to reserve a pod (``reserve_pod``: its address among every recorded
pod's, starting ones included, so none is given twice) and to commit it: several threads start pods at
once, and a pod removed (or a cluster taken down) while it starts is cleaned up by that start.
(6) ``remove_pod`` likewise holds the lock only to mark a pod terminating (out of every Service's
endpoints at once, before its processes stop; its record, so its address, kept) and to drop it: stopping
its containers, the CNI DEL and the netns deletion run outside it, so several removals overlap. A
terminating pod gets no Service endpoint, no hosts file, no container start, and its name is refused
to a new pod until it is gone.
Pods get their network from the node's CNI plugins as a kubelet's pods do (``cni.CniRuntime``: ADD
after the netns exists and before the process starts, a failure fails that pod alone; DEL before the
netns goes). Files live in ``<state-dir>/cluster/``: state.json, lock, logs/<name>.log, run/<name>.pid,
nodes/<node>/ (the mesh's per-node files: CNI config, sockets, credentials; removed by ``down``),
pods/<namespace>/<name>/ (0700: the pod's projected service-account token ``istio-token`` and the mesh
root ``root-cert.pem``, as kubelet mounts them; written by ``kubelet.py``, named in the pod's environment
as ``ISTIO_TOKEN_PATH``/``ISTIO_ROOT_CERT_PATH``, removed with the pod and by ``down``).
The store is not touched here (``kubelet.py`` registers pods and services there).
Containers: each container of a pod is its own process in the pod's netns (``start_container``), with
its own env, workingDir ("/" when unset: never the directory ``cluster up`` ran in), user/group
(``runAsUser``/``runAsGroup`` through ``procs``) and log (``logs/<ns>-<name>.log`` for the first app
container, ``logs/<ns>-<name>~<container>.log`` for the others; on a restart the previous run's log
is kept as ``<log>.previous``). ``add_pod`` starts the pod's first init container, or every app
container when it has none; the kubelet starts the next ones as init containers complete.
``exec_command`` is how ``exec`` and exec probes run a command as a container does.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from meshcore.store import name_problem

from .cni import CniRuntime
from .errors import (
    ClusterAlreadyUp,
    ClusterBusy,
    ClusterDegraded,
    ClusterError,
    ClusterNotUp,
    InvalidClusterSpec,
    LeftoversFound,
    NameCollision,
    PodExists,
    PodNotFound,
    PodTerminating,
    ServiceNotFound,
    StateCorrupt,
    UnknownComponent,
    UnknownNode,
)
from .net import NetworkDriver
from .plan import (
    ClusterLayout,
    NodeLayout,
    WriteNetnsFile,
    allocate_pod_ip,
    allocate_vip,
    build_layout,
    check_vip,
    plan_cluster,
    plan_pod,
    plan_services,
    pod_record,
)
from .preflight import check_host
from .procs import ProcessSupervisor, as_user_argv
from .spec import (
    DEFAULT_PREFIX,
    ClusterSpec,
    ContainerSpec,
    PodSpec,
    ServicePort,
    validate_cluster_spec,
    validate_pod,
)
from .state import (
    LOCK_TIMEOUT_S,
    ClusterState,
    PodRecord,
    ProcessRecord,
    ServiceRecord,
    StateFile,
    object_key,
)
from .supervision import ComponentHealth, LastExit, read_report

CLUSTER_DIR = "cluster"
NODES_DIR = "nodes"
PODS_DIR = "pods"
TOKEN_FILE = "istio-token"
ROOT_CERT_FILE = "root-cert.pem"
ISTIO_TOKEN_PATH = "ISTIO_TOKEN_PATH"
ISTIO_ROOT_CERT_PATH = "ISTIO_ROOT_CERT_PATH"
EXEC_TIMEOUT_S = 60.0
# The supervisor's component name (``mesh.SUPERVISOR``; mesh imports this module, not the reverse).
SUPERVISOR_COMPONENT = "supervisor"

log = structlog.get_logger("ambientctl.cluster")

Phase = Literal["down", "creating", "up", "degraded", "deleting"]


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    netns: str
    ip: str
    pod_cidr: str
    present: bool


class PodStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    namespace: str
    node: str
    ip: str
    netns: str
    present: bool
    pid: int | None = None
    # None: the pod has no command (a namespace only).
    running: bool | None = None
    log: str | None = None


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    namespace: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[str, ...]


class ProcessStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    netns: str
    pid: int
    running: bool
    log: str
    # From the supervisor's report (``supervision``): Running, Exited, or BackOff (a restart is due).
    state: str = "Running"
    restarts: int = 0
    last_exit: LastExit | None = None
    # Wall clock of the pending restart (BackOff).
    restart_at: float | None = None


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    phase: Phase
    prefix: str
    state_dir: str
    istiod_address: str | None = None
    nodes: tuple[NodeStatus, ...] = ()
    pods: tuple[PodStatus, ...] = ()
    services: tuple[ServiceStatus, ...] = ()
    processes: tuple[ProcessStatus, ...] = ()
    # What is recorded but missing, or present but not recorded.
    problems: tuple[str, ...] = ()
    # Whether the call that returned this status changed anything (``up``: False when it was already up).
    changed: bool = False


class DownReport(msgspec.Struct, frozen=True, kw_only=True):
    had_state: bool
    netns_removed: tuple[str, ...]
    processes_stopped: tuple[int, ...]
    host_links_removed: tuple[str, ...]


class ExecCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A command line to run inside a pod, with the environment and working directory to give it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    returncode: int
    stdout: str
    stderr: str


def pod_files_dir(cluster_dir: Path, namespace: str, name: str) -> Path:
    """A pod's credential directory (its token and the mesh root), like kubelet's projected volume."""
    return cluster_dir / PODS_DIR / namespace / name


class Cluster:
    """One local cluster per state directory.

    ``prefix`` is used only when no state records the cluster's own (``down`` after a lost state file,
    ``up`` without a spec); a recorded cluster always uses the prefix it was created with.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        prefix: str = DEFAULT_PREFIX,
        net: NetworkDriver | None = None,
        supervisor: ProcessSupervisor | None = None,
        host_check: Callable[[], None] = check_host,
        cni: CniRuntime | None = None,
    ) -> None:
        self.directory = state_dir / CLUSTER_DIR
        self.prefix = prefix
        self.net = net or NetworkDriver()
        self.procs = supervisor or ProcessSupervisor(self.directory / "run", self.directory / "logs")
        # Per-node files of the mesh (CNI config, sockets, credentials): ``nodes_dir/<node>/``.
        self.nodes_dir = self.directory / NODES_DIR
        self.cni = cni or CniRuntime(self.nodes_dir)
        self._state = _ThreadedStateFile(self.directory)
        self._host_check = host_check
        # Pods this object is starting outside the state lock (reserved, not yet committed).
        self._starting: set[str] = set()
        # Pods this object is removing outside the state lock (marked terminating, not yet dropped).
        self._removing: set[str] = set()
        self._removing_guard = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------------

    def up(self, spec: ClusterSpec | None = None) -> ClusterStatus:
        """Create the cluster; if it is already up, report it unchanged (``spec=None``: accept any shape)."""
        if spec is not None:
            validate_cluster_spec(spec)
        self._host_check()
        with self._state.lock():
            state = self._state.load()
            if state is not None and state.phase == "up":
                if spec is not None and spec != state.spec:
                    raise ClusterAlreadyUp(_describe(state.spec), _describe(spec))
                current = self._status(state)
                if current.problems:
                    raise ClusterDegraded(current.problems)
                return current
            wanted = spec or (state.spec if state is not None else ClusterSpec(prefix=self.prefix))
            if state is not None:
                log.warning("removing a cluster left half-made", phase=state.phase, prefix=state.spec.prefix)
                self._teardown(state.spec.prefix, state)
            else:
                leftovers = self.net.list_netns(wanted.prefix)
                if leftovers:
                    raise LeftoversFound(wanted.prefix, leftovers)
            state = ClusterState(phase="creating", spec=wanted)
            self._state.save(state)
            try:
                self.net.apply(plan_cluster(build_layout(wanted)))
            except BaseException:
                self._teardown(wanted.prefix, state)
                self._state.remove()
                raise
            state = msgspec.structs.replace(state, phase="up")
            self._state.save(state)
            log.info("cluster up", nodes=wanted.nodes, prefix=wanted.prefix)
            return msgspec.structs.replace(self._status(state), changed=True)

    def down(self) -> DownReport:
        """Stop every process, delete every namespace, link and file of the cluster; idempotent."""
        self._host_check()
        with self._state.lock():
            try:
                state = self._state.load()
            except StateCorrupt as e:
                log.warning("cluster state unreadable: sweeping by prefix", error=str(e), prefix=self.prefix)
                state = None
            if state is not None:
                self._state.save(msgspec.structs.replace(state, phase="deleting"))
            prefix = state.spec.prefix if state is not None else self.prefix
            report = self._teardown(prefix, state)
            self._state.remove()
            return report

    def is_up(self) -> bool:
        """Whether the cluster's recorded phase is ``up`` (reads the state file only: cheap)."""
        try:
            state = self._state.load()
        except StateCorrupt:
            return False
        return state is not None and state.phase == "up"

    def recorded_prefix(self) -> str | None:
        """The prefix the recorded cluster was created with (None: no cluster recorded)."""
        state = self._state.load()
        return None if state is None else state.spec.prefix

    def status(self) -> ClusterStatus:
        state = self._state.load()
        if state is None:
            leftovers = self.net.list_netns(self.prefix)
            problems = tuple(f"unrecorded network namespace {n}" for n in leftovers)
            return ClusterStatus(
                phase="down", prefix=self.prefix, state_dir=str(self.directory), problems=problems
            )
        return self._status(state)

    # --- pods -----------------------------------------------------------------------------------------

    def add_pod(self, pod: PodSpec) -> str:
        """Create the pod's netns and veth, run the CNI ADD, start its containers; returns its IP. Same
        spec again: no-op. Several threads may add different pods at once: the state lock is held only
        to reserve the pod (``reserve_pod``: its address and names, recorded before the kernel changes)
        and to commit its processes, never while the kernel, the CNI plugins or the processes work."""
        validate_pod(pod)
        key = object_key(pod.namespace, pod.name)
        with self._state.lock():
            state = self._require_up()
            layout = build_layout(state.spec)
            node = layout.find_node(pod.node)
            if node is None:
                raise UnknownNode(pod.node, [n.name for n in layout.nodes])
            existing = state.pods.get(key)
            if existing is not None and existing.terminating:
                raise PodTerminating(pod.namespace, pod.name)
            if existing is not None:
                if key in self._starting:
                    # Another thread is starting this very pod: the same spec is that start.
                    if existing.spec == pod:
                        return existing.ip
                    raise PodExists(pod.namespace, pod.name)
                if not self.net.netns_exists(existing.netns):
                    # Recorded but gone (deleted by hand): clear what is left and make it afresh.
                    self._remove_pod_objects(existing)
                    state = _without_pod(state, key)
                elif existing.spec == pod:
                    return existing.ip
                elif msgspec.structs.replace(existing.spec, labels=pod.labels) == pod:
                    # Labels are metadata: relabelling (e.g. enrolling in the mesh) never restarts a pod.
                    self._state.save(_with_pod(state, key, msgspec.structs.replace(existing, spec=pod)))
                    return existing.ip
                else:
                    raise PodExists(pod.namespace, pod.name)
            for container in (*pod.init_containers, *pod.app_containers()):
                if container.command:
                    env = self._pod_env(pod, node, "", container)
                    self.procs.check_command(f"pod {key}", container.command, env)
            state, reserved = reserve_pod(state, layout, node, pod)
            steps = plan_pod(layout, node, reserved, list(state.services.values()))
            self._state.save(state)  # intent first: a crash from here on is cleaned by `down`
            try:
                # The pod's hosts and resolv.conf under the lock: a Service changed from now on rewrites them.
                self.net.apply([s for s in steps if isinstance(s, WriteNetnsFile)])
            except BaseException:
                self._remove_pod_objects(reserved)
                self._state.save(_without_pod(state, key))
                raise
            self._starting.add(key)
        record = reserved
        try:
            try:
                self.net.apply([s for s in steps if not isinstance(s, WriteNetnsFile)])
                # As a kubelet: the network plugins run once the sandbox exists, before any container.
                self.cni.add(record, str(self.net.netns_path(record.netns)))
                for container in pod.first_containers():
                    record = self._start_container(record, node, container)
            except BaseException:
                self._abandon_pod(key, reserved, record)
                raise
            self._commit_pod(key, reserved, record)
        finally:
            self._starting.discard(key)
        log.info("pod added", pod=key, node=node.name, ip=record.ip, netns=record.netns)
        return record.ip

    def _abandon_pod(self, key: str, reserved: PodRecord, made: PodRecord) -> None:
        """A pod start failed halfway: remove what it made and its reservation (if still its own)."""
        with self._state.lock():
            self._remove_pod_objects(made)
            state = self._state.load()
            if state is not None and state.pods.get(key) == reserved:
                self._state.save(_without_pod(state, key))

    def _commit_pod(self, key: str, reserved: PodRecord, made: PodRecord) -> None:
        """Record the started pod's processes over its reservation. If the reservation is gone (the pod
        was removed, or the cluster went down, while it started), what was made is removed and the
        start fails."""
        with self._state.lock():
            state = self._state.load()
            current = None if state is None or state.phase != "up" else state.pods.get(key)
            if state is not None and current == reserved:
                self._state.save(_with_pod(state, key, made))
                return
            if current is None:
                self._remove_pod_objects(made)
            else:  # a newer pod of that name holds the netns: stop only what this start ran
                self.procs.stop_all([*made.container_processes().values()])
        if state is None or state.phase != "up":
            raise ClusterNotUp(str(self.directory.parent))
        raise ClusterError(f"pod {key} was removed while it was starting")

    def remove_pod(self, name: str, namespace: str, *, grace: float | None = None) -> None:
        """Remove the pod as a kubelet does, holding the state lock only to mark and to drop it (several
        threads may remove pods at once): (1) under the lock, mark it terminating and take its address
        out of every Service's endpoints (reprogrammed before anything stops, so no new connection goes
        to it); its record, so its address and names, stays until (3); (2) outside the lock, stop its
        containers (SIGTERM to each process group, one shared grace period: ``grace`` seconds, default the
        pod's ``terminationGracePeriodSeconds``; 0: SIGKILL at once), run the CNI
        DEL, delete its netns (the veth and node route go with it) and files; (3) under the lock, drop
        its record. A pod another thread of this object is removing is left to that removal; one
        marked terminating by a removal that did not finish (a crash) is removed afresh."""
        key = object_key(namespace, name)
        with self._state.lock():
            state = self._require_up()
            record = state.pods.get(key)
            if record is None:
                raise PodNotFound(namespace, name)
            with self._removing_guard:
                if key in self._removing:
                    return
                self._removing.add(key)
            try:
                marked = msgspec.structs.replace(record, terminating=True)
                state = self._prune_endpoints(_with_pod(state, key, marked), record.ip)
                self._state.save(state)
            except BaseException:
                self._forget_removal(key)
                raise
        try:
            self._remove_pod_objects(record, grace)
            with self._state.lock():
                state = self._state.load()
                if state is not None and state.phase == "up" and state.pods.get(key) == marked:
                    # Pruned again: a Service written meanwhile never lists a terminating pod, but an
                    # older writer's list is not trusted with an address about to be handed out anew.
                    self._state.save(self._prune_endpoints(_without_pod(state, key), record.ip))
        finally:
            self._forget_removal(key)
        log.info("pod removed", pod=key)

    def _forget_removal(self, key: str) -> None:
        with self._removing_guard:
            self._removing.discard(key)

    def _prune_endpoints(self, state: ClusterState, ip: str) -> ClusterState:
        """``state`` with ``ip`` in no Service's endpoints, the nodes' rules and hosts files reprogrammed
        if that changed anything (terminating pods get no hosts file: their netns is going)."""
        pruned = {
            k: msgspec.structs.replace(s, endpoints=tuple(e for e in s.endpoints if e != ip))
            for k, s in state.services.items()
        }
        if pruned == state.services:
            return state
        self.net.apply(plan_services(build_layout(state.spec), _live_pods(state), list(pruned.values())))
        return msgspec.structs.replace(state, services=pruned)

    def restart_pod_process(self, name: str, namespace: str) -> PodRecord:
        """Start the pod's first app container again (see ``start_container``)."""
        record = self.find_pod(name, namespace)
        if record is None:
            raise PodNotFound(namespace, name)
        apps = record.spec.app_containers()
        return self.start_container(name, namespace, apps[0].name) if apps else record

    def start_container(self, name: str, namespace: str, container: str) -> PodRecord:
        """Start one container's process in the pod's existing netns (the next init container, the app
        containers once initialised, or a restart: same IP, same sandbox); returns the updated record.
        A container whose process still runs, or that has no command, is left as it is."""
        with self._state.lock():
            state = self._require_up()
            key = object_key(namespace, name)
            record = state.pods.get(key)
            if record is None:
                raise PodNotFound(namespace, name)
            if record.terminating:
                return record  # its containers are being stopped: none starts again
            spec = record.spec.container(container)
            if spec is None:
                raise ClusterError(f"pod {key} has no container {container!r}")
            current = record.container_processes().get(container)
            if not spec.command or (current is not None and self.procs.is_running(current)):
                return record
            node = build_layout(state.spec).find_node(record.spec.node)
            if node is None:
                raise UnknownNode(record.spec.node, [])
            record = self._start_container(record, node, spec)
            self._state.save(_with_pod(state, key, record))
            log.info("container started", pod=key, container=container, restart=current is not None)
            return record

    def layout(self) -> ClusterLayout:
        """Names and addresses of the running cluster's fabric and nodes."""
        return build_layout(self._require_up().spec)

    def pods(self) -> list[PodRecord]:
        state = self._state.load()
        return [] if state is None else [state.pods[k] for k in sorted(state.pods)]

    def find_pod(self, name: str, namespace: str) -> PodRecord | None:
        state = self._state.load()
        return None if state is None else state.pods.get(object_key(namespace, name))

    def exec_command(
        self, name: str, namespace: str, argv: Sequence[str], container: str | None = None
    ) -> ExecCommand:
        """How to run ``argv`` inside the pod as ``container`` (None: the first app container) runs:
        in its netns (with its /etc/hosts), as its user and group, with its env and workingDir ("/").
        A pod without containers (a netns only) runs it as root with the pod's base environment."""
        state = self._require_up()
        key = object_key(namespace, name)
        record = state.pods.get(key)
        if record is None:
            raise PodNotFound(namespace, name)
        spec = record.spec
        chosen = (
            spec.container(container) if container is not None else next(iter(spec.app_containers()), None)
        )
        if container is not None and chosen is None:
            names = [c.name for c in (*spec.init_containers, *spec.app_containers())]
            raise ClusterError(
                f"pod {key} has no container {container!r} (containers: {', '.join(names) or 'none'})"
            )
        node = build_layout(state.spec).find_node(spec.node)
        enter = [self.net.ip_tool, "netns", "exec", record.netns]
        if chosen is not None and (chosen.run_as_user is not None or chosen.run_as_group is not None):
            enter += as_user_argv(f"exec in pod {key}", chosen.run_as_user, chosen.run_as_group)
        env = self._pod_env(spec, node, record.ip, chosen) if node is not None else dict(os.environ)
        return ExecCommand(
            argv=[*enter, *argv], env=env, cwd=(chosen.working_dir if chosen is not None else "") or "/"
        )

    def exec_argv(
        self, name: str, namespace: str, argv: Sequence[str], container: str | None = None
    ) -> list[str]:
        """The command line that runs ``argv`` inside the pod as the container's user (for callers that
        keep the terminal; ``exec_command`` also gives the container's env and workingDir)."""
        return self.exec_command(name, namespace, argv, container).argv

    def exec(
        self,
        name: str,
        namespace: str,
        argv: Sequence[str],
        *,
        timeout: float = EXEC_TIMEOUT_S,
        stdin: str | None = None,
        container: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the pod as ``container`` (None: its first app container) runs
        (``exec_command``) and collect its exit code and output."""
        command = self.exec_command(name, namespace, argv, container)
        try:
            done = subprocess.run(
                command.argv,
                input=stdin,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
                env=command.env,
                cwd=command.cwd,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterError(
                f"command in pod {namespace}/{name} did not finish within {timeout:g} s: {argv}"
            ) from e
        return ExecResult(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)

    # --- services -------------------------------------------------------------------------------------

    def set_service(
        self,
        name: str,
        namespace: str,
        vip: str | None,
        ports: Sequence[ServicePort],
        endpoints: Sequence[str],
    ) -> str:
        """Create or replace a service's VIP DNAT and hosts entries; ``vip=None`` keeps or allocates one."""
        source = f"service {namespace}/{name}"
        for path, value in (("name", name), ("namespace", namespace)):
            problem = name_problem(value, label=True)
            if problem:
                raise InvalidClusterSpec(source, path, problem)
        seen: set[tuple[int, str]] = set()
        for i, port in enumerate(ports):
            if (port.port, port.protocol) in seen:
                raise InvalidClusterSpec(source, f"ports[{i}]", f"{port.port}/{port.protocol} listed twice")
            seen.add((port.port, port.protocol))
        for i, ip in enumerate(endpoints):
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidClusterSpec(
                    source, f"endpoints[{i}]", f"{ip!r} is not an IPv4 address"
                ) from None
        with self._state.lock():
            state = self._require_up()
            layout = build_layout(state.spec)
            key = object_key(namespace, name)
            existing = state.services.get(key)
            taken = [s.vip for k, s in state.services.items() if k != key]
            if vip is None:
                vip = existing.vip if existing is not None else allocate_vip(layout, taken)
            else:
                check_vip(layout, vip, taken)
            # A terminating pod gets no new traffic (its address is still its own until it is gone).
            leaving = {p.ip for p in state.pods.values() if p.terminating}
            record = ServiceRecord(
                name=name,
                namespace=namespace,
                vip=vip,
                ports=tuple(ports),
                endpoints=tuple(ip for ip in dict.fromkeys(endpoints) if ip not in leaving),
            )
            if record == existing:
                return vip
            services = {**state.services, key: record}
            self._apply_services(layout, state, services)
            self._state.save(msgspec.structs.replace(state, services=services))
            log.info("service set", service=key, vip=vip, endpoints=len(record.endpoints))
            return vip

    def remove_service(self, name: str, namespace: str) -> None:
        with self._state.lock():
            state = self._require_up()
            key = object_key(namespace, name)
            if key not in state.services:
                raise ServiceNotFound(namespace, name)
            services = {k: s for k, s in state.services.items() if k != key}
            self._apply_services(build_layout(state.spec), state, services)
            self._state.save(msgspec.structs.replace(state, services=services))

    def services(self) -> list[ServiceRecord]:
        state = self._state.load()
        return [] if state is None else [state.services[k] for k in sorted(state.services)]

    def _apply_services(
        self, layout: ClusterLayout, state: ClusterState, services: Mapping[str, ServiceRecord]
    ) -> None:
        try:
            self.net.apply(plan_services(layout, _live_pods(state), list(services.values())))
        except ClusterError:
            # nft is atomic per node but not across nodes: put back what the other nodes had.
            self.net.apply(plan_services(layout, _live_pods(state), list(state.services.values())))
            raise

    # --- mesh components ------------------------------------------------------------------------------

    def start_component(
        self, name: str, netns: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ProcessRecord:
        """Start a mesh process (istiod_lite in the fabric, ztunnel/node agent in a node; ``netns=""``: on
        the host, the kubelet) with its log in ``logs/<name>.log``; a running component of that name is
        left alone and returned."""
        problem = name_problem(name, label=False)
        if problem:
            raise InvalidClusterSpec(f"component {name}", "name", problem)
        with self._state.lock():
            state = self._require_up()
            layout = build_layout(state.spec)
            known = {*layout.netns_names, *(p.netns for p in state.pods.values())}
            if netns and netns not in known:
                raise ClusterError(
                    f"component {name}: {netns} is not a namespace of this cluster ({', '.join(sorted(known))})"
                )
            current = state.processes.get(name)
            if current is not None and self.procs.is_running(current):
                return current
            record = self.procs.start(name, netns, argv, log_name=name, env=env)
            self._state.save(msgspec.structs.replace(state, processes={**state.processes, name: record}))
            return record

    def restart_component(
        self,
        replacing: ProcessRecord,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> ProcessRecord | None:
        """Start a component again in place of its dead process ``replacing`` (same name, netns and log;
        ``argv``/``env`` as it was started with). None when its record no longer names that process:
        it was stopped on purpose or started again by someone else meanwhile (never a second copy).
        ``ClusterBusy`` after ``lock_timeout``; ``ClusterNotUp`` once the cluster is going down."""
        with self._state.lock(timeout=lock_timeout):
            state = self._require_up()
            current = state.processes.get(replacing.name)
            same = current is not None and (current.pid, current.start_ticks) == (
                replacing.pid,
                replacing.start_ticks,
            )
            if current is None or not same:
                return None
            if self.procs.is_running(current):
                return current
            record = self.procs.start(current.name, current.netns, argv, log_name=current.name, env=env)
            processes = {**state.processes, current.name: record}
            self._state.save(msgspec.structs.replace(state, processes=processes))
            return record

    def components(self) -> dict[str, ProcessRecord]:
        """Every recorded component's process, running or not; ``ClusterNotUp`` unless the cluster is up."""
        return dict(self._require_up().processes)

    def find_component(self, name: str) -> ProcessRecord | None:
        """The component's process, if it is recorded and running."""
        state = self._state.load()
        record = None if state is None else state.processes.get(name)
        return record if record is not None and self.procs.is_running(record) else None

    def stop_component(self, name: str) -> bool:
        with self._state.lock():
            state = self._require_up()
            record = state.processes.get(name)
            if record is None:
                return False
            stopped = self.procs.stop(record)
            self.procs.remove_pidfile(name)
            self._state.save(
                msgspec.structs.replace(
                    state, processes={k: v for k, v in state.processes.items() if k != name}
                )
            )
            return stopped

    def container_log_path(self, record: PodRecord, container: str) -> Path:
        """The log file of one container of a pod (``<log>.previous``: its run before the last restart)."""
        return self.procs.log_path(container_log_name(record.spec, container))

    def log_path(self, component: str) -> Path:
        """The log of a component (``istiod``, ``ztunnel-node-1``) or pod (``<ns>-<name>`` or ``<ns>/<name>``)."""
        log_dir = self.procs.log_dir
        known = sorted(p.stem for p in log_dir.glob("*.log")) if log_dir.is_dir() else []
        stem = component.replace("/", "-")
        if stem not in known:
            raise UnknownComponent(component, known)
        return log_dir / f"{stem}.log"

    # --- internals ------------------------------------------------------------------------------------

    def _require_up(self) -> ClusterState:
        state = self._state.load()
        if state is None or state.phase != "up":
            raise ClusterNotUp(str(self.directory.parent))
        return state

    def _start_container(self, record: PodRecord, node: NodeLayout, container: ContainerSpec) -> PodRecord:
        """Start one container's process (none for a container without command); the updated record.
        A container started before gets a fresh log, the previous run's kept as ``<log>.previous``."""
        if not container.command:
            return record
        pod = record.spec
        key = object_key(pod.namespace, pod.name)
        log_name = container_log_name(pod, container.name)
        if container.name in record.container_processes():
            current = self.procs.log_path(log_name)
            try:
                os.replace(current, current.with_name(current.name + PREVIOUS_LOG_SUFFIX))
            except FileNotFoundError:
                pass
        process = self.procs.start(
            f"pod/{key}" if log_name == _pod_log_name(pod) else f"pod/{key}/{container.name}",
            record.netns,
            container.command,
            log_name=log_name,
            env=self._pod_env(pod, node, record.ip, container),
            cwd=container.working_dir or "/",
            user=container.run_as_user,
            group=container.run_as_group,
        )
        processes = {**record.container_processes(), container.name: process}
        apps = pod.app_containers()
        first = apps[0].name if apps else None
        return msgspec.structs.replace(
            record, processes=processes, process=process if container.name == first else record.process
        )

    def _pod_env(
        self, pod: PodSpec, node: NodeLayout, ip: str, container: ContainerSpec | None = None
    ) -> dict[str, str]:
        # A clean environment as a container gets one (not ambientctl's), plus downward-API style facts.
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
            "POD_NAME": pod.name,
            "POD_NAMESPACE": pod.namespace,
            "POD_IP": ip,
            "NODE_NAME": node.name,
            "HOST_IP": node.ip,
            "SERVICE_ACCOUNT": pod.service_account,
            **({"POD_UID": pod.uid} if pod.uid else {}),
            # Istio's injected paths; the kubelet writes the files before the pod starts (kubelet.py).
            ISTIO_TOKEN_PATH: str(self.pod_dir(pod.namespace, pod.name) / TOKEN_FILE),
            ISTIO_ROOT_CERT_PATH: str(self.pod_dir(pod.namespace, pod.name) / ROOT_CERT_FILE),
        }
        if container is not None and container.run_as_user:
            env["HOME"] = "/"  # as for a user an image's /etc/passwd does not name
        # The manifest's env wins, as a container's own env does.
        env.update(pod.env if container is None else container.env)
        from_status = pod.env_from_status if container is None else container.env_from_status
        for name, field in from_status.items():
            env[name] = ip if field == "podIP" else node.ip
        return env

    def pod_dir(self, namespace: str, name: str) -> Path:
        return pod_files_dir(self.directory, namespace, name)

    def _remove_pod_objects(self, record: PodRecord, grace: float | None = None) -> None:
        """Stop the pod's processes (SIGTERM, ``grace`` seconds, default its spec's
        ``terminationGracePeriodSeconds``, then SIGKILL), then its CNI DEL, netns and files."""
        running = {*record.container_processes().values(), *([record.process] if record.process else [])}
        if running:
            wait = record.spec.termination_grace_s if grace is None else grace
            self.procs.stop_all(list(running), grace=wait)
        shutil.rmtree(self.pod_dir(record.spec.namespace, record.spec.name), ignore_errors=True)
        self.procs.remove_pidfile(_pod_log_name(record.spec))
        for container in (*record.spec.init_containers, *record.spec.app_containers()):
            self.procs.remove_pidfile(container_log_name(record.spec, container.name))
        path = self.net.netns_path(record.netns)
        if self.net.netns_exists(record.netns):
            self.cni.delete(record, str(path))  # never raises: teardown must go on
        self.procs.sweep_netns([path])
        self.net.delete_netns(record.netns)
        self.net.remove_netns_files(record.netns)

    def _teardown(self, prefix: str, state: ClusterState | None) -> DownReport:
        records = list(self.procs.pidfile_records())
        recorded_netns: set[str] = set()
        if state is not None:
            records += [p.process for p in state.pods.values() if p.process is not None]
            records += [proc for p in state.pods.values() for proc in p.processes.values()]
            records += list(state.processes.values())
            recorded_netns = {p.netns for p in state.pods.values()} | set(
                build_layout(state.spec).netns_names
            )
        stopped = [r.pid for r in self.procs.stop_all(records)]
        names = sorted(
            set(self.net.list_netns(prefix)) | {n for n in recorded_netns if self.net.netns_exists(n)}
        )
        stopped += self.procs.sweep_netns([self.net.netns_path(n) for n in names])
        removed = [n for n in names if self.net.delete_netns(n)]
        for name in recorded_netns:
            self.net.remove_netns_files(name)
        self.net.sweep_netns_files(prefix)
        links = self.net.host_links(prefix)
        for link in links:
            self.net.delete_host_link(link)
        self.procs.clear_pidfiles()
        shutil.rmtree(self.nodes_dir, ignore_errors=True)
        shutil.rmtree(self.directory / PODS_DIR, ignore_errors=True)
        log.info("cluster removed", prefix=prefix, netns=len(removed), processes=len(stopped))
        return DownReport(
            had_state=state is not None,
            netns_removed=tuple(removed),
            processes_stopped=tuple(sorted(set(stopped))),
            host_links_removed=tuple(links),
        )

    def _process_statuses(self, state: ClusterState) -> tuple[ProcessStatus, ...]:
        """Each component's process, with its restarts and last exit from the supervisor's report (if the
        recorded supervisor wrote one)."""
        supervisor = state.processes.get(SUPERVISOR_COMPONENT)
        report = None if supervisor is None else read_report(self.procs.run_dir, supervisor.pid)
        health = report.components if report is not None else {}
        return tuple(
            _process_status(p, self.procs.is_running(p), health.get(name))
            for name, p in sorted(state.processes.items())
        )

    def _status(self, state: ClusterState) -> ClusterStatus:
        layout = build_layout(state.spec)
        problems: list[str] = []
        nodes = []
        for node in layout.nodes:
            present = self.net.netns_exists(node.netns)
            if not present:
                problems.append(f"node netns {node.netns} is missing")
            nodes.append(
                NodeStatus(
                    name=node.name, netns=node.netns, ip=node.ip, pod_cidr=node.pod_cidr, present=present
                )
            )
        if not self.net.netns_exists(layout.fabric_netns):
            problems.append(f"fabric netns {layout.fabric_netns} is missing")
        pods = []
        for key in sorted(state.pods):
            rec = state.pods[key]
            present = self.net.netns_exists(rec.netns)
            if not present:
                problems.append(f"pod {key} netns {rec.netns} is missing")
            proc = rec.process
            pods.append(
                PodStatus(
                    name=rec.spec.name,
                    namespace=rec.spec.namespace,
                    node=rec.spec.node,
                    ip=rec.ip,
                    netns=rec.netns,
                    present=present,
                    pid=proc.pid if proc else None,
                    running=self.procs.is_running(proc) if proc else None,
                    log=proc.log if proc else None,
                )
            )
        services = tuple(
            ServiceStatus(name=s.name, namespace=s.namespace, vip=s.vip, ports=s.ports, endpoints=s.endpoints)
            for _, s in sorted(state.services.items())
        )
        processes = self._process_statuses(state)
        phase: Phase = state.phase
        if phase == "up" and problems:
            phase = "degraded"
        return ClusterStatus(
            phase=phase,
            prefix=state.spec.prefix,
            state_dir=str(self.directory),
            istiod_address=layout.istiod_ip,
            nodes=tuple(nodes),
            pods=tuple(pods),
            services=services,
            processes=processes,
            problems=tuple(problems),
        )


def _process_status(record: ProcessRecord, running: bool, health: ComponentHealth | None) -> ProcessStatus:
    state = "Running" if running else "Exited"
    if health is not None and not running and health.state == "BackOff":
        state = "BackOff"
    return ProcessStatus(
        name=record.name,
        netns=record.netns,
        pid=record.pid,
        running=running,
        log=record.log,
        state=state,
        restarts=health.restarts if health else 0,
        last_exit=health.last_exit if health else None,
        restart_at=health.restart_at if health and state == "BackOff" else None,
    )


def _describe(spec: ClusterSpec) -> str:
    n = spec.networking
    return f"{spec.nodes} node(s), prefix {spec.prefix!r}, nodes {n.node_subnet}, pods {n.pod_subnet}, services {n.service_subnet}"


def _pod_log_name(pod: PodSpec) -> str:
    return f"{pod.namespace}-{pod.name}"


PREVIOUS_LOG_SUFFIX = ".previous"


def container_log_name(pod: PodSpec, container: str) -> str:
    """A container's log (and pidfile) name: ``<ns>-<name>`` for the first app container (as a
    one-container pod's always was), ``<ns>-<name>~<container>`` for the others ('~' is in no
    Kubernetes name, so two pods' names never meet)."""
    apps = pod.app_containers()
    if apps and apps[0].name == container:
        return _pod_log_name(pod)
    return f"{_pod_log_name(pod)}~{container}"


class _ThreadedStateFile(StateFile):
    """The state file whose lock threads of this process also take in turn, waiting on a thread lock
    (a ``flock`` belongs to an open file, so two threads would otherwise poll each other out)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._threads = threading.Lock()

    @contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        if not self._threads.acquire(timeout=timeout):
            raise ClusterBusy(str(self.directory / "lock"), timeout)
        try:
            with super().lock(timeout):
                yield
        finally:
            self._threads.release()


def reserve_pod(
    state: ClusterState, layout: ClusterLayout, node: NodeLayout, pod: PodSpec
) -> tuple[ClusterState, PodRecord]:
    """``state`` with ``pod`` recorded on ``node`` (no process yet), and that record: the lowest address
    of the node that no recorded pod holds. Pods still starting are recorded too, so two starts never
    get one address; an address comes free when its pod's record goes, so a terminating pod's (still
    recorded until it is gone) is never given to another. Raises ``PodTerminating`` while a pod of that
    name is terminating, ``AddressExhausted`` when the node has none left, ``NameCollision`` when another
    pod's netns or veth has the same name."""
    key = object_key(pod.namespace, pod.name)
    current = state.pods.get(key)
    if current is not None and current.terminating:
        raise PodTerminating(pod.namespace, pod.name)
    others = {k: p for k, p in state.pods.items() if k != key}
    used = [p.ip for p in others.values() if p.spec.node == node.name]
    record = pod_record(layout, node, pod, allocate_pod_ip(node, used))
    for other_key, other in others.items():
        if record.netns == other.netns or record.host_veth == other.host_veth:
            raise NameCollision(f"pod {key}", f"pod {other_key}")
    return _with_pod(state, key, record), record


def _with_pod(state: ClusterState, key: str, record: PodRecord) -> ClusterState:
    return msgspec.structs.replace(state, pods={**state.pods, key: record})


def _live_pods(state: ClusterState) -> list[PodRecord]:
    """The recorded pods that are not terminating (whose netns stays)."""
    return [p for p in state.pods.values() if not p.terminating]


def _without_pod(state: ClusterState, key: str) -> ClusterState:
    return msgspec.structs.replace(state, pods={k: v for k, v in state.pods.items() if k != key})
