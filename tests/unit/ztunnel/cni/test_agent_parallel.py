"""The node agent's MAX_PARALLEL bounds the kernel step (installing or removing redirection) and nothing
else: a ztunnel slow to acknowledge, or a slow store, must not hold up other pods' captures. One process,
no root: a gated recording redirector, a fake ztunnel, every pod's "netns" this
process's own (a ztunnel that acked its snapshot, then stops answering)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from meshcore.store import ResourceRef, SqliteStore, build_resource
from ztunnel.cni.agent import NodeAgent
from ztunnel.cni.events import PluginEvent, send_event
from ztunnel.cni.testing import FakeZtunnel, agent_config

TIMEOUT = 5.0
PODS = 6


class GatedRedirector:
    """Counts applies in progress (and the most at once); each apply waits until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.inside = 0
        self.peak = 0
        self.applied = 0

    async def apply(self, netns_fd: int) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        self.applied += 1

    async def remove(self, netns_fd: int) -> None:
        pass


async def eventually(predicate: Callable[[], bool], what: str, within: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"{what} not reached within {within}s")
        await asyncio.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


async def test_only_the_kernel_step_is_bounded_and_an_unanswering_ztunnel_holds_up_no_capture(
    tmp_path: Path, store: SqliteStore
) -> None:
    config = agent_config(
        tmp_path,
        zds_ack_timeout=3.0,  # longer than the whole test: a held slot would show
        max_parallel=2,
    )
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "demo"},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running"},
        }
        for i in range(PODS)
    ]
    store.apply([build_resource(ns), *(build_resource(p) for p in pods)])
    redirector = GatedRedirector()
    agent = NodeAgent(config, store, redirector=redirector)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await agent.started.wait()
        async with FakeZtunnel(config.zds_socket) as zt:
            await eventually(lambda: agent.ztunnel_ready, "ztunnel connected past its snapshot")
            zt.silent = True  # from now on no request is acknowledged
            for i in range(PODS):  # the runtime told the agent where each pod's netns is
                event = PluginEvent(
                    cmd="add",
                    pod_namespace="demo",
                    pod_name=f"p{i}",
                    container_id=f"c{i}",
                    netns="/proc/self/ns/net",
                )
                await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)
            store.set_labels(ResourceRef("Namespace", "", "demo"), {"istio.io/dataplane-mode": "ambient"}, [])
            await eventually(lambda: redirector.inside == 2, "two pods in the kernel step")
            redirector.gate.set()
            # Every pod gets its rules although no AddWorkload is ever acknowledged.
            await eventually(lambda: len(agent.captured()) == PODS, "every pod redirected", within=2.0)
            assert redirector.applied == PODS and redirector.peak == 2
            assert not any(handed for _, handed in agent.captured().values())
            assert any(type(r).__name__ == "AddWorkload" for r in zt.requests)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
