"""istiod_lite compiles traffic resources and pushes ServiceTraffic to a waypoint's xDS client; a bad route
is refused alone with its status written back, the rest applies. Waits are event/deadline based."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from istiod_lite.app import ControlPlane
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.model.traffic import BackendRef
from meshcore.store import ResourceRef
from meshcore.store.resource import Resource
from meshcore.testing.resources import AMBIENT, ns, pod, svc
from meshcore.testing.waits import eventually
from meshcore.tls.contexts import channel_credentials, channel_options
from waypoint.state import WAYPOINT_KINDS, WaypointState

ECHO = "demo/echo.demo.svc.cluster.local"
DEADLINE = 10.0


@pytest.fixture
async def cell(plane: ControlPlane) -> AsyncIterator[StateCell[WaypointState]]:
    cred = plane.ca.issue_node_credential("node-1", datetime.now(UTC))
    state: StateCell[WaypointState] = StateCell(WaypointState())
    client = XdsClient(
        f"127.0.0.1:{plane.xds_port}",
        channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
        node_id="waypoint~10.0.0.9~waypoint.demo~demo.svc.cluster.local",
        metadata={"NAMESPACE": "demo"},
        cell=state,
        kinds=WAYPOINT_KINDS,
        channel_options=channel_options(),
    )
    task = asyncio.create_task(client.run())
    try:
        yield state
    finally:
        client.close()
        await asyncio.wait_for(task, 10)


def route(name: str, *backends: tuple[str, int]) -> Resource:
    return Resource("HTTPRoute", name, "demo", "gateway.networking.k8s.io/v1", spec={
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
                   "backendRefs": [{"name": n, "port": 80, "weight": w} for n, w in backends]}],
    })


def conditions(plane: ControlPlane, name: str) -> dict[str, tuple[str, str, str]]:
    r = plane.store.get(ResourceRef("HTTPRoute", "demo", name))
    parents = (r.status.get("parents") or [{}]) if r is not None else [{}]
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in parents[0].get("conditions", [])}


async def test_routes_reach_the_waypoint_and_a_bad_one_is_refused_alone(
    plane: ControlPlane, cell: StateCell[WaypointState]
) -> None:
    plane.store.apply([
        ns("demo", **AMBIENT),
        pod("echo-1", labels={"app": "echo", "version": "v1"}, ip="10.244.0.11"),
        pod("echo-2", labels={"app": "echo", "version": "v2"}, ip="10.244.0.12"),
        svc("echo", selector={"app": "echo"}),
        svc("echo-v1", selector={"app": "echo", "version": "v1"}),
        svc("echo-v2", selector={"app": "echo", "version": "v2"}),
    ])
    plane.store.apply([route("canary", ("echo-v1", 90), ("echo-v2", 10)), route("broken", ("no-such-service", 1))])

    state = await cell.wait_for(lambda s: ECHO in s.traffic, timeout=DEADLINE)
    (rule,) = state.traffic[ECHO].routes
    assert rule.origin == "HTTPRoute demo/canary"
    assert rule.backends == (BackendRef("demo", "echo-v1.demo.svc.cluster.local", 80, "", 90),
                             BackendRef("demo", "echo-v2.demo.svc.cluster.local", 80, "", 10))

    broken = await eventually(lambda: conditions(plane, "broken"), "the broken route's status")
    assert broken["Accepted"][:2] == ("False", "UnsupportedValue")
    assert broken["ResolvedRefs"][:2] == ("False", "BackendNotFound")
    assert "spec.rules[0].backendRefs[0].name" in broken["ResolvedRefs"][2]
    assert "no-such-service" in broken["ResolvedRefs"][2]
    good = await eventually(lambda: conditions(plane, "canary"), "the good route's status")
    assert good["Accepted"][:2] == ("True", "Accepted")

    # Creating the missing Service makes the broken route apply; /broken and /canary are prefixes of the
    # same length, so the Gateway API's tie-break orders them by namespace/name.
    plane.store.apply([svc("no-such-service", selector={"app": "echo"})])
    state = await cell.wait_for(lambda s: len(s.traffic[ECHO].routes) == 2, timeout=DEADLINE)
    assert [r.origin for r in state.traffic[ECHO].routes] == ["HTTPRoute demo/broken", "HTTPRoute demo/canary"]
    await eventually(lambda: conditions(plane, "broken").get("Accepted", ("",))[0] == "True", "broken accepted")

    # Deleting every route removes the service's resource from the waypoint.
    plane.store.delete([ResourceRef("HTTPRoute", "demo", "canary"), ResourceRef("HTTPRoute", "demo", "broken")])
    await cell.wait_for(lambda s: ECHO not in s.traffic, timeout=DEADLINE)
