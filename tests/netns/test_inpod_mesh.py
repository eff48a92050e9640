"""In-pod mode against the kernel: two pod netns joined by a veth, istio-cni's redirection applied in both,
one ztunnel (this process, host netns) in shared mode, fed by a fake node agent over ZDS (the pods' netns
fds cross with SCM_RIGHTS) and a static config naming both workloads.

An app in pod A dials pod B's IP as plain TCP: A's 15001 captures it, HBONE carries it from inside A to
B's 15008, B's ztunnel side dials B's app from inside B keeping A's address. nft counters at POSTROUTING
on A's veth (what really left; at OUTPUT the app's redirected packets still show the veth) prove the pods
exchanged only port-15008 traffic. Also: a DENY policy refuses (and closes a live connection when pushed
later), self-calls to 15008/15001 are refused, plaintext from outside the mesh is served by B's 15006
(original destination), DelWorkload closes B's listeners, a restarted ztunnel is given the pods again by
the agent's snapshot, and an AddWorkload whose fd is not a netns is nacked without disturbing the others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshcore.aio.netns import INPOD_MARK, NetnsHandle, in_netns, make_marked_socket
from meshcore.model import Action, Match, StringMatch
from meshcore.state import ProxyState
from meshcore.testing.builders import policy, workload
from meshcore.testing.fake_ca import FakeCa
from ztunnel.app import Ztunnel
from ztunnel.config import ProxyMode
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.testing import AgentConnection, FakeNodeAgent
from ztunnel.redirect import RedirectOptions, apply, render
from ztunnel.testing import StaticSource, make_config

APP_PORT = 8080
TIMEOUT = 10.0
PAYLOAD = b"hello from pod a through the mesh" * 100

COUNTERS = """
table inet h16count {{
  counter hbone {{ }}
  counter other {{ }}
  chain leaving {{
    type filter hook postrouting priority 0; policy accept;
    oifname "{ifname}" tcp dport 15008 counter name "hbone"
    oifname "{ifname}" tcp dport != 15008 counter name "other"
  }}
}}
"""


@dataclass
class Pod:
    name: str
    ip: str
    uid: str  # the Kubernetes pod uid the node agent uses (xDS names the workload differently)
    path: str
    handle: NetnsHandle
    ifname: str

    @property
    def info(self) -> WorkloadInfo:
        return WorkloadInfo(self.name, "default", self.name)


@dataclass
class EchoApp:
    """An app listening on 0.0.0.0:APP_PORT inside a pod; remembers who connected."""

    server: asyncio.Server
    peers: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, pod: Pod) -> EchoApp:
        sock = await in_netns(pod.handle, _app_listener, APP_PORT)
        app = cls(server=None)  # type: ignore[arg-type]
        app.server = await asyncio.start_server(app._echo, sock=sock)
        return app

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        writer.close()


def _app_listener(port: int) -> socket.socket:
    sock = make_marked_socket(mark=0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def dial(pod: Pod, ip: str, port: int, *, mark: int = 0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from inside ``pod`` as an app would (mark 0: captured) or as ztunnel would (0x539)."""
    sock = await in_netns(pod.handle, make_marked_socket, socket.AF_INET, socket.SOCK_STREAM, 0, mark)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def exchange(pod: Pod, ip: str, port: int, payload: bytes = PAYLOAD, *, mark: int = 0) -> bytes:
    reader, writer = await dial(pod, ip, port, mark=mark)
    try:
        writer.write(payload)
        writer.write_eof()
        async with asyncio.timeout(TIMEOUT):
            return await reader.read()
    finally:
        writer.close()


async def refused(pod: Pod, ip: str, port: int) -> bool:
    """True when the app's connection is cut without an answer (a reset or EOF before any byte)."""
    try:
        answer = await exchange(pod, ip, port, b"anyone there?")
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        return True
    return answer == b""


def nft(pod: Pod, *args: str, stdin: str | None = None) -> str:
    done = pod.handle.run(subprocess.run, ["nft", *args], input=stdin, capture_output=True, text=True, check=True)
    return done.stdout


def counter(pod: Pod, name: str) -> int:
    listing = json.loads(nft(pod, "-j", "list", "counter", "inet", "h16count", name))
    return next(item["counter"]["packets"] for item in listing["nftables"] if "counter" in item)


@dataclass
class Mesh:
    a: Pod
    b: Pod
    state: ProxyState
    zt: Ztunnel
    agent: FakeNodeAgent
    conn: AgentConnection
    app: EchoApp
    uds: str

    def new_ztunnel(self) -> Ztunnel:
        config = make_config("node-1", None, proxy_mode=ProxyMode.SHARED, inpod_uds=self.uds, drain_duration=0.5)
        return Ztunnel(config, ca=FakeCa(), xds=StaticSource.of(self.state))

    async def hand_over(self) -> AgentConnection:
        """Accept the ztunnel's ZDS connection and send both pods and the end of the snapshot."""
        conn = await self.agent.accept()
        for pod in (self.a, self.b):
            ack = await conn.add(pod.uid, pod.info, pod.path)
            assert ack.ok, ack.error
        assert (await conn.snapshot_sent()).ok
        return conn

    def failures(self, reason: str) -> float:
        value = self.zt.registry.get_sample_value("ztunnel_connection_failures_total", {"reason": reason})
        return value or 0.0


@pytest.fixture
async def mesh(make_netns, make_veth) -> AsyncIterator[Mesh]:
    rng = random.Random()
    net = f"10.{rng.randrange(200, 250)}.{rng.randrange(1, 250)}."
    ns_a, ns_b = make_netns("h16a"), make_netns("h16b")
    veth = make_veth(ns_a, ns_b, net + "1/24", net + "2/24")
    for ns in (ns_a, ns_b):
        await asyncio.to_thread(apply, ns.path, render(RedirectOptions()))
    short = tempfile.mkdtemp(prefix="h16-")  # a unix socket path must stay under 108 bytes
    handles: list[NetnsHandle] = []
    zt: Ztunnel | None = None
    agent: FakeNodeAgent | None = None
    app: EchoApp | None = None
    try:
        a = Pod("client", net + "1", "0b1e-uid-client", ns_a.path, NetnsHandle.open(ns_a.path), veth.a)
        handles.append(a.handle)
        b = Pod("server", net + "2", "0b1e-uid-server", ns_b.path, NetnsHandle.open(ns_b.path), veth.b)
        handles.append(b.handle)
        nft(a, "-f", "-", stdin=COUNTERS.format(ifname=a.ifname))
        state = ProxyState.of(workload("client", a.ip), workload("server", b.ip))
        agent = FakeNodeAgent(f"{short}/zds.sock")
        mesh = Mesh(a, b, state, None, agent, None, None, agent.path)  # type: ignore[arg-type]
        zt = mesh.zt = mesh.new_ztunnel()
        await zt.start()
        mesh.conn = await mesh.hand_over()
        await zt.wait_ready(TIMEOUT)
        app = mesh.app = await EchoApp.start(b)
        yield mesh
        zt = mesh.zt  # a test may have replaced it
    finally:
        if app is not None:
            app.server.close()
        if zt is not None:
            await zt.stop()
        if agent is not None:
            agent.close()
        for handle in handles:
            handle.close()
        shutil.rmtree(short, ignore_errors=True)


async def test_an_app_reaches_another_pod_through_hbone_and_keeps_its_source_address(mesh: Mesh) -> None:
    reader, writer = await dial(mesh.a, mesh.b.ip, APP_PORT)
    try:
        writer.write(PAYLOAD)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD
        # Both halves are ztunnel's, tracked with the peer identities from mTLS.
        live = {(c.direction.value, c.protocol, c.workload.name) for c in mesh.zt.connections.connections()}
        assert live == {("outbound", "HBONE", "client"), ("inbound", "HBONE", "server")}
        inbound = next(c for c in mesh.zt.connections.connections() if c.direction.value == "inbound")
        assert str(inbound.identity) == "spiffe://cluster.local/ns/default/sa/client"
        assert inbound.target == f"{mesh.b.ip}:{APP_PORT}"
        state = mesh.zt.config_dump()["workloadState"]
        server = state["Kubernetes//Pod/default/server"]
        assert server["state"] == "Up" and server["connections"]["inbound"][0]["actualDst"] == inbound.target
    finally:
        writer.close()
    assert mesh.app.peers == [mesh.a.ip]  # B's app sees pod A, not ztunnel or pod B itself
    assert counter(mesh.a, "hbone") > 0
    assert counter(mesh.a, "other") == 0  # nothing left pod A but HBONE on 15008
    assert mesh.zt.readiness().ready


DENY_CLIENT = policy(
    "deny-client",
    Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/client"),)),
    action=Action.DENY,
)


async def test_a_deny_policy_refuses_new_connections(mesh: Mesh) -> None:
    mesh.zt.cell.publish(mesh.zt.cell.current().updated(put=[DENY_CLIENT]))
    assert await refused(mesh.a, mesh.b.ip, APP_PORT)
    assert mesh.app.peers == []
    assert mesh.failures("PolicyDenied") == 1 and mesh.failures("TunnelDenied") == 1


async def test_a_deny_policy_pushed_later_closes_a_live_connection(mesh: Mesh) -> None:
    reader, writer = await dial(mesh.a, mesh.b.ip, APP_PORT)
    try:
        writer.write(b"ping")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(4) == b"ping"
        mesh.zt.cell.publish(mesh.zt.cell.current().updated(put=[DENY_CLIENT]))
        async with asyncio.timeout(TIMEOUT):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
    finally:
        writer.close()
    assert mesh.failures("PolicyChange") == 1


async def test_self_calls_to_ztunnel_ports_are_refused(mesh: Mesh) -> None:
    # To pod B's 15008 as plain TCP: carried to B, whose inbound refuses its own port (400).
    assert await refused(mesh.a, mesh.b.ip, 15008)
    # To pod A's own outbound listener over loopback (not redirected): refused before routing.
    assert await refused(mesh.a, "127.0.0.1", 15001)
    assert mesh.failures("SelfCall") == 2
    assert mesh.app.peers == []
    assert await exchange(mesh.a, mesh.b.ip, APP_PORT) == PAYLOAD  # the pods still talk


async def test_plaintext_from_outside_the_mesh_is_served_on_15006_with_its_original_destination(mesh: Mesh) -> None:
    # A socket marked like ztunnel's leaves pod A uncaptured: to pod B it is a plaintext client at A's IP.
    assert await exchange(mesh.a, mesh.b.ip, APP_PORT, mark=INPOD_MARK) == PAYLOAD
    assert mesh.app.peers == [mesh.a.ip]
    assert counter(mesh.a, "other") > 0  # this one really was plaintext on the wire


async def test_delete_closes_the_pods_listeners(mesh: Mesh) -> None:
    assert (await mesh.conn.delete(mesh.b.uid)).ok
    assert mesh.zt.manager.pod(mesh.b.uid) is None
    with pytest.raises(ConnectionRefusedError):
        await dial(mesh.a, mesh.b.ip, 15008, mark=INPOD_MARK)
    # B is still redirected (the agent removes its rules separately), so A's traffic finds nothing: refused.
    assert await refused(mesh.a, mesh.b.ip, APP_PORT)
    assert mesh.app.peers == []
    assert mesh.zt.manager.pod(mesh.a.uid) is not None


async def test_a_restarted_ztunnel_is_given_the_pods_again_and_serves_them(mesh: Mesh) -> None:
    old = mesh.zt
    await old.drain(asyncio.get_running_loop().time() + 0.5)
    await old.stop()
    # While no ztunnel runs, captured pods are not served: refused, never sent around the mesh.
    assert await refused(mesh.a, mesh.b.ip, APP_PORT)

    mesh.zt = mesh.new_ztunnel()
    await mesh.zt.start()
    assert not mesh.zt.readiness().ready
    assert "node agent's pod snapshot" in mesh.zt.readiness().text()
    mesh.conn = await mesh.hand_over()
    await mesh.zt.wait_ready(TIMEOUT)
    assert await exchange(mesh.a, mesh.b.ip, APP_PORT) == PAYLOAD
    assert mesh.app.peers == [mesh.a.ip]


async def test_an_add_whose_fd_is_not_a_netns_is_nacked_and_the_other_pods_carry_on(mesh: Mesh) -> None:
    not_a_netns = Path(f"{mesh.uds}.not-a-netns")
    await asyncio.to_thread(not_a_netns.touch)
    ack = await mesh.conn.add("0b1e-uid-bogus", WorkloadInfo("bogus", "default", "bogus"), not_a_netns)
    assert not ack.ok
    assert "0b1e-uid-bogus" in ack.error and "not a network namespace" in ack.error
    assert mesh.zt.manager.pod("0b1e-uid-bogus") is None
    assert await exchange(mesh.a, mesh.b.ip, APP_PORT) == PAYLOAD
    assert mesh.zt.readiness().ready
