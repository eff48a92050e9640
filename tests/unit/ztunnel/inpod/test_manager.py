"""WorkloadProxyManager over a real ZDS socket with a fake node agent and loopback stand-ins for pod netns:
adds, keeps, deletes and snapshots; pods pending until xDS knows them; nacks that concern one pod only;
protocol errors answered with a nack and a reconnect; fds of bad packets closed; listeners really up
(and really closed)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshcore.aio.hbone_server import HboneServerCounters
from meshcore.aio.pool import HbonePool, mtls_connector
from meshcore.aio.secrets import SecretManager
from meshcore.aio.state_cell import StateCell
from meshcore.aio.tls_contexts import TlsContexts
from meshcore.identity import SpiffeId
from meshcore.proto import zds_pb2
from meshcore.state import ProxyState
from meshcore.telemetry import TcpMetrics
from meshcore.testing.builders import workload
from meshcore.testing.fake_ca import FakeCa
from ztunnel.config import ProxyMode, ZtunnelConfig
from ztunnel.inpod.manager import Backoff, WorkloadProxyManager
from ztunnel.inpod.pod import OUTBOUND_PORT, WAITING_FOR_XDS
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.testing import AgentConnection, FakeNodeAgent, LoopbackPods
from ztunnel.proxy.connections import ConnectionManager
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.sockets import DedicatedSocketFactory
from ztunnel.testing import loopback_block

TIMEOUT = 10.0


@dataclass
class Env:
    manager: WorkloadProxyManager
    agent: FakeNodeAgent
    pods: LoopbackPods
    cell: StateCell[ProxyState]
    secrets: SecretManager
    inputs: ProxyInputs
    registry: CollectorRegistry
    net: str

    def info(self, name: str) -> WorkloadInfo:
        return WorkloadInfo(name, "default", name)

    def workload(self, name: str, host: int):
        return workload(name, f"{self.net}{host}", node="node-1")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = ZtunnelConfig(
        node_name="node-1", proxy_mode=ProxyMode.SHARED, inpod_uds=str(tmp_path / "zds.sock"), drain_duration=0.5
    )
    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    secrets = SecretManager(FakeCa())
    tls = TlsContexts(secrets)
    pool = HbonePool(mtls_connector(tls.client))
    registry = CollectorRegistry()
    inputs = ProxyInputs(
        config=config, cell=cell, secrets=secrets, tls=tls, pool=pool, metrics=TcpMetrics(registry),
        connections=ConnectionManager(), hbone_counters=HboneServerCounters(), sockets=DedicatedSocketFactory(),
    )
    agent = FakeNodeAgent(config.inpod_uds)
    pods = LoopbackPods(tmp_path)
    manager = WorkloadProxyManager(inputs, config.inpod_uds, open_pod=pods.open, backoff=Backoff(0.01, 0.05))
    task = asyncio.create_task(manager.run())
    try:
        yield Env(manager, agent, pods, cell, secrets, inputs, registry, loopback_block())
    finally:
        await manager.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        agent.close()
        await pool.aclose()
        await secrets.close()


async def wait_for(predicate, what: str, manager: WorkloadProxyManager) -> None:
    """Poll ``predicate`` on every manager change, with a deadline."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await manager.changed(manager.version)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; pending: {manager.pending()}") from None


async def connectable(addr: tuple[str, int]) -> bool:
    try:
        _, writer = await asyncio.open_connection(*addr)
    except OSError as exc:
        assert exc.errno == errno.ECONNREFUSED
        return False
    writer.close()
    return True


async def add_pod(env: Env, conn: AgentConnection, name: str, host: int) -> str:
    uid = f"k8s-uid-{name}"
    ack = await conn.add(uid, env.info(name), env.pods.make(name, f"{env.net}{host}"))
    assert ack.ok, ack.error
    return uid


async def test_a_pod_known_to_xds_gets_its_three_listeners_and_its_certificate(env: Env) -> None:
    env.cell.publish(ProxyState.of(env.workload("web", 11)))
    conn = await env.agent.accept()
    uid = await add_pod(env, conn, "web", 11)
    assert (await conn.snapshot_sent()).ok
    await wait_for(lambda: env.manager.pending() == {}, "the pod to be up", env.manager)
    pod = env.manager.pod(uid)
    assert pod is not None and pod.state == "Up"
    sockets = env.pods.opened[0]
    assert set(sockets.bound) == {15008, 15006, OUTBOUND_PORT}
    for addr in sockets.bound.values():
        assert await connectable(addr)
    assert env.secrets.find_certificate(SpiffeId("cluster.local", "default", "web")) is not None
    assert env.manager.snapshot_received.is_set()
    (status,) = env.manager.statuses().values()
    assert status.workload.uid == "Kubernetes//Pod/default/web" and status.state == "Up" and status.pod_uid == uid


async def test_a_pod_unknown_to_xds_is_acked_pending_and_starts_when_its_workload_appears(env: Env) -> None:
    conn = await env.agent.accept()
    uid = await add_pod(env, conn, "late", 12)
    assert env.manager.pending() == {uid: WAITING_FOR_XDS}
    assert env.pods.opened[0].bound == {}
    # The certificate is prefetched from the node agent's WorkloadInfo, before xDS says anything.
    assert SpiffeId("cluster.local", "default", "late") in env.secrets.identities
    env.cell.publish(ProxyState.of(env.workload("late", 12)))
    await wait_for(lambda: env.manager.pending() == {}, "the late pod to start", env.manager)
    assert set(env.pods.opened[0].bound) == {15008, 15006, OUTBOUND_PORT}


async def test_delete_stops_accepting_before_the_ack_and_releases_the_netns(env: Env) -> None:
    env.cell.publish(ProxyState.of(env.workload("a", 11), env.workload("b", 12)))
    conn = await env.agent.accept()
    uid_a = await add_pod(env, conn, "a", 11)
    await add_pod(env, conn, "b", 12)
    await wait_for(lambda: env.manager.pending() == {}, "both pods up", env.manager)
    a_sockets, b_sockets = env.pods.opened
    assert (await conn.delete(uid_a)).ok
    for addr in a_sockets.bound.values():
        assert not await connectable(addr)
    for addr in b_sockets.bound.values():
        assert await connectable(addr)
    await wait_for(lambda: a_sockets.closed, "pod a's netns to be released after its drain", env.manager)
    assert env.manager.pod(uid_a) is None
    assert SpiffeId("cluster.local", "default", "a") not in env.secrets.identities
    assert (await conn.delete("never-added")).ok  # idempotent: unknown pods are not an error


async def test_a_reconnect_snapshot_keeps_sent_and_kept_pods_and_removes_the_rest(env: Env) -> None:
    env.cell.publish(ProxyState.of(*(env.workload(n, h) for n, h in (("a", 11), ("b", 12), ("c", 13)))))
    first = await env.agent.accept()
    uid_a = await add_pod(env, first, "a", 11)
    uid_b = await add_pod(env, first, "b", 12)
    uid_c = await add_pod(env, first, "c", 13)
    assert (await first.snapshot_sent()).ok
    await wait_for(lambda: env.manager.pending() == {}, "three pods up", env.manager)
    a_sockets = env.pods.opened[0]

    first.close()  # the node agent restarts
    second = await env.agent.accept()
    again = await second.add(uid_a, env.info("a"), env.pods.make("a", f"{env.net}11"))
    assert again.ok
    assert (await second.keep(uid_b)).ok
    assert (await second.snapshot_sent()).ok
    assert set(env.manager.pods()) == {uid_a, uid_b}
    # Pod a was re-sent with the same netns: the running proxy is kept, the duplicate handle released.
    assert env.manager.pod(uid_a).sockets is a_sockets and env.pods.opened[-1].closed
    c_sockets = env.pods.opened[2]
    assert not await connectable(c_sockets.bound[15008])
    assert uid_c not in env.manager.pending()
    assert env.manager.connections_made == 2


async def test_a_pod_whose_netns_cannot_be_entered_is_nacked_alone(env: Env) -> None:
    env.cell.publish(ProxyState.of(env.workload("good", 11), env.workload("bad", 12)))
    conn = await env.agent.accept()
    uid_good = await add_pod(env, conn, "good", 11)
    env.pods.refuse.add("k8s-uid-bad")
    ack = await conn.add("k8s-uid-bad", env.info("bad"), env.pods.make("bad", f"{env.net}12"))
    assert not ack.ok and "k8s-uid-bad" in ack.error and "refused by the test" in ack.error
    assert set(env.manager.pods()) == {uid_good}
    assert (await conn.snapshot_sent()).ok  # the connection carries on after a nack
    await wait_for(lambda: env.manager.pending() == {}, "the good pod up", env.manager)


async def test_an_identity_that_is_not_a_spiffe_id_is_nacked_and_its_fd_closed(env: Env) -> None:
    conn = await env.agent.accept()
    before = len(os.listdir("/proc/self/fd"))
    ack = await conn.add("k8s-uid-x", WorkloadInfo("x", "Not_A_Namespace", "sa"), env.pods.make("x", f"{env.net}9"))
    assert not ack.ok and "Not_A_Namespace" in ack.error
    assert len(os.listdir("/proc/self/fd")) == before
    assert env.manager.pods() == {}


@pytest.mark.parametrize(
    "packet",
    [b"\xff\xfe garbage", b"\x4a\x00"],
    ids=["bytes that are not a ZDS message", "a request with only an unknown (newer) payload"],
)
async def test_a_broken_message_is_nacked_then_ztunnel_reconnects_and_keeps_its_pods(env: Env, packet) -> None:
    env.cell.publish(ProxyState.of(env.workload("a", 11)))
    conn = await env.agent.accept()
    uid = await add_pod(env, conn, "a", 11)
    ack = await conn.send_raw(packet)
    assert not ack.ok and "ZDS" in ack.error
    await conn.wait_closed()
    again = await env.agent.accept()
    assert env.manager.protocol_errors == 1
    assert uid in env.manager.pods()
    assert (await again.snapshot_sent()).ok
    assert env.manager.pods() == {}  # the new snapshot did not name it


def fds_open_on(path: Path) -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}") == str(path)
    return count


async def test_an_fd_on_a_message_that_takes_none_is_closed_and_nacked(env: Env, tmp_path: Path) -> None:
    conn = await env.agent.accept()
    path = tmp_path / "stray"
    path.touch()
    stray = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        del_packet = zds_pb2.WorkloadRequest()
        getattr(del_packet, "del").uid = "x"
        ack = await conn.send_raw(del_packet.SerializeToString(), [stray])
        assert not ack.ok and "file descriptor" in ack.error
        assert fds_open_on(path) == 1  # ours only: ztunnel closed the copy it received before nacking
        await conn.wait_closed()
    finally:
        os.close(stray)


async def test_a_workload_that_changes_address_gets_new_listeners(env: Env) -> None:
    env.cell.publish(ProxyState.of(env.workload("a", 11)))
    conn = await env.agent.accept()
    uid = await add_pod(env, conn, "a", 11)
    await wait_for(lambda: env.manager.pending() == {}, "pod up", env.manager)
    pod = env.manager.pod(uid)
    first = pod.listen_addresses
    env.cell.publish(env.cell.current().updated(put=[env.workload("a", 21)]))
    await wait_for(lambda: pod.state == "Up" and pod.listen_addresses != first, "listeners restarted", env.manager)
    assert pod.workload.addresses == (f"{env.net}21",)


async def test_a_connection_to_15001_that_was_not_redirected_is_refused_as_a_self_call(env: Env) -> None:
    env.cell.publish(ProxyState.of(env.workload("a", 11)))
    conn = await env.agent.accept()
    await add_pod(env, conn, "a", 11)
    await wait_for(lambda: env.manager.pending() == {}, "pod up", env.manager)
    reader, writer = await asyncio.open_connection(*env.pods.opened[0].bound[OUTBOUND_PORT])
    writer.write(b"hello")
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(TIMEOUT):
            await reader.read()
    writer.close()
    assert env.registry.get_sample_value("ztunnel_connection_failures_total", {"reason": "SelfCall"}) == 1


async def test_ztunnel_keeps_retrying_until_the_node_agent_listens(env: Env) -> None:
    env.agent.close()  # nobody listens: the manager retries with its backoff
    agent = FakeNodeAgent(env.manager.uds_path)
    try:
        conn = await agent.accept()
        assert (await conn.snapshot_sent()).ok
        await wait_for(lambda: env.manager.snapshot_received.is_set(), "the snapshot", env.manager)
    finally:
        agent.close()


def test_loopback_pods_refuse_an_fd_they_did_not_make(tmp_path: Path) -> None:
    pods = LoopbackPods(tmp_path)
    fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(OSError, match="stand-in"):
        asyncio.run(pods.open(fd, "x"))
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the opener even on failure
