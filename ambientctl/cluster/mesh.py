"""The mesh on the local cluster: istiod_lite, a node agent and a ztunnel per node, and the kubelet.

``Mesh(cluster).start()`` brings them up in dependency order, each a real process started through
``Cluster.start_component`` (logs in ``<cluster dir>/logs/<component>.log``), and waits for each to be
ready, with deadlines, by probing it where it listens (the HTTP probe runs inside the component's
network namespace, from a thread that entered it):
1. ``istiod`` in the fabric netns on ``<istiod ip>:15012`` (xDS + CA), ``:15011`` (the CA for
   service-account tokens: waypoint pods) and ``:15014`` (``/ready``); the waypoint pods it makes are
   told ``XDS_ADDRESS=<istiod ip>:15012`` and ``CA_ADDRESS=<istiod ip>:15011`` (the cluster network
   routes pods to the fabric);
2. per node, a node credential (``istiod-lite node-credential``) in ``nodes/<node>/credential``;
3. per node, ``node-agent-<node>`` in the node netns (``/readyz`` on :15014), serving ZDS on
   ``nodes/<node>/zds.sock`` and plugin events on ``nodes/<node>/cni.sock``;
4. per node, ``ztunnel-<node>`` (``PROXY_MODE=shared``) in the node netns, connected to istiod_lite and
   to its node agent (``/healthz/ready`` on :15021 once xDS synced and the agent's snapshot arrived);
5. per node, the CNI config ``nodes/<node>/net.d/10-ambient.conflist`` (from now on every new pod's
   sandbox goes through ``ambient-cni``), then the ``kubelet`` on the host (ready after its first sync).
``cluster up`` does not call ``start`` itself: ``start_supervised`` starts the cluster's supervisor
(``supervisor.py``, the component ``supervisor`` on the host), which calls ``start`` so that every
component is its child, then restarts any that dies with the same ``Command`` (kept in
``Mesh.commands``); ``stop`` stops the supervisor first. A component already running is left alone, so
``start`` is idempotent. A component that exits or is not ready in time raises a ``ClusterError``
quoting the end of its log. The pure pieces (file layout, command lines and environments) are
table-tested. ``stop`` reverses the order; ``Cluster.down`` alone also removes everything (it stops every
recorded process and deletes ``nodes/``).
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from meshcore.aio.netns import NetnsError, NetnsHandle, make_marked_socket

from .cluster import Cluster
from .cni import build_conflist, node_conf_dir
from .component import component_argv
from .errors import ClusterError, UnknownNode
from .kubelet_main import ready_path
from .plan import ClusterLayout, NodeLayout
from .state import ProcessRecord
from .supervision import read_report

log = structlog.get_logger("ambientctl.cluster.mesh")

ISTIOD = "istiod"
KUBELET = "kubelet"
SUPERVISOR = "supervisor"
XDS_PORT = 15012
TOKEN_CA_PORT = 15011
ISTIOD_MONITORING_PORT = 15014
AGENT_MONITORING_PORT = 15014
ZTUNNEL_ADMIN_PORT = 15000
ZTUNNEL_STATS_PORT = 15020
ZTUNNEL_READINESS_PORT = 15021
CONFLIST_NAME = "10-ambient.conflist"
CNI_PLUGIN = "ambient-cni"
CNI_NETWORK = "ambient-local"
READY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 2.0
POLL_S = 0.1
# sun_path is 108 bytes; sockets under the state directory must fit.
MAX_SOCKET_PATH = 107
LOG_TAIL_LINES = 20
# How long `cluster up` waits for the supervisor to report the mesh up, in units of ready_timeout (it
# starts istiod, the node agents, the ztunnels and the kubelet one step after another).
SUPERVISED_START_STEPS = 5


class ComponentFailed(ClusterError):
    """A mesh process exited or did not become ready in time; the message quotes its log."""

    def __init__(self, name: str, problem: str, log_path: str, tail: str) -> None:
        quoted = ("\n" + tail) if tail else " (its log is empty)"
        super().__init__(f"{name} {problem}; see `ambientctl cluster logs {name}` ({log_path}):{quoted}")
        self.component = name


@dataclass(frozen=True, slots=True)
class MeshSettings:
    ready_timeout: float = READY_TIMEOUT_S
    log_level: str = "info"
    # ztunnel's drain deadline: short, so `cluster down` and restarts are quick.
    drain_duration: str = "2s"
    # Seconds an enrolled pod's CNI ADD waits for the node agent (the plugin's event_timeout).
    cni_event_timeout: float = 30.0
    # Settings added to every component's environment, e.g. ``SECRET_TTL`` (ztunnel) or
    # ``MAX_WORKLOAD_CERT_TTL`` (istiod-lite); what a component's command sets itself wins over them.
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """A node's mesh files under ``<cluster dir>/nodes/<node>/`` (the node's /etc/cni, /var/run ...)."""

    directory: Path
    credential_dir: Path  # key.pem (0600), cert-chain.pem, root-cert.pem: the node's ztunnel credential
    zds_socket: Path  # the node agent serves ZDS here; ztunnel connects (INPOD_UDS)
    event_socket: Path  # the CNI plugin tells the node agent about pods here
    netns_map: Path  # the node agent's pod -> netns record
    conf_dir: Path  # CNI configuration directory (net.d)


@dataclass(frozen=True, slots=True)
class Command:
    """A component's command line, network namespace ("" = host) and environment."""

    name: str
    netns: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


# --- pure -----------------------------------------------------------------------------------------------


def ztunnel_name(node: str) -> str:
    return f"ztunnel-{node}"


def agent_name(node: str) -> str:
    return f"node-agent-{node}"


def node_files(nodes_dir: Path, node: str) -> NodeFiles:
    d = nodes_dir / node
    return NodeFiles(
        directory=d,
        credential_dir=d / "credential",
        zds_socket=d / "zds.sock",
        event_socket=d / "cni.sock",
        netns_map=d / "pods.json",
        conf_dir=node_conf_dir(nodes_dir, node),
    )


def base_env(
    environ: Mapping[str, str], python: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What every component inherits: a clean environment, not the caller's (as a DaemonSet's pod),
    plus ``extra`` (the operator's settings, ``MeshSettings.extra_env``).

    The mesh's Python environment comes first on PATH, so pods the kubelet starts can run
    ``python -m ambientctl.apps.echo`` (or any console script of the mesh) by name."""
    keep = ("HOME", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: environ[k] for k in keep if k in environ}
    path = environ.get("PATH", os.defpath)
    head = os.path.dirname(python)
    # The supervisor inherits this environment and computes it again: the same PATH, not a longer one.
    env["PATH"] = path if path.split(os.pathsep)[0] == head else os.pathsep.join([head, path])
    env["LANG"] = "C.UTF-8"
    env.update(extra or {})
    return env


def istiod_command(
    python: str, state_dir: Path, layout: ClusterLayout, env: Mapping[str, str], log_level: str
) -> Command:
    return Command(
        ISTIOD,
        layout.fabric_netns,
        (
            python, "-m", "istiod_lite",
            "--state-dir", str(state_dir),
            "--xds-address", f"{layout.istiod_ip}:{XDS_PORT}",
            "--token-ca-address", f"{layout.istiod_ip}:{TOKEN_CA_PORT}",
            "--monitoring-address", f"{layout.istiod_ip}:{ISTIOD_MONITORING_PORT}",
            "--log-level", log_level,
        ),
        {
            **env,
            # What the waypoint controller tells waypoint pods: istiod on the cluster network.
            "WAYPOINT_XDS_ADDRESS": f"{layout.istiod_ip}:{XDS_PORT}",
            "WAYPOINT_CA_ADDRESS": f"{layout.istiod_ip}:{TOKEN_CA_PORT}",
        },
    )  # fmt: skip


def credential_argv(python: str, state_dir: Path, node: str, out: Path) -> tuple[str, ...]:
    return (
        python,
        "-m",
        "istiod_lite",
        "--state-dir",
        str(state_dir),
        "node-credential",
        node,
        "--out",
        str(out),
    )


def agent_command(
    python: str, state_dir: Path, node: NodeLayout, files: NodeFiles, env: Mapping[str, str], log_level: str
) -> Command:
    return Command(
        agent_name(node.name),
        node.netns,
        (python, "-m", "ztunnel.cni.agent"),
        {
            **env,
            "NODE_NAME": node.name,
            "AMBIENT_STATE_DIR": str(state_dir),
            "INPOD_UDS": str(files.zds_socket),
            "CNI_EVENT_ADDRESS": str(files.event_socket),
            "NETNS_MAP_PATH": str(files.netns_map),
            "MONITORING_ADDR": f"127.0.0.1:{AGENT_MONITORING_PORT}",
            "LOG_LEVEL": log_level,
        },
    )


def ztunnel_command(
    python: str,
    layout: ClusterLayout,
    node: NodeLayout,
    files: NodeFiles,
    env: Mapping[str, str],
    settings: MeshSettings,
) -> Command:
    xds = f"{layout.istiod_ip}:{XDS_PORT}"
    return Command(
        ztunnel_name(node.name),
        node.netns,
        (python, "-m", "ztunnel"),
        {
            **env,
            "NODE_NAME": node.name,
            "PROXY_MODE": "shared",
            "XDS_ADDRESS": xds,
            "CA_ADDRESS": xds,
            "NODE_CREDENTIAL_DIR": str(files.credential_dir),
            "INPOD_UDS": str(files.zds_socket),
            "ADMIN_ADDR": f"127.0.0.1:{ZTUNNEL_ADMIN_PORT}",
            "STATS_ADDR": f"0.0.0.0:{ZTUNNEL_STATS_PORT}",
            "READINESS_ADDR": f"0.0.0.0:{ZTUNNEL_READINESS_PORT}",
            "SOCKS5_ADDR": "",
            "DRAIN_DURATION": settings.drain_duration,
            "LOG_LEVEL": settings.log_level,
        },
    )


def kubelet_command(
    python: str, state_dir: Path, prefix: str, env: Mapping[str, str], log_level: str
) -> Command:
    return Command(
        KUBELET,
        "",  # on the host: the namespaces it creates must be visible to everyone (see kubelet_main)
        component_argv(python, "ambientctl.cluster.kubelet_main", state_dir, prefix, log_level),
        dict(env),
    )


def supervisor_command(
    python: str, state_dir: Path, prefix: str, env: Mapping[str, str], log_level: str
) -> Command:
    return Command(
        SUPERVISOR,
        "",  # on the host, like the kubelet it starts
        component_argv(python, "ambientctl.cluster.supervisor", state_dir, prefix, log_level),
        dict(env),
    )


def cni_conflist(state_dir: Path, files: NodeFiles, event_timeout: float) -> bytes:
    plugin = {
        "type": CNI_PLUGIN,
        "state_dir": str(state_dir),
        "cni_event_address": str(files.event_socket),
        "event_timeout": event_timeout,
    }
    return build_conflist(CNI_NETWORK, [plugin])


def socket_path_problem(path: Path) -> str | None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return f"unix socket path {path} is longer than {MAX_SOCKET_PATH} bytes: use a shorter --state-dir"
    return None


# --- probes ---------------------------------------------------------------------------------------------


class ConnectedHTTP(http.client.HTTPConnection):
    """An HTTP connection over a socket made elsewhere (inside another network namespace)."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._made = sock

    def connect(self) -> None:
        self._made.settimeout(self.timeout)
        self._made.connect((self.host, self.port))
        self.sock = self._made


def http_get_in_netns(
    handle: NetnsHandle, host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT_S
) -> tuple[int, str]:
    """``GET path`` from inside ``handle``'s namespace; (status, body). Raises OSError on failure."""
    sock = handle.run(make_marked_socket, socket.AF_INET, socket.SOCK_STREAM, 0, 0)
    conn = ConnectedHTTP(sock, host, port, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(1 << 20).decode("utf-8", "replace")
    except http.client.HTTPException as e:
        raise OSError(f"bad HTTP answer from {host}:{port}: {e}") from e
    finally:
        conn.close()
        sock.close()


def http_ready(netns_path: str, host: str, port: int, path: str) -> Callable[[], str | None]:
    """A probe: None when ``GET path`` answers 200, else what it answered (for the error message)."""

    def probe() -> str | None:
        try:
            with NetnsHandle.open(netns_path) as handle:
                status, body = http_get_in_netns(handle, host, port, path)
        except (OSError, NetnsError) as e:
            return f"{host}:{port}{path}: {e}"
        return None if status == 200 else f"{host}:{port}{path}: {status} {body.strip()[:300]}"

    return probe


# --- the mesh -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshStatus:
    components: tuple[ProcessRecord, ...]
    istiod_address: str
    # Seconds each step took: ("istiod", 1.2), ("credentials", 0.8), ...
    timings: tuple[tuple[str, float], ...] = ()


class Mesh:
    """The mesh processes of one local cluster (which must be up)."""

    def __init__(
        self,
        cluster: Cluster,
        settings: MeshSettings | None = None,
        *,
        python: str = sys.executable,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.settings = settings or MeshSettings()
        self.python = python
        self.env = base_env(os.environ if environ is None else environ, python, self.settings.extra_env)
        # Every component this Mesh started or found running, with the command it runs: what the
        # supervisor restarts it with (the same argv and environment).
        self.commands: dict[str, Command] = {}

    @property
    def state_dir(self) -> Path:
        return self.cluster.directory.parent

    def files(self, node: str) -> NodeFiles:
        return node_files(self.cluster.nodes_dir, node)

    # -- start / stop ------------------------------------------------------------------------------------

    def start(self) -> MeshStatus:
        """Start every component not running yet, in order, each waited for; idempotent."""
        layout = self.cluster.layout()
        timings: list[tuple[str, float]] = []
        for node in layout.nodes:
            for sock in (self.files(node.name).zds_socket, self.files(node.name).event_socket):
                problem = socket_path_problem(sock)
                if problem:
                    raise ClusterError(problem)

        started = time.monotonic()
        istiod = self._start(
            istiod_command(self.python, self.state_dir, layout, self.env, self.settings.log_level)
        )
        self._wait(
            istiod,
            http_ready(self._path(layout.fabric_netns), layout.istiod_ip, ISTIOD_MONITORING_PORT, "/ready"),
        )
        timings.append((ISTIOD, time.monotonic() - started))

        started = time.monotonic()
        self._credentials(layout)
        timings.append(("node credentials", time.monotonic() - started))

        started = time.monotonic()
        agents = [
            self._start(
                agent_command(
                    self.python, self.state_dir, n, self.files(n.name), self.env, self.settings.log_level
                )
            )
            for n in layout.nodes
        ]
        for node, agent in zip(layout.nodes, agents, strict=True):
            self._wait(
                agent, http_ready(self._path(node.netns), "127.0.0.1", AGENT_MONITORING_PORT, "/readyz")
            )
        timings.append(("node agents", time.monotonic() - started))

        started = time.monotonic()
        ztunnels = [self.start_ztunnel(n.name, wait=False) for n in layout.nodes]
        for node, zt in zip(layout.nodes, ztunnels, strict=True):
            self._wait(zt, self._ztunnel_probe(node))
        timings.append(("ztunnels", time.monotonic() - started))

        started = time.monotonic()
        for node in layout.nodes:
            files = self.files(node.name)
            files.conf_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            _write_atomic(
                files.conf_dir / CONFLIST_NAME,
                cni_conflist(self.state_dir, files, self.settings.cni_event_timeout),
            )
        if self._running(KUBELET) is None:
            ready_path(self.cluster).unlink(missing_ok=True)
        kubelet = self._start(
            kubelet_command(self.python, self.state_dir, layout.prefix, self.env, self.settings.log_level)
        )
        self._wait(kubelet, lambda: None if ready_path(self.cluster).exists() else "no first sync yet")
        timings.append((KUBELET, time.monotonic() - started))
        log.info("mesh up", nodes=len(layout.nodes), timings=dict(timings))
        return MeshStatus(
            components=(istiod, *agents, *ztunnels, kubelet),
            istiod_address=f"{layout.istiod_ip}:{XDS_PORT}",
            timings=tuple(timings),
        )

    def start_supervised(self) -> MeshStatus:
        """Start the cluster's supervisor (``supervisor.py``: it runs ``start`` itself, so every component
        is its child, then restarts those that die) and wait until it reports the mesh up; idempotent
        (a running supervisor is left alone). Its failure to start the mesh is raised here."""
        layout = self.cluster.layout()
        supervisor = self._start(
            supervisor_command(self.python, self.state_dir, layout.prefix, self.env, self.settings.log_level)
        )
        run_dir = self.cluster.procs.run_dir
        timeout = self.settings.ready_timeout * SUPERVISED_START_STEPS
        deadline = time.monotonic() + timeout
        while True:
            report = read_report(run_dir, supervisor.pid)
            if report is None and not self.cluster.procs.is_running(supervisor):
                report = read_report(run_dir, supervisor.pid)  # written just before it exited?
                if report is None or report.phase == "starting":
                    raise self._failed(supervisor, "exited before the mesh was up")
            if report is not None and report.phase == "failed":
                raise ClusterError(report.error)
            if report is not None and report.phase == "up":
                break
            if time.monotonic() >= deadline:
                raise self._failed(supervisor, f"did not report the mesh up within {timeout:g} s")
            time.sleep(POLL_S)
        names = component_names([n.name for n in layout.nodes])
        running = [r for r in (self._running(n) for n in names) if r is not None]
        return MeshStatus(
            components=tuple(running),
            istiod_address=f"{layout.istiod_ip}:{XDS_PORT}",
            timings=report.timings,
        )

    def stop(self) -> None:
        """Stop the supervisor (so nothing is restarted) and the kubelet (pods keep running), stop
        sending pods through CNI, then the node components and istiod_lite."""
        layout = self.cluster.layout()
        self.cluster.stop_component(SUPERVISOR)
        self.cluster.stop_component(KUBELET)
        for node in layout.nodes:
            (self.files(node.name).conf_dir / CONFLIST_NAME).unlink(missing_ok=True)
        for node in layout.nodes:
            self.cluster.stop_component(ztunnel_name(node.name))
            self.cluster.stop_component(agent_name(node.name))
        self.cluster.stop_component(ISTIOD)

    def start_ztunnel(self, node: str, *, wait: bool = True) -> ProcessRecord:
        """Start (or find running) the node's ztunnel; with ``wait``, until it is ready."""
        layout = self.cluster.layout()
        found = layout.find_node(node)
        if found is None:
            raise UnknownNode(node, [n.name for n in layout.nodes])
        record = self._start(
            ztunnel_command(self.python, layout, found, self.files(node), self.env, self.settings)
        )
        if wait:
            self._wait(record, self._ztunnel_probe(found))
        return record

    def wait_ztunnel_ready(self, node: str) -> None:
        found = self.cluster.layout().find_node(node)
        record = self._running(ztunnel_name(node))
        if found is None or record is None:
            raise ClusterError(f"no ztunnel runs on node {node!r}")
        self._wait(record, self._ztunnel_probe(found))

    def ztunnel_get(self, node: str, path: str, port: int = ZTUNNEL_ADMIN_PORT) -> tuple[int, str]:
        """``GET path`` on the node's ztunnel (admin by default: /config_dump, /connections ...)."""
        layout = self.cluster.layout()
        found = layout.find_node(node)
        if found is None:
            raise UnknownNode(node, [n.name for n in layout.nodes])
        with NetnsHandle.open(self._path(found.netns)) as handle:
            return http_get_in_netns(handle, "127.0.0.1", port, path)

    # -- internals ---------------------------------------------------------------------------------------

    def _path(self, netns: str) -> str:
        return str(self.cluster.net.netns_path(netns))

    def _ztunnel_probe(self, node: NodeLayout) -> Callable[[], str | None]:
        return http_ready(self._path(node.netns), "127.0.0.1", ZTUNNEL_READINESS_PORT, "/healthz/ready")

    def _running(self, name: str) -> ProcessRecord | None:
        return self.cluster.find_component(name)

    def _start(self, command: Command) -> ProcessRecord:
        record = self.cluster.start_component(command.name, command.netns, command.argv, command.env)
        self.commands[command.name] = command
        return record

    def _wait(self, record: ProcessRecord, probe: Callable[[], str | None]) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        last: str | None = "not probed yet"
        while True:
            if not self.cluster.procs.is_running(record):
                raise self._failed(record, "exited")
            last = probe()
            if last is None:
                return
            if time.monotonic() >= deadline:
                raise self._failed(record, f"not ready after {self.settings.ready_timeout:g} s ({last})")
            time.sleep(POLL_S)

    def _failed(self, record: ProcessRecord, problem: str) -> ComponentFailed:
        return ComponentFailed(record.name, problem, record.log, _tail(Path(record.log), LOG_TAIL_LINES))

    def _credentials(self, layout: ClusterLayout) -> None:
        """Issue each node's ztunnel credential (in parallel; skipped when one is already there)."""
        running: list[tuple[str, subprocess.Popen[bytes]]] = []
        for node in layout.nodes:
            out = self.files(node.name).credential_dir
            if (out / "key.pem").exists() and (out / "cert-chain.pem").exists():
                continue
            out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            argv = credential_argv(self.python, self.state_dir, node.name, out)
            running.append(
                (
                    node.name,
                    subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                )
            )
        for node_name, proc in running:
            try:
                output, _ = proc.communicate(timeout=self.settings.ready_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise ClusterError(
                    f"issuing node {node_name}'s credential took over {self.settings.ready_timeout:g} s"
                ) from None
            if proc.returncode != 0:
                raise ClusterError(
                    f"cannot issue node {node_name}'s credential: {output.decode(errors='replace').strip()[-1000:]}"
                )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def component_names(nodes: Sequence[str]) -> list[str]:
    """Every mesh component of a cluster with these nodes, in start order."""
    return [ISTIOD, *(agent_name(n) for n in nodes), *(ztunnel_name(n) for n in nodes), KUBELET]
