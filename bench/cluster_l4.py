"""Benchmark: the L4 data plane across two nodes of the local cluster — no mesh vs a stunnel pair on the
same path vs the mesh (in-pod ztunnels, HBONE over the node link), in one run.

The cluster (``ambientctl.cluster.testing.MeshCluster``: two node netns joined by a bridge, istiod-lite,
a node agent and a shared-mode ztunnel per node, the kubelet) runs namespace ``bench`` with:
- ``server`` on node-2: the L4 benchmark's server (``bench/l4.py --serve``: echo on 8080, sink on 8081);
- ``client`` on node-1: a sleeper. The measuring client is this process, with its sockets made inside
  the client pod's netns (``socket_in_netns``, unmarked), so they are the pod's own connections: the
  pod's address, its routes, and its redirection once the namespace is enrolled.
Paths, in this order (named as ``bench/l4.py`` names them, whose tables and targets are reused):
- (a) direct, no mesh: the namespace is not enrolled; client pod -> veth -> node-1 -> bridge -> node-2
  -> veth -> server pod, plaintext.
- (b) stunnel pair on the same path: a client-mode stunnel inside the client pod netns (127.0.0.1) and
  a server-mode stunnel inside the server pod netns (mutual TLS 1.3, P-256, as ``bench/l4.py``), so the
  node link carries TLS between the two pods; still not enrolled.
- (c) ztunnel pair, the mesh: ``istio.io/dataplane-mode=ambient`` on the namespace, both pods captured
  live (no restart); the same connection is redirected to node-1's ztunnel inside the client pod,
  carried as HBONE to the server pod's 15008, and delivered by node-2's ztunnel. Checked by node-2's
  ``istio_tcp_connections_opened_total`` growing by at least the measured connections.
Measured per path with ``bench/l4.py``'s own functions: single-stream throughput (best of 3), 1 KiB
request/response p50/p99 on one connection, CPU seconds per 1000 requests of the proxy processes (the
two stunnels; the two ztunnels, which serve every pod of their node). Also reported: the time from the
namespace label write to the first connection of the client pod through the mesh, and from applying a
new pod to the enrolled namespace to it running and captured (the kubelet's whole pod start).

Needs root, nftables and Debian's stunnel4. The cluster and everything started are removed at the end,
also on failure. Never part of the test run.

    .venv/bin/python bench/cluster_l4.py [--quick] [--mib 256] [--round-trips 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import _util as u  # noqa: E402  (bench/ is not a package)
import l4  # noqa: E402

from ambientctl.cluster.mesh import ZTUNNEL_STATS_PORT, ztunnel_name  # noqa: E402
from ambientctl.cluster.testing import (  # noqa: E402
    AMBIENT,
    REDIRECTION,
    MeshCluster,
    namespace,
    sleeper_pod,
    wait_for,
)
from meshcore.aio.netns import NetnsHandle, socket_in_netns  # noqa: E402
from meshcore.logs import configure_logging  # noqa: E402

NS = "bench"
ECHO_PORT, SINK_PORT = 8080, 8081
TLS_ECHO_PORT, TLS_SINK_PORT = 8443, 8444  # the server-side stunnel, in the server pod
LOCAL_ECHO_PORT, LOCAL_SINK_PORT = 18080, 18081  # the client-side stunnel, on the client pod's loopback
START_TIMEOUT = 60.0


def server_pod() -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: server}}}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: server
    image: local
    command: [python, {BENCH / "l4.py"}, --serve, 0.0.0.0, "{ECHO_PORT}", "{SINK_PORT}"]
"""


def netns_connector(handle: NetnsHandle, host: str, port: int) -> u.Connector:
    """Like ``_util.tcp_connector``, but the socket lives in ``handle``'s netns (the client pod), unmarked."""

    def connect() -> socket.socket:
        sock = socket_in_netns(handle, mark=0)
        try:
            sock.settimeout(30)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def wait_port_in(handle: NetnsHandle, host: str, port: int, alive: object = None) -> None:
    """Poll from inside ``handle``'s netns until ``host:port`` accepts a connection."""
    connect = netns_connector(handle, host, port)

    def accepted() -> bool:
        if callable(alive) and not alive():
            raise u.BenchError(f"the process serving {host}:{port} exited")
        try:
            connect().close()
        except OSError:
            return False
        return True

    wait_for(f"{host}:{port} from the client pod", accepted, START_TIMEOUT)


# --- (b) stunnel pair in the pods ---------------------------------------------------------------------


@contextmanager
def stunnel_pair(mc: MeshCluster, client: NetnsHandle, server_ip: str, tmp: Path) -> Iterator[l4.Path_]:
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    if binary is None:
        raise u.BenchError("stunnel is not installed (Debian package stunnel4)")
    l4.write_stunnel_certs(tmp)
    server_conf = l4.stunnel_conf(
        tmp,
        "server",
        {
            "echo": (f"{server_ip}:{TLS_ECHO_PORT}", f"127.0.0.1:{ECHO_PORT}"),
            "sink": (f"{server_ip}:{TLS_SINK_PORT}", f"127.0.0.1:{SINK_PORT}"),
        },
    )
    client_conf = l4.stunnel_conf(
        tmp,
        "client",
        {
            "echo": (f"127.0.0.1:{LOCAL_ECHO_PORT}", f"{server_ip}:{TLS_ECHO_PORT}"),
            "sink": (f"127.0.0.1:{LOCAL_SINK_PORT}", f"{server_ip}:{TLS_SINK_PORT}"),
        },
    )
    with ExitStack() as stack:
        # `ip netns exec` execs stunnel itself, so each pid is the stunnel's.
        server = stack.enter_context(
            l4.child(
                mc.cluster.exec_argv("server", NS, [binary, str(server_conf)]), tmp / "server-stunnel.out"
            )
        )
        client_proc = stack.enter_context(
            l4.child(
                mc.cluster.exec_argv("client", NS, [binary, str(client_conf)]), tmp / "client-stunnel.out"
            )
        )
        wait_port_in(client, server_ip, TLS_SINK_PORT, lambda: server.poll() is None)
        wait_port_in(client, "127.0.0.1", LOCAL_SINK_PORT, lambda: client_proc.poll() is None)
        yield l4.Path_(
            "stunnel pair",
            netns_connector(client, "127.0.0.1", LOCAL_ECHO_PORT),
            netns_connector(client, "127.0.0.1", LOCAL_SINK_PORT),
            [client_proc.pid, server.pid],
        )
        log = (tmp / "server-stunnel.log").read_text(errors="replace")
        if "TLSv1.3 ciphersuite" not in log or "Certificate accepted" not in log:
            raise u.BenchError(
                f"the stunnel pair did not negotiate mutual TLS 1.3:\n{l4.tail(tmp / 'server-stunnel.log')}"
            )


# --- (c) the mesh ---------------------------------------------------------------------------------------


def inbound_connections(mc: MeshCluster, node: str) -> float:
    """Connections node's ztunnel opened as the destination (``istio_tcp_connections_opened_total``)."""
    status, text = mc.mesh.ztunnel_get(node, "/metrics", ZTUNNEL_STATS_PORT)
    if status != 200:
        raise u.BenchError(f"ztunnel on {node}: /metrics answered {status}")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def enable_and_wait(mc: MeshCluster, client: NetnsHandle, server_ip: str) -> float:
    """Label the namespace; seconds until a connection from the client pod is answered through the mesh
    (node-2's ztunnel counted it as a destination; before the capture the same connection goes direct)."""
    probe = netns_connector(client, server_ip, ECHO_PORT)
    before = inbound_connections(mc, "node-2")
    start = time.perf_counter()
    mc.set_namespace_labels(NS, AMBIENT)

    def through_mesh() -> bool:
        try:
            with probe() as sock:
                sock.sendall(b"x")
                if u.recv_exactly(sock, 1) != b"x":
                    return False
        except (OSError, u.BenchError):
            return False
        return inbound_connections(mc, "node-2") > before

    wait_for("a connection from the client pod through the mesh", through_mesh, START_TIMEOUT, poll=0.01)
    took = time.perf_counter() - start
    mc.wait_redirection([("client", NS), ("server", NS)], "enabled", timeout=START_TIMEOUT)
    return took


def pod_start(mc: MeshCluster) -> float:
    """Seconds from applying a new pod to the enrolled namespace until it is Running and annotated
    captured (kubelet: netns and veth, CNI chain with ambient-cni, node agent, ztunnel's ack)."""
    start = time.perf_counter()
    mc.apply(sleeper_pod("late", NS, "node-1", sa="client"))

    def ready() -> bool:
        pod = mc.pod("late", NS)
        return (
            pod is not None
            and pod.status.get("phase") == "Running"
            and pod.annotations.get(REDIRECTION) == "enabled"
        )

    wait_for("the new pod running and captured", ready, START_TIMEOUT, poll=0.01)
    return time.perf_counter() - start


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB and 500 round trips")
    parser.add_argument("--mib", type=int, help="MiB per throughput run (default 256, quick 32)")
    parser.add_argument("--round-trips", type=int, help="1 KiB round trips (default 5000, quick 500)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cluster_l4.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    configure_logging("warning")
    nbytes = (args.mib or (32 if args.quick else 256)) << 20
    trips = args.round_trips or (500 if args.quick else 5000)
    print(
        f"# L4 across two nodes of the local cluster: {l4.machine()}, load {os.getloadavg()[0]:.1f}, "
        f"at {u.source_revision(BENCH.parent)}"
    )
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# throughput: {nbytes >> 20} MiB one way, best of 3; latency: {trips} x 1 KiB round trips")

    results: list[l4.Result] = []
    extra: dict[str, str] = {}
    started = time.perf_counter()
    mc = MeshCluster.create(nodes=2)
    print(f"-- cluster and mesh up in {time.perf_counter() - started:.1f} s", flush=True)
    with ExitStack() as stack:
        stack.callback(mc.close)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-l4-")))
        mc.apply(namespace(NS), server_pod(), sleeper_pod("client", NS, "node-1", sa="client"))
        ips = mc.wait_running([("server", NS), ("client", NS)], timeout=START_TIMEOUT)
        server_ip = ips[("server", NS)]
        client = stack.enter_context(NetnsHandle.open(mc.cluster.net.netns_path(mc.pod_netns("client", NS))))
        wait_port_in(client, server_ip, SINK_PORT)

        direct = l4.Path_(
            "direct",  # no mesh
            netns_connector(client, server_ip, ECHO_PORT),
            netns_connector(client, server_ip, SINK_PORT),
            [],
        )
        results.append(l4.measure(direct, nbytes, trips))
        print(l4.results_table(results[-1:]).render().splitlines()[-1], flush=True)

        with stunnel_pair(mc, client, server_ip, tmp) as path:
            results.append(l4.measure(path, nbytes, trips))
        print(l4.results_table(results[-1:]).render().splitlines()[-1], flush=True)

        took = enable_and_wait(mc, client, server_ip)
        extra["namespace enable -> first connection through the mesh (2 running pods)"] = (
            f"{took * 1e3:.0f} ms"
        )
        ztunnels = [mc.cluster.find_component(ztunnel_name(node)) for node in ("node-1", "node-2")]
        pids = [z.pid for z in ztunnels if z is not None and z.pid is not None]
        if len(pids) != 2:
            raise u.BenchError("the ztunnels of node-1 and node-2 are not both running")
        before = inbound_connections(mc, "node-2")
        mesh = l4.Path_(
            "ztunnel pair",  # the mesh: in-pod ztunnels on node-1 and node-2, HBONE between the pods
            netns_connector(client, server_ip, ECHO_PORT),
            netns_connector(client, server_ip, SINK_PORT),
            pids,
        )
        results.append(l4.measure(mesh, nbytes, trips))
        opened = inbound_connections(mc, "node-2") - before
        if opened < 4:  # 3 throughput runs and the latency run
            raise u.BenchError(f"only {opened:g} connections reached node-2's ztunnel: not through the mesh")
        extra["connections node-2's ztunnel received during the mesh run"] = f"{opened:g}"
        print(l4.results_table(results[-1:]).render().splitlines()[-1], flush=True)
        took = pod_start(mc)
        extra["new pod applied -> Running and captured (enrolled namespace)"] = f"{took * 1e3:.0f} ms"

    print()
    print(l4.results_table(results).render())
    print()
    for line in l4.targets(results, extra):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
