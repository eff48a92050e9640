"""The ztunnel side and the real node agent's ZDS server (``ztunnel.cni.zds_server``) speak to each other:
the snapshot brings pods up, a live add and delete work, a nack for one pod is reported to the agent as
that pod's error, and a ztunnel that reconnects gets a fresh snapshot. Pods are loopback stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
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
from meshcore.state import ProxyState
from meshcore.telemetry import TcpMetrics
from meshcore.testing.builders import workload
from meshcore.testing.fake_ca import FakeCa
from ztunnel.cni.errors import ZtunnelNack
from ztunnel.cni.zds_server import ZdsPod, ZdsServer
from ztunnel.config import ProxyMode, ZtunnelConfig
from ztunnel.inpod.manager import Backoff, WorkloadProxyManager
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.testing import LoopbackPods
from ztunnel.inpod.transport import open_listener
from ztunnel.proxy.connections import ConnectionManager
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.sockets import DedicatedSocketFactory
from ztunnel.testing import loopback_block

TIMEOUT = 10.0


@dataclass
class Node:
    server: ZdsServer
    snapshot: list[tuple[str, str]]  # (name, ip) of the pods the agent holds
    results: list[dict[str, str | None]]
    pods: LoopbackPods
    cell: StateCell[ProxyState]
    inputs: ProxyInputs
    net: str

    def new_manager(self) -> WorkloadProxyManager:
        return WorkloadProxyManager(
            self.inputs, self.inputs.config.inpod_uds, open_pod=self.pods.open, backoff=Backoff(0.01, 0.05)
        )

    def fd(self, name: str, ip: str) -> int:
        return os.open(self.pods.make(name, ip), os.O_RDONLY | os.O_CLOEXEC)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    path = str(tmp_path / "zds.sock")
    config = ZtunnelConfig(node_name="node-1", proxy_mode=ProxyMode.SHARED, inpod_uds=path, drain_duration=0.2)
    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    secrets = SecretManager(FakeCa())
    tls = TlsContexts(secrets)
    pool = HbonePool(mtls_connector(tls.client))
    inputs = ProxyInputs(
        config=config, cell=cell, secrets=secrets, tls=tls, pool=pool, metrics=TcpMetrics(CollectorRegistry()),
        connections=ConnectionManager(), hbone_counters=HboneServerCounters(), sockets=DedicatedSocketFactory(),
    )
    pods = LoopbackPods(tmp_path)
    snapshot: list[tuple[str, str]] = []
    results: list[dict[str, str | None]] = []
    holder: list[Node] = []

    def take_snapshot() -> list[ZdsPod]:
        n = holder[0]
        return [ZdsPod(f"uid-{name}", WorkloadInfo(name, "default", name), n.fd(name, ip)) for name, ip in snapshot]

    listener = open_listener(path)
    server = ZdsServer(listener, snapshot=take_snapshot, on_snapshot=results.append)
    serving = asyncio.create_task(server.serve())
    holder.append(Node(server, snapshot, results, pods, cell, inputs, loopback_block()))
    try:
        yield holder[0]
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        listener.close()
        await pool.aclose()
        await secrets.close()


@contextlib.asynccontextmanager
async def running(manager: WorkloadProxyManager) -> AsyncIterator[WorkloadProxyManager]:
    task = asyncio.create_task(manager.run())
    try:
        yield manager
    finally:
        await manager.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(manager: WorkloadProxyManager, predicate, what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await manager.changed(manager.version)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; pending: {manager.pending()}") from None


async def add(node: Node, name: str, ip: str) -> None:
    """A live add through the agent's server (the fd stays the caller's, as for the real agent)."""
    fd = node.fd(name, ip)
    try:
        await node.server.add(f"uid-{name}", WorkloadInfo(name, "default", name), fd)
    finally:
        os.close(fd)


async def test_the_agents_snapshot_live_add_and_delete_drive_the_pods(node: Node) -> None:
    a_ip, b_ip = node.net + "11", node.net + "12"
    node.cell.publish(ProxyState.of(workload("a", a_ip), workload("b", b_ip)))
    node.snapshot.append(("a", a_ip))
    async with running(node.new_manager()) as manager:
        await asyncio.wait_for(node.server.wait_ready(), TIMEOUT)
        assert node.results == [{"uid-a": None}]
        await until(manager, lambda: manager.snapshot_received.is_set() and not manager.pending(), "pod a up")

        await add(node, "b", b_ip)
        await until(manager, lambda: set(manager.pods()) == {"uid-a", "uid-b"} and not manager.pending(), "b up")

        assert await node.server.delete("uid-a") == []
        assert set(manager.pods()) == {"uid-b"}


async def test_a_pod_ztunnel_cannot_serve_is_the_agents_nack_for_that_pod_only(node: Node) -> None:
    node.pods.refuse.add("uid-bad")
    async with running(node.new_manager()) as manager:
        await asyncio.wait_for(node.server.wait_ready(), TIMEOUT)
        with pytest.raises(ZtunnelNack, match="refused by the test"):
            await add(node, "bad", node.net + "9")
        assert manager.pods() == {} and node.server.ready


async def test_a_restarted_ztunnel_gets_a_fresh_snapshot(node: Node) -> None:
    ip = node.net + "11"
    node.cell.publish(ProxyState.of(workload("a", ip)))
    node.snapshot.append(("a", ip))
    async with running(node.new_manager()):
        await asyncio.wait_for(node.server.wait_ready(), TIMEOUT)
    async with running(node.new_manager()) as second:
        await until(second, lambda: second.snapshot_received.is_set() and not second.pending(), "pod a again")
        assert set(second.pods()) == {"uid-a"}
    assert node.results == [{"uid-a": None}, {"uid-a": None}]
