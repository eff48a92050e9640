"""A real istiod_lite on an embedded SQLite store writes ``status.conditions`` on AuthorizationPolicies: the
right condition per policy at the policy's generation, again when a waypoint appears for a targetRef, and
never in a loop (its own status write comes back through the watch and writes nothing). Waits poll with a
deadline; "quiet" means istiod has read the store's latest revision and written nothing after it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ambientctl.commands.applystatus import report_policy_status
from istiod_lite.app import STATUS_WRITES_PER_TURN, ControlPlane
from meshcore.store import ResourceRef, SqliteStore, store_path
from meshcore.testing.resources import AMBIENT, authz, ns, waypoint
from meshcore.testing.waits import eventually

DEADLINE = 10.0
GATEWAY = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}


@pytest.fixture
async def plane(plane: ControlPlane) -> ControlPlane:
    """The shared plane (conftest) with the ambient namespace ``demo``."""
    plane.store.apply([ns("demo", **AMBIENT)])
    return plane


def observed(plane: ControlPlane, name: str) -> dict[str, tuple[str, str, str]] | None:
    """The policy's conditions by type, once every one observes the stored generation."""
    r = plane.store.get(ResourceRef("AuthorizationPolicy", "demo", name))
    if r is None:
        return None
    conds = r.status.get("conditions") or []
    if not conds or any(c.get("observedGeneration") != r.generation for c in conds):
        return None
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


def quiet(plane: ControlPlane) -> bool:
    return plane._revision == plane.store.revision()


def writes(plane: ControlPlane) -> float:
    return plane.metrics.get_sample_value("istiod_lite_policy_status_writes_total") or 0.0


async def test_each_policy_gets_its_condition_at_its_generation(plane: ControlPlane) -> None:
    plane.store.apply(
        [
            authz("l4", selector={"matchLabels": {"app": "a"}}, rules=[{"from": [{"source": {"namespaces": ["x"]}}]}]),
            authz("get-only", selector={"matchLabels": {"app": "a"}}, rules=[{"to": [{"operation": {"methods": ["GET"]}}]}]),
            authz("ext", action="CUSTOM", provider={"name": "opa"}, rules=[{}]),
            authz("at-waypoint", targetRefs=[GATEWAY], rules=[{"to": [{"operation": {"methods": ["GET"]}}]}]),
        ]
    )
    l4 = await eventually(lambda: observed(plane, "l4"), "the L4 policy's status")
    assert l4["ZtunnelAccepted"][:2] == ("True", "Accepted")
    dropped = await eventually(lambda: observed(plane, "get-only"), "the L7 selector policy's status")
    assert dropped["ZtunnelAccepted"][:2] == ("True", "UnsupportedValue")
    assert "methods" in dropped["ZtunnelAccepted"][2]
    ext = await eventually(lambda: observed(plane, "ext"), "the CUSTOM policy's status")
    assert ext["ZtunnelAccepted"][:2] == ("False", "UnsupportedValue")
    unbound = await eventually(lambda: observed(plane, "at-waypoint"), "the waypoint policy's status")
    assert set(unbound) == {"WaypointAccepted"}
    assert unbound["WaypointAccepted"][:2] == ("False", "TargetNotFound")

    # The waypoint appears: the policy is bound without being touched (its generation is still 1).
    first_time = plane.store.get(ResourceRef("AuthorizationPolicy", "demo", "at-waypoint")).status  # type: ignore[union-attr]
    plane.store.apply([waypoint("waypoint", address="10.96.100.1")])

    def bound() -> Any:
        found = observed(plane, "at-waypoint")
        return found if found and found["WaypointAccepted"][0] == "True" else None

    now_bound = await eventually(bound, "the waypoint policy bound once its waypoint exists")
    assert now_bound["WaypointAccepted"][1:] == ("Accepted", "bound to waypoint demo/waypoint")
    got = plane.store.get(ResourceRef("AuthorizationPolicy", "demo", "at-waypoint"))
    assert got is not None and got.generation == 1
    assert got.status["conditions"][0]["observedGeneration"] == 1
    assert first_time["conditions"][0]["status"] == "False"


async def test_n_applies_write_n_statuses_and_no_loop(plane: ControlPlane) -> None:
    n = 6
    ref = ResourceRef("AuthorizationPolicy", "demo", "p")
    for i in range(n):  # each apply changes the spec (a new generation); wait for its status each time
        ports = [str(8000 + i)]
        plane.store.apply([authz("p", selector={"matchLabels": {"app": "a"}}, rules=[{"to": [{"operation": {"ports": ports}}]}])])
        await eventually(lambda: observed(plane, "p"), f"the status at generation {i + 1}")
    got = plane.store.get(ref)
    assert got is not None and got.generation == n
    await eventually(lambda: quiet(plane), "istiod to read its own write and write nothing more")
    assert writes(plane) == n  # one write per generation: our own writes triggered none

    # A write that leaves the spec alone changes no condition: nothing is written.
    plane.store.set_labels(ref, {"team": "b"}, ())
    await eventually(lambda: quiet(plane), "istiod to read the label change")
    assert writes(plane) == n
    # A status wiped by someone else is written back once.
    plane.store.set_status(ref, {})
    await eventually(lambda: observed(plane, "p") and quiet(plane), "istiod to write the wiped status back")
    assert writes(plane) == n + 1


async def test_a_bulk_apply_is_written_over_several_turns_of_the_watch_loop(plane: ControlPlane) -> None:
    n = 3 * STATUS_WRITES_PER_TURN + 5
    plane.store.apply([authz(f"p{i}", selector={"matchLabels": {"app": f"a{i}"}}) for i in range(n)])
    first = await eventually(lambda: writes(plane), "the first status writes")
    assert first <= STATUS_WRITES_PER_TURN  # one turn's budget, then the loop yields to xDS and the CA
    await eventually(lambda: all(observed(plane, f"p{i}") for i in range(n)) and quiet(plane), "every status")
    assert writes(plane) == n


async def test_a_deleted_policy_is_skipped(plane: ControlPlane) -> None:
    plane.store.apply([authz("gone", selector={"matchLabels": {"app": "a"}})])
    plane.store.delete([ResourceRef("AuthorizationPolicy", "demo", "gone")])
    plane.store.apply([authz("kept", selector={"matchLabels": {"app": "a"}})])
    await eventually(lambda: observed(plane, "kept"), "the policy applied after the deleted one")
    assert plane.store.get(ResourceRef("AuthorizationPolicy", "demo", "gone")) is None


async def test_apply_reports_istiods_warnings_for_what_it_just_applied(plane: ControlPlane) -> None:
    # ambientctl's side, as ``apply`` runs it once istiod-lite is up: a blocking poll, so off the loop.
    applied = [
        authz("fine", selector={"matchLabels": {"app": "a"}}),
        authz("ext", action="CUSTOM", provider={"name": "opa"}, rules=[{}]),
        authz("at-waypoint", targetRefs=[{**GATEWAY, "name": "nowhere"}]),
    ]
    lines: list[str] = []
    with SqliteStore(store_path(plane.config.state_dir)) as cli_store:  # another process's handle
        cli_store.apply(applied)
        await asyncio.to_thread(report_policy_status, cli_store, applied, timeout=DEADLINE, emit=lines.append)
    assert [line.split(":")[1].strip() for line in lines] == ["authorizationpolicy/ext", "authorizationpolicy/at-waypoint"]
    assert all(line.startswith("Warning: ") for line in lines)
    assert "CUSTOM" in lines[0] and "ambientctl waypoint apply -n demo --name nowhere" in lines[1]
