"""The waypoint controller against a real SQLite store: what it makes, the status it writes, idempotence,
template changes, deletion, refusals and name clashes. The local cluster's parts (VIP allocator, kubelet)
are played by plain store writes, as they would make them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from istiod_lite.waypoints import ControllerSettings, WaypointController
from istiod_lite.waypoints.objects import desired
from meshcore.store import ResourceRef, SqliteStore
from meshcore.store.resource import Resource
from meshcore.testing.resources import svc, waypoint

GW = ResourceRef("Gateway", "demo", "waypoint")
SETTINGS = ControllerSettings(xds_address="10.0.0.1:15012")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def controller(store: SqliteStore, settings: ControllerSettings = SETTINGS) -> WaypointController:
    return WaypointController(
        store, settings, metrics=CollectorRegistry(), clock=lambda: "2024-06-01T00:00:00Z"
    )


def run(c: WaypointController, store: SqliteStore, since: int = 0) -> int:
    """Feed the controller every change after ``since`` (as istiod_lite's watch does) and reconcile."""
    c.observe(e.resource for e in store.changes_since(since))
    return c.reconcile_pending()


def apply_gateway(store: SqliteStore, **kwargs: Any) -> Resource:
    gateway = waypoint(address=None, **kwargs)
    return store.apply([gateway])[0].resource


def made(store: SqliteStore) -> dict[str, list[str]]:
    return {
        kind: [r.name for r in store.list(kind, "demo") if r.labels.get("gateway.istio.io/managed")]
        for kind in ("ServiceAccount", "Pod", "Service")
    }


def conditions(store: SqliteStore) -> dict[str, tuple[str, str]]:
    gateway = store.get(GW)
    assert gateway is not None
    return {c["type"]: (c["status"], c["reason"]) for c in gateway.status.get("conditions", [])}


def allocate_vip(store: SqliteStore, ip: str = "10.96.0.50") -> None:
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None
    store.apply([msgspec.structs.replace(service, spec={**service.spec, "clusterIP": ip})])


def pod_runs(store: SqliteStore) -> None:
    (pod,) = [p for p in store.list("Pod", "demo") if p.labels.get("gateway.networking.k8s.io/gateway-name")]
    store.set_status(
        pod.ref,
        {"phase": "Running", "podIP": "10.244.1.9", "conditions": [{"type": "Ready", "status": "True"}]},
    )


def test_a_waypoint_gateway_gets_its_account_pod_and_service(store: SqliteStore) -> None:
    gateway = apply_gateway(store)
    run(controller(store), store)
    assert made(store) == {
        "ServiceAccount": ["waypoint"],
        "Pod": [desired(gateway, SETTINGS).pod.name],
        "Service": ["waypoint"],
    }
    (pod,) = store.list("Pod", "demo")
    assert pod.name.startswith("waypoint-") and len(pod.name) == len("waypoint-") + 5
    assert pod.labels["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert pod.labels["istio.io/dataplane-mode"] == "none"
    assert pod.spec["serviceAccountName"] == "waypoint"
    (container,) = pod.spec["containers"]
    assert container["command"] == ["waypoint"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["XDS_ADDRESS"] == env["CA_ADDRESS"] == "10.0.0.1:15012"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "mesh": 15008,
        "metrics": 15020,
        "status-port": 15021,
    }
    assert pod.annotations["istio.io/gateway-uid"] == gateway.uid
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None
    assert service.spec["selector"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert [(p["name"], p["port"]) for p in service.spec["ports"]] == [("mesh", 15008)]


def test_status_follows_the_vip_and_the_pod_until_programmed(store: SqliteStore) -> None:
    apply_gateway(store)
    c = controller(store)
    run(c, store)
    gateway = store.get(GW)
    assert gateway is not None
    assert gateway.status["addresses"] == [{"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"}]
    assert conditions(store) == {
        "Accepted": ("True", "Accepted"),
        "Programmed": ("False", "AddressNotAssigned"),
    }

    since = store.revision()
    allocate_vip(store)
    run(c, store, since)
    gateway = store.get(GW)
    assert gateway is not None
    assert gateway.status["addresses"] == [{"type": "IPAddress", "value": "10.96.0.50"}]
    assert conditions(store)["Programmed"] == ("False", "Pending")
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None and service.spec["clusterIP"] == "10.96.0.50"  # the allocator's write is kept

    since = store.revision()
    pod_runs(store)
    run(c, store, since)
    gateway = store.get(GW)
    assert gateway is not None
    programmed = next(c for c in gateway.status["conditions"] if c["type"] == "Programmed")
    assert programmed["status"] == "True"
    assert programmed["message"] == (
        "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008"
    )


def test_reconciling_again_changes_nothing(store: SqliteStore) -> None:
    apply_gateway(store)
    c = controller(store)
    run(c, store)
    allocate_vip(store)
    pod_runs(store)
    assert run(c, store, 0) > 0  # the VIP and the running pod change the status once
    since = store.revision()
    assert run(c, store, 0) == 0  # everything observed again: no write
    c.resync()
    assert store.revision() == since
    assert run(controller(store), store, 0) == 0  # a new controller (istiod_lite restarted) agrees


def test_deleting_the_gateway_deletes_what_was_made_and_nothing_else(store: SqliteStore) -> None:
    apply_gateway(store)
    other = waypoint("other", address=None)
    store.apply([other, svc("app", selector={"app": "x"})])
    c = controller(store)
    run(c, store)
    since = store.revision()
    store.delete([GW])
    run(c, store, since)
    assert made(store) == {
        "ServiceAccount": ["other"],
        "Pod": [p.name for p in store.list("Pod", "demo")],
        "Service": ["other"],
    }
    assert all(p.name.startswith("other-") for p in store.list("Pod", "demo"))
    assert store.get(ResourceRef("Service", "demo", "app")) is not None


def test_a_service_account_the_user_made_is_used_and_never_deleted(store: SqliteStore) -> None:
    store.apply([Resource(kind="ServiceAccount", name="waypoint", namespace="demo", api_version="v1")])
    apply_gateway(store)
    c = controller(store)
    run(c, store)
    since = store.revision()
    store.delete([GW])
    run(c, store, since)
    assert store.get(ResourceRef("ServiceAccount", "demo", "waypoint")) is not None
    assert store.list("Pod", "demo") == [] and store.list("Service", "demo") == []


def test_a_new_pod_template_replaces_the_pod(store: SqliteStore) -> None:
    apply_gateway(store)
    run(controller(store), store)
    (old,) = store.list("Pod", "demo")
    run(controller(store, ControllerSettings(xds_address="10.0.0.2:15012")), store)
    (new,) = store.list("Pod", "demo")
    assert new.name != old.name
    env = {e["name"]: e["value"] for e in new.spec["containers"][0]["env"]}
    assert env["XDS_ADDRESS"] == "10.0.0.2:15012"


def test_a_gateway_without_the_hbone_listener_is_refused_with_what_to_add(store: SqliteStore) -> None:
    apply_gateway(store, listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}])
    c = controller(store)
    run(c, store)
    assert made(store) == {"ServiceAccount": [], "Pod": [], "Service": []}
    gateway = store.get(GW)
    assert gateway is not None
    accepted = next(c for c in gateway.status["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "ListenersNotValid")
    assert "{name: mesh, port: 15008, protocol: HBONE}" in accepted["message"]
    assert "addresses" not in gateway.status

    since = store.revision()
    apply_gateway(store)  # fixed
    run(c, store, since)
    assert conditions(store)["Accepted"] == ("True", "Accepted")
    assert made(store)["Service"] == ["waypoint"]


def test_a_gateway_that_becomes_refused_loses_what_was_made(store: SqliteStore) -> None:
    apply_gateway(store)
    c = controller(store)
    run(c, store)
    since = store.revision()
    apply_gateway(store, labels={"istio.io/waypoint-for": "bogus"})
    run(c, store, since)
    assert made(store) == {"ServiceAccount": [], "Pod": [], "Service": []}
    assert conditions(store)["Accepted"] == ("False", "Invalid")


def test_a_service_already_named_like_the_gateway_is_never_taken_over(store: SqliteStore) -> None:
    store.apply([svc("waypoint", selector={"app": "mine"}, clusterIP="10.96.0.7")])
    apply_gateway(store)
    run(controller(store), store)
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None and service.spec["selector"] == {"app": "mine"}
    status, reason = conditions(store)["Programmed"]
    assert (status, reason) == ("False", "NameConflict")
    gateway = store.get(GW)
    assert gateway is not None and "addresses" not in gateway.status  # nothing binds to someone else's VIP


def test_resync_removes_what_was_made_for_a_gateway_deleted_while_istiod_was_down(store: SqliteStore) -> None:
    apply_gateway(store)
    run(controller(store), store)
    store.delete([GW])  # nobody watching
    restarted = controller(store)
    restarted.resync()
    assert made(store) == {"ServiceAccount": [], "Pod": [], "Service": []}


def test_other_gateway_classes_are_left_alone(store: SqliteStore) -> None:
    gateway = waypoint("ingress", address=None)
    store.apply([msgspec.structs.replace(gateway, spec={**gateway.spec, "gatewayClassName": "istio"})])
    run(controller(store), store)
    assert made(store) == {"ServiceAccount": [], "Pod": [], "Service": []}
    ingress = store.get(ResourceRef("Gateway", "demo", "ingress"))
    assert ingress is not None and ingress.status == {}
