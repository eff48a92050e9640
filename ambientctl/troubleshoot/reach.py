"""Reaching the local cluster's HTTP endpoints from the host: the one way every troubleshooting command
(and an operator, through ``ambientctl fetch``) reads istiod's monitoring port, a ztunnel's admin,
metrics and readiness ports, a node agent's monitoring and admin ports, or a pod's (a waypoint's) admin port.

Those endpoints listen inside network namespaces (istiod on the cluster network in the fabric netns; a
ztunnel's admin and its node agent (monitoring; admin ``/debug/pods``, 127.0.0.1 only) on 127.0.0.1
of the node's netns; a waypoint on 127.0.0.1 of its pod's
netns), so the host cannot dial them. ``Reach`` opens the namespace with ``NetnsHandle`` (pyroute2's
setns on a dedicated thread), makes the socket there (marked, so redirection never captures it) and
speaks plain HTTP/1.1 over it from the calling thread: no ``ip netns exec``, no child process.

Targets are written as ``istiod``, ``node/<node>`` (the node's netns: ztunnel and node agent) and
``pod/<namespace>/<name>``; ``parse_target`` and ``parse_location`` are pure and table-tested. Every
failure is a ``ReachError`` whose message names the target and says what to check.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from ambientctl.cluster import Cluster, ClusterError
from ambientctl.cluster.mesh import ConnectedHTTP
from meshcore.aio.netns import NetnsError, NetnsHandle, make_marked_socket

ISTIOD = "istiod"
LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT_S = 5.0
# A config dump of a large node is a few MiB; refuse to buffer more than this.
MAX_BODY = 64 << 20

# Well-known ports (DESIGN.md §2).
ISTIOD_MONITORING = 15014
ZTUNNEL_ADMIN = 15000
ZTUNNEL_STATS = 15020
ZTUNNEL_READINESS = 15021
AGENT_MONITORING = 15014  # /metrics, /readyz
# /debug/pods: the node agent's admin port, loopback only (ztunnel.cni.config.DEFAULT_ADMIN_PORT; not 15000,
# which ztunnel's admin holds in the same netns).
AGENT_ADMIN = 15015
WAYPOINT_ADMIN = 15000
WAYPOINT_STATS = 15020


class ReachError(Exception):
    """The endpoint could not be reached or answered nonsense; the message says what to check."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where an endpoint lives: ``kind`` is ``istiod``, ``node`` or ``pod``."""

    kind: str
    node: str = ""
    namespace: str = ""
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "node":
            return f"node/{self.node}"
        if self.kind == "pod":
            return f"pod/{self.namespace}/{self.name}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Place:
    """A target resolved on the running cluster: the netns file and the host to dial inside it."""

    target: Target
    netns_path: str
    host: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_target(text: str) -> Target:
    """``istiod`` | ``node/<node>`` | ``pod/<namespace>/<name>`` (``ztunnel/<node>`` and
    ``node-agent/<node>`` are accepted for ``node/<node>``: they share the node's netns)."""
    parts = text.strip().split("/")
    if parts == [ISTIOD]:
        return Target(ISTIOD)
    if len(parts) == 2 and parts[0] in ("node", "ztunnel", "node-agent") and parts[1]:
        return Target("node", node=parts[1])
    if len(parts) == 3 and parts[0] == "pod" and parts[1] and parts[2]:
        return Target("pod", namespace=parts[1], name=parts[2])
    raise ReachError(
        f"{text!r} is not a target: use istiod, node/<node> (its ztunnel and node agent) "
        "or pod/<namespace>/<name>"
    )


def parse_location(text: str) -> tuple[int, str]:
    """``:15014/debug/syncz`` or ``15014/debug/syncz`` -> (15014, "/debug/syncz"); path defaults to /."""
    rest = text.strip().removeprefix(":")
    port_text, slash, path = rest.partition("/")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ReachError(f"{text!r}: write the port and path as :PORT/PATH, for example :15000/config_dump")
    return int(port_text), slash + path if slash else "/"


class Endpoints:
    """What every source of endpoints offers on top of its own ``get`` (local ``Reach``, or ``KubeReach``
    through the API server): JSON decoding with one error wording, and the shorthands the commands read."""

    def get(self, target: Target, port: int, path: str, *, timeout: float | None = None) -> Answer:
        raise NotImplementedError

    def json(self, target: Target, port: int, path: str) -> Any:
        """``GET`` and decode JSON; a non-200 answer or a non-JSON body is a ``ReachError``."""
        answer = self.get(target, port, path)
        if answer.status != 200:
            raise ReachError(f"{target} :{port}{path} answered HTTP {answer.status}: {answer.text.strip()[:200]}")
        try:
            return json.loads(answer.body)
        except ValueError as e:
            raise ReachError(f"{target} :{port}{path} did not answer JSON ({e})") from None

    def istiod(self, path: str) -> Any:
        return self.json(Target(ISTIOD), ISTIOD_MONITORING, path)

    def ztunnel(self, node: str, path: str, port: int = ZTUNNEL_ADMIN) -> Any:
        return self.json(Target("node", node=node), port, path)


class Reach(Endpoints):
    """Endpoints of one local cluster, reached from the host (see the module docstring)."""

    def __init__(self, cluster: Cluster, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.cluster = cluster
        self.timeout = timeout

    def place(self, target: Target) -> Place:
        try:
            layout = self.cluster.layout()
        except ClusterError as e:
            raise ReachError(f"cannot reach {target}: {e}") from None
        netns_path = self.cluster.net.netns_path
        if target.kind == ISTIOD:
            return Place(target, str(netns_path(layout.fabric_netns)), layout.istiod_ip)
        if target.kind == "node":
            node = layout.find_node(target.node)
            if node is None:
                known = ", ".join(n.name for n in layout.nodes)
                raise ReachError(f"no node {target.node!r} in the local cluster (nodes: {known})")
            return Place(target, str(netns_path(node.netns)), LOOPBACK)
        record = self.cluster.find_pod(target.name, target.namespace)
        if record is None:
            raise ReachError(
                f"no pod {target.namespace}/{target.name} in the local cluster: "
                "see `ambientctl cluster status` for its pods"
            )
        return Place(target, str(netns_path(record.netns)), LOOPBACK)

    def get(self, target: Target, port: int, path: str, *, timeout: float | None = None) -> Answer:
        """``GET path`` on ``port`` of ``target``; any status is returned, transport failures raise."""
        place = self.place(target)
        where = f"{target} :{port}{path}"
        wait = self.timeout if timeout is None else timeout
        try:
            with NetnsHandle.open(place.netns_path) as handle:
                sock = handle.run(make_marked_socket, socket.AF_INET, socket.SOCK_STREAM, 0, 0)
        except (NetnsError, OSError) as e:
            raise ReachError(f"cannot enter the network namespace of {target}: {e}") from None
        conn = ConnectedHTTP(sock, place.host, port, wait)
        try:
            conn.request("GET", path, headers={"Accept": "application/json, text/plain"})
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise ReachError(f"{where}: answer larger than {MAX_BODY >> 20} MiB")
            return Answer(response.status, body)
        except (OSError, http.client.HTTPException) as e:
            raise ReachError(f"{where}: {type(e).__name__}: {e or 'no answer'}") from None
        finally:
            conn.close()
            sock.close()

