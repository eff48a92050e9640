"""A real istiod_lite on loopback: a per-service-account waypoint Gateway -> the controller's objects ->
the Gateway's address -> Workload.waypoint and Service.waypoint at a real delta-xDS client; deleting the
Gateway returns them to unset. The local cluster's Deployment controller (the real one) makes the
waypoint's pod from the controller's Deployment; its VIP allocator and kubelet are played by store writes
from a second store handle (as another process would write them). Waits are event/deadline based.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ambientctl.cluster.deployments import DeploymentController
from istiod_lite.app import ControlPlane
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.model import GatewayAddress, NetworkAddress
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL
from meshcore.state import ProxyState
from meshcore.store import ResourceRef, SqliteStore
from meshcore.store.paths import store_path
from meshcore.testing.resources import AMBIENT, authz, ns, pod, svc, waypoint
from meshcore.testing.resources import pod_uid as uid
from meshcore.testing.waits import eventually
from meshcore.tls.contexts import channel_credentials, channel_options

SERVER_SVC = "demo/server.demo.svc.cluster.local"
WAYPOINT_VIP = "10.96.50.1"
DEADLINE = 10.0


@pytest.fixture
def istiod_overrides() -> dict[str, Any]:
    return {"waypoint_xds_address": "127.0.0.1:15012"}


@pytest.fixture
async def cell(plane: ControlPlane) -> AsyncIterator[StateCell[ProxyState]]:
    cred = plane.ca.issue_node_credential("node-1", datetime.now(UTC))
    state: StateCell[ProxyState] = StateCell(ProxyState.empty())
    client = XdsClient(
        f"127.0.0.1:{plane.xds_port}",
        channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
        node_id="ztunnel~10.0.0.1~ztunnel-node-1.istio-system~istio-system.svc.cluster.local",
        metadata={"NODE_NAME": "node-1"},
        cell=state,
        channel_options=channel_options(),
    )
    task = asyncio.create_task(client.run())
    try:
        yield state
    finally:
        client.close()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def other_process(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(store_path(tmp_path))
    yield store
    store.close()


async def test_a_per_sa_waypoint_binds_once_programmed_and_unbinds_when_deleted(
    plane: ControlPlane, cell: StateCell[ProxyState], other_process: SqliteStore
) -> None:
    store = other_process
    store.apply(
        [
            ns("demo", **AMBIENT),
            pod("server-1", labels={"app": "server"}, sa="server", ip="10.244.1.10"),
            pod("client", labels={"app": "client"}, sa="client", ip="10.244.1.11"),
            svc("server", selector={"app": "server"}, clusterIP="10.96.0.10"),
        ]
    )
    await cell.wait_for(lambda s: s.find_service(SERVER_SVC) is not None, timeout=DEADLINE)

    store.apply(
        [waypoint("server-waypoint", address=None, annotations={"istio.io/for-service-account": "server"})]
    )
    deployments = DeploymentController(store)

    def waypoint_pods() -> list[Any]:
        deployments.sync()  # the local cluster's Deployment controller, on every change it sees
        return [p for p in store.list("Pod", "demo") if p.name.startswith("server-waypoint-")]

    # The controller makes the waypoint's Service and Deployment (whose pod the cluster makes) and writes
    # a Hostname address (no VIP yet) ...
    wp_service = await eventually(
        lambda: store.get(ResourceRef("Service", "demo", "server-waypoint")), "the waypoint's Service"
    )
    (wp_pod,) = await eventually(waypoint_pods, "the waypoint's Deployment's pod")
    gateway = await eventually(
        lambda: (
            (g := store.get(ResourceRef("Gateway", "demo", "server-waypoint")))
            and g.status.get("addresses")
            and g
        ),
        "the Gateway's Hostname address",
    )
    assert gateway.status["addresses"][0]["type"] == "Hostname"
    # ... so nothing is bound yet: traffic stays L4-only.
    assert "not ready" in plane.snapshot.waypoint_bindings[SERVER_SVC].reason
    assert cell.current().find_workload(uid("demo", "server-1")).waypoint is None

    # The cluster allocates the VIP and runs the pod (the local cluster's writes).
    store.apply([msgspec.structs.replace(wp_service, spec={**wp_service.spec, "clusterIP": WAYPOINT_VIP})])
    store.set_status(
        wp_pod.ref,
        {"phase": "Running", "podIP": "10.244.1.50", "conditions": [{"type": "Ready", "status": "True"}]},
    )
    expected = GatewayAddress(address=NetworkAddress(WAYPOINT_VIP, ""), hbone_mtls_port=15008)
    state = await cell.wait_for(
        lambda s: (
            s.find_service(SERVER_SVC).waypoint == expected
            and s.find_workload(uid("demo", "server-1")).waypoint == expected
        ),
        timeout=DEADLINE,
    )
    assert state.find_workload(uid("demo", "client")).waypoint is None  # another account
    waypoint_pod = state.find_workload(uid("demo", wp_pod.name))
    assert waypoint_pod is not None and waypoint_pod.waypoint is None  # its own pod: never bound
    assert waypoint_pod.native_tunnel
    programmed = await eventually(
        lambda: next(
            (
                c
                for c in (store.get(ResourceRef("Gateway", "demo", "server-waypoint")) or gateway).status.get(
                    "conditions", []
                )
                if c["type"] == "Programmed" and c["status"] == "True"
            ),
            None,
        ),
        "Programmed=True",
    )
    assert programmed["message"].endswith("server-waypoint.demo.svc.cluster.local:15008")

    # An L7 policy for the waypoint is compiled and served under its own type.
    store.apply(
        [
            authz(
                "get-only",
                targetRefs=[
                    {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "server-waypoint"}
                ],
                rules=[{"to": [{"operation": {"methods": ["GET"]}}]}],
            )
        ]
    )
    await eventually(
        lambda: "demo/get-only" in plane.push.resource_versions(L7_AUTHORIZATION_TYPE_URL), "L7 policy"
    )

    # Deleting the Gateway deletes what the controller made and unbinds everything.
    store.delete([ResourceRef("Gateway", "demo", "server-waypoint")])
    await cell.wait_for(
        lambda s: (
            s.find_service(SERVER_SVC).waypoint is None
            and s.find_workload(uid("demo", "server-1")).waypoint is None
        ),
        timeout=DEADLINE,
    )
    await eventually(
        lambda: (
            store.get(ResourceRef("Service", "demo", "server-waypoint")) is None
            and store.get(ResourceRef("Deployment", "demo", "server-waypoint")) is None
            and not waypoint_pods()
        ),
        "the controller's objects to go",
    )
