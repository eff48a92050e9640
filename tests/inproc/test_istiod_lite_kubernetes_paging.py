"""istiod_lite on the Kubernetes store starts from a list read in chunks (limit/continue): with more pods
than one chunk and the first continue token expiring (410) during the start, the list starts again and a
delta-xDS client gets every pod exactly once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.state import ProxyState
from meshcore.store.kubernetes import DEFAULT_PAGE_SIZE
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig
from meshcore.tls.contexts import channel_credentials, channel_options

PODS = DEFAULT_PAGE_SIZE * 2 + 7  # three chunks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "demo", "labels": {"app": "p"}},
            "spec": {"nodeName": f"node-{i % 3}", "serviceAccountName": "default",
                     "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": f"10.244.{i >> 8}.{i & 255}"}}


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        def fill() -> None:
            server.server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}})
            server.server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
            for i in range(PODS):
                server.server.put_object(pod(i))
            server.server.expire_continue_tokens(1)

        server.call(fill)
        yield server


async def test_a_chunked_start_with_an_expired_continue_token_serves_every_pod_once(
    api: ThreadedKubeApi, tmp_path: Path
) -> None:
    port = free_port()
    cp = ControlPlane(IstiodConfig(
        state_dir=tmp_path, xds_host="127.0.0.1", xds_port=port, monitoring_host="127.0.0.1", monitoring_port=0,
        debounce_seconds=0.02, store="kubernetes", kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
        kube_context="standin",
    ))
    await cp.start()
    try:
        assert cp.store.stats["list_continue_expired"] == 1  # type: ignore[attr-defined]
        added = [e.resource.name for e in cp.store.changes_since(0) if e.resource.kind == "Pod"]
        assert sorted(added) == sorted(f"p{i}" for i in range(PODS))  # each once

        cred = cp.ca.issue_node_credential("node-1", datetime.now(UTC))
        cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        xds = XdsClient(
            f"127.0.0.1:{port}", channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            node_id="ztunnel~10.0.0.1~ztunnel-node-1.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": "node-1"}, cell=cell, channel_options=channel_options(),
        )
        task = asyncio.create_task(xds.run())
        try:
            state = await cell.wait_for(lambda s: len(s.workloads) >= PODS, timeout=30)
            assert {w.name for w in state.workloads.values()} >= {f"p{i}" for i in range(PODS)}
        finally:
            xds.close()
            await asyncio.wait_for(task, 10)
    finally:
        await cp.stop(grace=0)
