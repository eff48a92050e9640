"""A real istiod_lite on loopback: store -> registry -> delta xDS, the CA's node authorization, restarts.

Everything is real (SQLite file, gRPC over TLS with node credentials, ambientctl as a subprocess); only
the ports are ephemeral. Waits are on events or polls with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore.aio.ca_client import CaCertificateProvider, CaClient, CaRefused
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.identity import SpiffeId
from meshcore.model import Action, TunnelProtocol
from meshcore.state import ProxyState
from meshcore.tls.contexts import channel_credentials, channel_options

POD = "Kubernetes//Pod/demo/{}"
MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ambientctl(state_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambientctl", "--state-dir", str(state_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config(state_dir: Path, xds_port: int = 0) -> IstiodConfig:
    return IstiodConfig(
        state_dir=state_dir,
        xds_host="127.0.0.1",
        xds_port=xds_port,
        monitoring_host="127.0.0.1",
        monitoring_port=0,
        debounce_seconds=0.02,
    )


class Node:
    """What a node's ztunnel holds: a node credential, an xDS client and a CA client."""

    def __init__(self, cp: ControlPlane, name: str, port: int) -> None:
        cred = cp.ca.issue_node_credential(name, datetime.now(UTC))
        self.name = name
        self.cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        self.xds = XdsClient(
            f"127.0.0.1:{port}",
            channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            node_id=f"ztunnel~10.0.0.1~ztunnel-{name}.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": name},
            cell=self.cell,
            channel_options=channel_options(),
        )
        self.ca = CaClient(f"127.0.0.1:{port}", cred.roots_pem, cred.key_pem, cred.chain_pem)
        self.task = asyncio.create_task(self.xds.run())

    async def close(self) -> None:
        self.xds.close()
        await asyncio.wait_for(self.task, 10)
        await self.ca.close()


@pytest.fixture
async def plane(tmp_path: Path):
    port = free_port()
    cp = ControlPlane(config(tmp_path, port))
    await cp.start()
    holder = {"cp": cp, "port": port}
    yield holder
    await holder["cp"].stop(grace=0)


async def test_pod_applied_with_ambientctl_reaches_xds_client_within_1s(plane, tmp_path):
    node = Node(plane["cp"], "node-2", plane["port"])
    try:
        await asyncio.wait_for(node.xds.ready.wait(), 10)
        # ambientctl is a separate process writing the same store; the pod must arrive within 1 s of it.
        result = await asyncio.to_thread(ambientctl, tmp_path, "apply", "-f", str(MESH))
        assert result.returncode == 0, result.stderr
        state = await node.cell.wait_for(lambda s: s.find_workload(POD.format("server")) is not None, timeout=1.0)
        server = state.find_workload(POD.format("server"))
        assert server.addresses == ("10.244.2.10",)
        assert server.tunnel_protocol == TunnelProtocol.NONE  # namespace not enabled yet
        assert state.find_service("demo/server.demo.svc.cluster.local") is not None

        result = await asyncio.to_thread(ambientctl, tmp_path, "namespace", "enable", "demo")
        assert result.returncode == 0, result.stderr
        await node.cell.wait_for(
            lambda s: s.find_workload(POD.format("server")).tunnel_protocol == TunnelProtocol.HBONE, timeout=2.0
        )
    finally:
        await node.close()


async def test_policy_change_arrives_and_l7_only_allow_rule_fails_closed(plane, tmp_path):
    node = Node(plane["cp"], "node-2", plane["port"])
    try:
        await asyncio.wait_for(node.xds.ready.wait(), 10)
        assert (await asyncio.to_thread(ambientctl, tmp_path, "apply", "-f", str(MESH))).returncode == 0
        state = await node.cell.wait_for(lambda s: "demo/server-get-only" in s.policies, timeout=2.0)
        # The ALLOW rule used `methods` (L7): dropped, leaving an ALLOW policy with no rules (fails closed).
        assert state.policies["demo/server-get-only"].rules == ()
        deny = textwrap.dedent(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: deny-all, namespace: demo}
            spec:
              action: DENY
              rules: [{}]
            """
        )
        assert (await asyncio.to_thread(ambientctl, tmp_path, "apply", "-f", "-", stdin=deny)).returncode == 0
        state = await node.cell.wait_for(lambda s: "demo/deny-all" in s.policies, timeout=2.0)
        assert state.policies["demo/deny-all"].action == Action.DENY
        assert (await asyncio.to_thread(ambientctl, tmp_path, "delete", "authorizationpolicy", "deny-all", "-n", "demo")).returncode == 0
        await node.cell.wait_for(lambda s: "demo/deny-all" not in s.policies, timeout=2.0)
    finally:
        await node.close()


async def test_restart_loses_nothing_and_pushes_what_was_applied_while_down(plane, tmp_path):
    assert (await asyncio.to_thread(ambientctl, tmp_path, "apply", "-f", str(MESH))).returncode == 0
    node = Node(plane["cp"], "node-1", plane["port"])
    try:
        await node.cell.wait_for(lambda s: s.find_workload(POD.format("client")) is not None, timeout=5.0)
        await plane["cp"].stop(grace=0)
        # While the control plane is down: enable the namespace (a change it has never seen).
        assert (await asyncio.to_thread(ambientctl, tmp_path, "namespace", "enable", "demo")).returncode == 0
        cp2 = ControlPlane(config(tmp_path, plane["port"]))
        await cp2.start()
        plane["cp"] = cp2
        state = await node.cell.wait_for(
            lambda s: (w := s.find_workload(POD.format("client"))) is not None
            and w.tunnel_protocol == TunnelProtocol.HBONE,
            timeout=20.0,
        )
        assert state.find_workload(POD.format("server")) is not None
        assert "demo/server-allow-client" in state.policies
    finally:
        await node.close()


async def test_node_credential_of_node_a_cannot_get_certificate_for_pod_on_node_b(plane, tmp_path):
    assert (await asyncio.to_thread(ambientctl, tmp_path, "apply", "-f", str(MESH))).returncode == 0
    # The registry must have seen the pods before the CA can authorize by node.
    cp: ControlPlane = plane["cp"]
    deadline = asyncio.get_running_loop().time() + 5
    while cp.snapshot.find_pod("demo", "server") is None:
        assert asyncio.get_running_loop().time() < deadline, "registry never saw the pods"
        await asyncio.sleep(0.01)
    server_id = SpiffeId("cluster.local", "demo", "server")
    node1 = Node(cp, "node-1", plane["port"])  # runs the client pod only
    node2 = Node(cp, "node-2", plane["port"])  # runs the server pod
    try:
        bundle = await CaCertificateProvider(node2.ca).fetch(server_id)
        assert bundle.identity == server_id
        with pytest.raises(CaRefused) as refused:
            await CaCertificateProvider(node1.ca).fetch(server_id)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "node-1" in refused.value.message
    finally:
        await node1.close()
        await node2.close()
