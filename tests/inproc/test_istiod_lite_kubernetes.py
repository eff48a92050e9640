"""istiod_lite on the Kubernetes store (STORE=kubernetes, a kubeconfig) against the test kit's API server
stand-in: pods that appear, change and vanish reach a delta-xDS client in order, a 410 Gone re-lists
without losing a pod, and route status goes back to the API server once, by server-side apply."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.state import ProxyState
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig
from meshcore.tls.contexts import channel_credentials, channel_options

UID = "Kubernetes//Pod/demo/{}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod(name: str, ip: str, node: str = "node-1", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo", "labels": {"app": name, **labels}},
            "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ip}}


@pytest.fixture
async def plane(api: ThreadedKubeApi, tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, int]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    port = free_port()
    cp = ControlPlane(IstiodConfig(
        state_dir=tmp_path, xds_host="127.0.0.1", xds_port=port, monitoring_host="127.0.0.1", monitoring_port=0,
        debounce_seconds=0.02, store="kubernetes", kubeconfig=str(kubeconfig), kube_context="standin",
    ))
    await cp.start()
    try:
        yield cp, port
    finally:
        await cp.stop(grace=0)


class Node:
    def __init__(self, cp: ControlPlane, port: int, name: str = "node-1") -> None:
        cred = cp.ca.issue_node_credential(name, datetime.now(UTC))
        self.cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        self.xds = XdsClient(
            f"127.0.0.1:{port}", channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            node_id=f"ztunnel~10.0.0.1~ztunnel-{name}.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": name}, cell=self.cell, channel_options=channel_options(),
        )
        self.task = asyncio.create_task(self.xds.run())

    async def close(self) -> None:
        self.xds.close()
        await asyncio.wait_for(self.task, 10)


async def test_pods_appear_change_and_vanish_at_the_xds_client_in_order(
    api: ThreadedKubeApi, plane: tuple[ControlPlane, int]
) -> None:
    cp, port = plane
    node = Node(cp, port)
    try:
        await asyncio.wait_for(node.xds.ready.wait(), 10)
        await asyncio.to_thread(api.call, api.server.put_object, pod("a", "10.244.1.10"))
        state = await node.cell.wait_for(lambda s: s.find_workload(UID.format("a")) is not None, timeout=5)
        assert state.find_workload(UID.format("a")).addresses == ("10.244.1.10",)
        await asyncio.to_thread(api.call, api.server.put_object, pod("a", "10.244.1.11"))
        await node.cell.wait_for(
            lambda s: (w := s.find_workload(UID.format("a"))) is not None and w.addresses == ("10.244.1.11",),
            timeout=5,
        )
        await asyncio.to_thread(api.call, api.server.delete_object, "Pod", "demo", "a")
        await node.cell.wait_for(lambda s: s.find_workload(UID.format("a")) is None, timeout=5)
    finally:
        await node.close()


async def test_a_410_gone_relists_and_the_xds_client_loses_nothing(
    api: ThreadedKubeApi, plane: tuple[ControlPlane, int]
) -> None:
    cp, port = plane
    await asyncio.to_thread(api.call, api.server.put_object, pod("kept", "10.244.1.20"))
    node = Node(cp, port)
    try:
        await node.cell.wait_for(lambda s: s.find_workload(UID.format("kept")) is not None, timeout=5)

        def behind_the_watchs_back() -> None:
            server = api.server
            server.stall_watches()
            server.put_object(pod("added", "10.244.1.21"))
            server.delete_object("Pod", "demo", "kept")
            server.compact()
            server.close_watches()

        await asyncio.to_thread(api.call, behind_the_watchs_back)
        state = await node.cell.wait_for(
            lambda s: s.find_workload(UID.format("added")) is not None and s.find_workload(UID.format("kept")) is None,
            timeout=10,
        )
        assert state.find_workload(UID.format("added")).addresses == ("10.244.1.21",)
        assert cp.store.stats["relists_gone"] >= 1  # type: ignore[attr-defined]
    finally:
        await node.close()


async def test_route_status_is_written_back_once_by_server_side_apply(
    api: ThreadedKubeApi, plane: tuple[ControlPlane, int]
) -> None:
    cp, port = plane
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": "demo"},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "server"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "demo"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "server"}],
                      "rules": [{"backendRefs": [{"name": "server", "port": 80}]}]}}
    for doc in (service, route):
        await asyncio.to_thread(api.call, api.server.put_object, doc)

    async def status() -> dict[str, Any]:
        got = await asyncio.to_thread(api.call, api.server.get_object, "HTTPRoute", "demo", "r")
        return dict(got.get("status") or {})

    for _ in range(500):  # polled with a deadline: up to 10 s
        if (await status()).get("parents"):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("istiod-lite wrote no status for the route")
    stored = await asyncio.to_thread(api.call, api.server.get_object, "HTTPRoute", "demo", "r")
    assert ("istiod-lite", "status") in {(f["manager"], f.get("subresource")) for f in stored["metadata"]["managedFields"]}
    # Another change goes through the whole pipeline; the route's status is not written again.
    node = Node(cp, port)
    try:
        await asyncio.to_thread(api.call, api.server.put_object, pod("later", "10.244.1.30"))
        await node.cell.wait_for(lambda s: s.find_workload(UID.format("later")) is not None, timeout=5)
    finally:
        await node.close()
    writes = [r for r in api.server.requests if r.resource == "httproutes" and r.subresource == "status"]
    assert len(writes) == 1
