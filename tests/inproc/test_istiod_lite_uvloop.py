"""istiod-lite runs on uvloop (its ``__main__`` uses it when installed): delta xDS and the CA over gRPC/TLS
must work there, server and client on the same uvloop loop. Loopback only; waits are bounded."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore.aio.ca_client import CaCertificateProvider, CaClient
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.identity import SpiffeId
from meshcore.model import TunnelProtocol
from meshcore.state import ProxyState
from meshcore.store.resource import Resource
from meshcore.tls.contexts import channel_credentials, channel_options

NODE = "node-1"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod(name: str, ip: str) -> Resource:
    return Resource(
        kind="Pod",
        name=name,
        namespace="shop",
        labels={"app": "web"},
        spec={"nodeName": NODE, "serviceAccountName": "web", "containers": [{"name": "app"}]},
        status={"phase": "Running", "podIP": ip},
    )


async def _scenario(state_dir: Path) -> tuple[str, ProxyState, SpiffeId]:
    port = _free_port()
    cp = ControlPlane(
        IstiodConfig(
            state_dir=state_dir,
            xds_host="127.0.0.1",
            xds_port=port,
            monitoring_host="127.0.0.1",
            monitoring_port=0,
            debounce_seconds=0.02,
        )
    )
    await cp.start()
    try:
        cp.store.apply([Resource(kind="Namespace", name="shop", labels=AMBIENT), _pod("web-1", "10.244.1.5")])
        cred = cp.ca.issue_node_credential(NODE, datetime.now(UTC))
        cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        xds = XdsClient(
            f"127.0.0.1:{port}",
            channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            node_id=f"ztunnel~10.0.0.1~ztunnel-{NODE}.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": NODE},
            cell=cell,
            channel_options=channel_options(),
        )
        task = asyncio.create_task(xds.run())
        try:
            state = await cell.wait_for(lambda s: s.find_workload_by_addr("10.244.1.5") is not None, timeout=10)
            cp.store.apply([_pod("web-2", "10.244.1.6")])  # a later change arrives as a delta
            state = await cell.wait_for(lambda s: s.find_workload_by_addr("10.244.1.6") is not None, timeout=10)
            identity = SpiffeId("cluster.local", "shop", "web")
            async with CaClient(f"127.0.0.1:{port}", cred.roots_pem, cred.key_pem, cred.chain_pem) as ca:
                bundle = await CaCertificateProvider(ca).fetch(identity)
        finally:
            xds.close()
            await asyncio.wait_for(task, 10)
        return type(asyncio.get_running_loop()).__module__, state, bundle.identity
    finally:
        await cp.stop(grace=0)


def test_xds_and_the_ca_work_when_server_and_client_run_on_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop_module, state, issued_to = runner.run(_scenario(tmp_path))
    assert loop_module.startswith("uvloop")
    web1 = state.find_workload_by_addr("10.244.1.5")
    assert web1 is not None and web1.tunnel_protocol == TunnelProtocol.HBONE and web1.node == NODE
    assert state.find_workload_by_addr("10.244.1.6") is not None
    assert issued_to == SpiffeId("cluster.local", "shop", "web")
