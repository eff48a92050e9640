"""The waypoint controller against a real SQLite store: what it makes (a Deployment, its Service and
ServiceAccount), the status it writes, idempotence, template changes, the migration from bare pods,
deletion, refusals and name clashes. The local cluster's parts are the real ones where they are pure
store writers (its Deployment controller, ``ambientctl.cluster.deployments``, makes the pods from the
template exactly as on ``cluster up``); the VIP allocator and the kubelet's status writes are played by
plain store writes, as they would make them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from ambientctl.cluster.deployments import OWNER_ANNOTATION, DeploymentController
from ambientctl.cluster.probes import parse_probe
from istiod_lite.waypoints import ControllerSettings, WaypointController
from istiod_lite.waypoints.controller import OWNED_KINDS
from istiod_lite.waypoints.objects import contains, deployment_update, desired
from meshcore.store import ResourceRef, SqliteStore, build_resource
from meshcore.store.kinds import plural
from meshcore.store.kubernetes import DEFAULT_KINDS, rbac_rules
from meshcore.store.resource import KINDS, OwnerReference, Resource
from meshcore.testing.resources import svc, waypoint
from waypoint.config import parse_config

GW = ResourceRef("Gateway", "demo", "waypoint")
DEPLOYMENT = ResourceRef("Deployment", "demo", "waypoint")
SETTINGS = ControllerSettings(xds_address="10.0.0.1:15012")
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED = {NAME_LABEL: "waypoint", "gateway.istio.io/managed": "istio.io-mesh-controller"}


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
        for kind in ("ServiceAccount", "Deployment", "Service")
    }


def waypoint_pods(store: SqliteStore) -> list[Resource]:
    return [p for p in store.list("Pod", "demo") if p.labels.get(NAME_LABEL)]


def conditions(store: SqliteStore) -> dict[str, tuple[str, str]]:
    gateway = store.get(GW)
    assert gateway is not None
    return {c["type"]: (c["status"], c["reason"]) for c in gateway.status.get("conditions", [])}


def programmed_message(store: SqliteStore) -> str:
    gateway = store.get(GW)
    assert gateway is not None
    return str(next(c for c in gateway.status["conditions"] if c["type"] == "Programmed")["message"])


def allocate_vip(store: SqliteStore, ip: str = "10.96.0.50") -> None:
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None
    store.apply([msgspec.structs.replace(service, spec={**service.spec, "clusterIP": ip})])


def pods_run(store: SqliteStore) -> None:
    """What the kubelet writes once a pod's process runs (no readinessProbe: Ready at once)."""
    for pod in waypoint_pods(store):
        store.set_status(
            pod.ref,
            {"phase": "Running", "podIP": "10.244.1.9", "conditions": [{"type": "Ready", "status": "True"}]},
        )


def local_cluster(store: SqliteStore) -> DeploymentController:
    return DeploymentController(store, rng=random.Random(7))


def waypoint_running(store: SqliteStore) -> tuple[WaypointController, DeploymentController]:
    """A Gateway reconciled, its Service given a VIP, its Deployment's pod made and running (not yet
    observed by the controller)."""
    apply_gateway(store)
    c, deployments = controller(store), local_cluster(store)
    run(c, store)
    allocate_vip(store)
    deployments.sync()
    pods_run(store)
    return c, deployments


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_a_waypoint_gateway_gets_its_account_deployment_and_service(store: SqliteStore) -> None:
    gateway = apply_gateway(store, uid="")
    run(controller(store), store)
    assert made(store) == {
        "ServiceAccount": ["waypoint"],
        "Deployment": ["waypoint"],
        "Service": ["waypoint"],
    }
    assert waypoint_pods(store) == []  # pods are the Deployment controller's to make
    deployment = store.get(DEPLOYMENT)
    assert deployment is not None and deployment.api_version == "apps/v1"
    stored_gateway = store.get(GW)
    assert stored_gateway is not None
    assert deployment.annotations["istio.io/gateway-uid"] == stored_gateway.uid == gateway.uid
    assert deployment.labels == {
        **MANAGED,
        "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
    }
    assert "replicas" not in deployment.spec  # Kubernetes' default 1; a user's scale is kept
    assert deployment.spec["selector"] == {"matchLabels": {NAME_LABEL: "waypoint"}}
    template = deployment.spec["template"]
    labels = template["metadata"]["labels"]
    assert {k: labels[k] for k in MANAGED} == MANAGED
    assert labels["istio.io/gateway-name"] == "waypoint"
    assert labels["istio.io/dataplane-mode"] == "none"
    assert labels["sidecar.istio.io/inject"] == "false"
    pod_spec = template["spec"]
    assert pod_spec["serviceAccountName"] == "waypoint"
    (container,) = pod_spec["containers"]
    assert container["command"] == ["waypoint"] and "image" not in container
    env = env_of(container)
    assert env["XDS_ADDRESS"] == env["CA_ADDRESS"] == "10.0.0.1:15012"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "mesh": 15008,
        "metrics": 15020,
        "status-port": 15021,
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[next(n for n, m in mounts.items() if m == "/var/run/secrets/tokens")]["projected"] == {
        "sources": [
            {
                "serviceAccountToken": {
                    "audience": "istio-ca",
                    "expirationSeconds": 43200,
                    "path": "istio-token",
                }
            }
        ]
    }
    assert volumes[next(n for n, m in mounts.items() if m == "/var/run/secrets/istio")]["configMap"] == {
        "name": "istio-ca-root-cert"
    }
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None
    assert service.spec["selector"] == {NAME_LABEL: "waypoint"}
    assert [(p["name"], p["port"]) for p in service.spec["ports"]] == [("mesh", 15008)]


def test_what_is_made_passes_the_stores_validation_as_a_user_s_yaml_would() -> None:
    made_for = desired(waypoint("waypoint", "demo", uid="gw-uid"), ControllerSettings(image="mesh:1"))
    for resource in (made_for.service_account, made_for.deployment, made_for.service, made_for.pod):
        assert build_resource(resource.to_dict()).spec == resource.spec
    assert made_for.deployment.spec["template"]["spec"]["containers"][0]["image"] == "mesh:1"


def test_the_deployment_controller_runs_the_template_and_status_follows_its_pod(store: SqliteStore) -> None:
    apply_gateway(store)
    c, deployments = controller(store), local_cluster(store)
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
    assert "Deployment demo/waypoint has no pod yet" in programmed_message(store)
    service = store.get(ResourceRef("Service", "demo", "waypoint"))
    assert service is not None and service.spec["clusterIP"] == "10.96.0.50"  # the allocator's write is kept

    since = store.revision()
    assert deployments.sync()  # the local cluster's Deployment controller: one pod of the template
    run(c, store, since)
    (pod,) = waypoint_pods(store)
    assert pod.name.startswith("waypoint-") and pod.annotations[OWNER_ANNOTATION] == "waypoint"
    assert pod.spec["serviceAccountName"] == "waypoint"
    assert conditions(store)["Programmed"] == ("False", "Pending")
    assert f"pod demo/{pod.name} is Pending" in programmed_message(store)

    since = store.revision()
    pods_run(store)
    run(c, store, since)
    assert conditions(store)["Programmed"] == ("True", "Programmed")
    assert programmed_message(store) == (
        "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008"
    )


def test_a_deleted_waypoint_pod_is_made_again_by_the_deployment(store: SqliteStore) -> None:
    c, deployments = waypoint_running(store)
    run(c, store)
    assert conditions(store)["Programmed"] == ("True", "Programmed")
    (evicted,) = waypoint_pods(store)

    since = store.revision()
    store.delete([evicted.ref])  # evicted, or deleted by hand
    run(c, store, since)
    assert conditions(store)["Programmed"] == ("False", "Pending")
    assert made(store)["Deployment"] == ["waypoint"]  # the controller does not make pods itself

    since = store.revision()
    deployments.sync()
    pods_run(store)
    run(c, store, since)
    (replacement,) = waypoint_pods(store)
    assert replacement.name != evicted.name
    assert conditions(store)["Programmed"] == ("True", "Programmed")


def test_reconciling_again_changes_nothing(store: SqliteStore) -> None:
    c, deployments = waypoint_running(store)
    deployments.sync()  # the Deployment's status
    assert run(c, store, 0) > 0  # the VIP and the running pod change the status once
    since = store.revision()
    assert run(c, store, 0) == 0  # everything observed again: no write
    c.resync()
    assert store.revision() == since
    assert run(controller(store), store, 0) == 0  # a new controller (istiod_lite restarted) agrees


def test_a_new_pod_template_rolls_the_deployment_and_keeps_the_users_scale(store: SqliteStore) -> None:
    apply_gateway(store)
    deployments = local_cluster(store)
    run(controller(store), store)
    deployment = store.get(DEPLOYMENT)
    assert deployment is not None
    store.apply(
        [msgspec.structs.replace(deployment, spec={**deployment.spec, "replicas": 2})]
    )  # kubectl scale
    deployments.sync()
    pods_run(store)
    old = {p.name for p in waypoint_pods(store)}
    assert len(old) == 2

    run(controller(store, ControllerSettings(xds_address="10.0.0.2:15012")), store)
    assert made(store)["Deployment"] == ["waypoint"]
    deployment = store.get(DEPLOYMENT)
    assert deployment is not None and deployment.spec["replicas"] == 2
    (container,) = deployment.spec["template"]["spec"]["containers"]
    assert env_of(container)["XDS_ADDRESS"] == "10.0.0.2:15012"
    for _ in range(10):  # bounded: each pass is one rollout step
        deployments.sync()
        pods_run(store)
        if not old & {p.name for p in waypoint_pods(store)} and len(waypoint_pods(store)) == 2:
            break
    new = waypoint_pods(store)
    assert len(new) == 2 and not old & {p.name for p in new}
    assert all(env_of(p.spec["containers"][0])["XDS_ADDRESS"] == "10.0.0.2:15012" for p in new)


def test_a_bare_pod_of_an_older_version_serves_until_the_deployments_pod_is_ready(store: SqliteStore) -> None:
    apply_gateway(store)
    spec = desired(waypoint(address=None), SETTINGS).pod.spec
    bare = Resource(  # what the previous controller made: its labels, no pod-template-hash, no Deployment
        kind="Pod", name="waypoint-x7k2p", namespace="demo", api_version="v1", labels=dict(MANAGED), spec=spec
    )
    users = Resource(
        kind="Pod", name="mine", namespace="demo", api_version="v1", labels={NAME_LABEL: "waypoint"}
    )
    store.apply([bare, users])
    c, deployments = controller(store), local_cluster(store)
    run(c, store)
    allocate_vip(store)
    pods_run(store)  # the old pod runs (as it did before the upgrade)
    deployments.sync()  # the Deployment's pod starts
    run(c, store)
    assert made(store)["Deployment"] == ["waypoint"]
    assert store.get(bare.ref) is not None  # still serving: the Deployment's pod is not ready yet
    assert conditions(store)["Programmed"] == ("True", "Programmed")

    pods_run(store)
    run(c, store)
    assert store.get(bare.ref) is None
    assert store.get(users.ref) is not None  # not made by the controller: never touched
    assert conditions(store)["Programmed"] == ("True", "Programmed")
    (pod,) = [p for p in waypoint_pods(store) if p.name != "mine"]
    assert pod.annotations[OWNER_ANNOTATION] == "waypoint"


def test_deleting_the_gateway_deletes_what_was_made_and_nothing_else(store: SqliteStore) -> None:
    apply_gateway(store)
    other = waypoint("other", address=None)
    store.apply([other, svc("app", selector={"app": "x"})])
    c, deployments = controller(store), local_cluster(store)
    run(c, store)
    deployments.sync()
    since = store.revision()
    store.delete([GW])
    run(c, store, since)
    assert made(store) == {"ServiceAccount": ["other"], "Deployment": ["other"], "Service": ["other"]}
    deployments.sync()  # the Deployment's pods go with it (garbage collection)
    assert [p.labels[NAME_LABEL] for p in waypoint_pods(store)] == ["other"]
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
    assert store.list("Deployment", "demo") == [] and store.list("Service", "demo") == []


def test_a_gateway_without_the_hbone_listener_is_refused_with_what_to_add(store: SqliteStore) -> None:
    apply_gateway(store, listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}])
    c = controller(store)
    run(c, store)
    assert made(store) == {"ServiceAccount": [], "Deployment": [], "Service": []}
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
    assert made(store) == {"ServiceAccount": [], "Deployment": [], "Service": []}
    assert conditions(store)["Accepted"] == ("False", "Invalid")


NAME_TAKEN = [
    ("a Service already named like the Gateway is never taken over", "Service"),
    ("a Deployment already named like the Gateway is never taken over", "Deployment"),
]


@pytest.mark.parametrize("kind", [c[1] for c in NAME_TAKEN], ids=[c[0] for c in NAME_TAKEN])
def test_a_name_taken_by_someone_else_is_refused(store: SqliteStore, kind: str) -> None:
    if kind == "Service":
        theirs = svc("waypoint", selector={"app": "mine"}, clusterIP="10.96.0.7")
    else:
        doc = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "waypoint", "namespace": "demo"},
            "spec": {
                "selector": {"matchLabels": {"app": "mine"}},
                "template": {
                    "metadata": {"labels": {"app": "mine"}},
                    "spec": {"containers": [{"name": "c"}]},
                },
            },
        }
        theirs = build_resource(doc)
    stored = store.apply([theirs])[0].resource
    apply_gateway(store)
    run(controller(store), store)
    assert store.get(stored.ref) == stored  # unchanged
    assert made(store) == {"ServiceAccount": [], "Deployment": [], "Service": []}
    assert conditions(store)["Programmed"] == ("False", "NameConflict")
    assert f"{kind} demo/waypoint already exists" in programmed_message(store)
    gateway = store.get(GW)
    assert gateway is not None and "addresses" not in gateway.status  # nothing binds to someone else's VIP


def test_a_deployment_as_the_api_server_returns_it_is_left_alone() -> None:
    want = desired(waypoint("waypoint", "demo", uid="gw-uid"), SETTINGS).deployment
    template = want.spec["template"]
    container = {
        **template["spec"]["containers"][0],
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "resources": {},
    }
    volumes = [
        {**v, **({"projected": {**v["projected"], "defaultMode": 420}} if "projected" in v else {})}
        for v in template["spec"]["volumes"]
    ]
    defaulted = msgspec.structs.replace(
        want,
        labels={**want.labels, "team": "a"},
        spec={
            "replicas": 3,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "selector": want.spec["selector"],
            "template": {
                "metadata": {**template["metadata"], "creationTimestamp": None},
                "spec": {
                    **template["spec"],
                    "containers": [container],
                    "volumes": volumes,
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {},
                },
            },
        },
    )
    assert deployment_update(defaulted, want) is None
    changed = desired(
        waypoint("waypoint", "demo", uid="gw-uid"), ControllerSettings(xds_address="x:1")
    ).deployment
    update = deployment_update(defaulted, changed)
    assert update is not None
    assert update.spec["replicas"] == 3 and update.spec["template"] == changed.spec["template"]
    assert update.labels["team"] == "a"


CONTAINS = [
    ("extra keys in what is stored are defaults, not a difference", {"a": 1, "b": 2}, {"a": 1}, True),
    ("a missing key is a difference", {"a": 1}, {"a": 1, "b": 2}, False),
    ("a changed value is a difference", {"a": {"b": 1}}, {"a": {"b": 2}}, False),
    ("lists match item by item", [{"x": 1, "y": 2}], [{"x": 1}], True),
    ("a longer list is a difference", [1, 2], [1], False),
    ("a scalar where a mapping is wanted is a difference", {"a": 1}, {"a": {"b": 1}}, False),
]


@pytest.mark.parametrize(("have", "want", "ok"), [c[1:] for c in CONTAINS], ids=[c[0] for c in CONTAINS])
def test_contains(have: Any, want: Any, ok: bool) -> None:
    assert contains(have, want) is ok


def test_the_kubernetes_rbac_covers_every_write_of_the_controller() -> None:
    """The ClusterRole is derived from the Kubernetes store's kinds: every kind the controller writes must
    be among them, with create/update/delete, and Gateways' status writable."""
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rbac_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for kind in OWNED_KINDS:
        assert kind in DEFAULT_KINDS
        group = KINDS[kind][0].rpartition("/")[0]
        assert {"create", "update", "delete", "list", "watch"} <= granted[(group, plural(kind))], kind
    assert "update" in granted[("gateway.networking.k8s.io", "gateways/status")]


def test_resync_removes_what_was_made_for_a_gateway_deleted_while_istiod_was_down(store: SqliteStore) -> None:
    apply_gateway(store)
    run(controller(store), store)
    store.delete([GW])  # nobody watching
    restarted = controller(store)
    restarted.resync()
    assert made(store) == {"ServiceAccount": [], "Deployment": [], "Service": []}


def test_other_gateway_classes_are_left_alone(store: SqliteStore) -> None:
    gateway = waypoint("ingress", address=None)
    store.apply([msgspec.structs.replace(gateway, spec={**gateway.spec, "gatewayClassName": "istio"})])
    run(controller(store), store)
    assert made(store) == {"ServiceAccount": [], "Deployment": [], "Service": []}
    ingress = store.get(ResourceRef("Gateway", "demo", "ingress"))
    assert ingress is not None and ingress.status == {}


def test_on_kubernetes_waypoint_pods_run_the_image_the_manifests_give_istiod(tmp_path: Path) -> None:
    from ambientctl.commands.install import render_manifests
    from istiod_lite.config import parse_config

    istiod = next(d for d in render_manifests("registry.example/mesh:2") if d["kind"] == "Deployment")
    (container,) = istiod["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    config = parse_config(state_dir=str(tmp_path), env=env)
    assert config.waypoint_image == "registry.example/mesh:2"
    settings = ControllerSettings(xds_address=config.waypoint_xds_address, image=config.waypoint_image)
    template = desired(waypoint(), settings).deployment.spec["template"]
    assert template["spec"]["containers"][0]["image"] == "registry.example/mesh:2"


def test_an_image_reference_with_spaces_is_refused_naming_the_variable(tmp_path: Path) -> None:
    from istiod_lite.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="WAYPOINT_IMAGE"):
        parse_config(state_dir=str(tmp_path), env={"WAYPOINT_IMAGE": "mesh :2"})


def test_everything_made_is_controlled_by_the_gateway_so_kubernetes_collects_it_with_the_gateway(
    store: SqliteStore,
) -> None:
    gateway = apply_gateway(store)
    run(controller(store), store)
    owner = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
             "uid": gateway.uid, "controller": True}
    for kind in ("ServiceAccount", "Deployment", "Service"):
        made_one = store.get(ResourceRef(kind, "demo", "waypoint"))
        assert made_one is not None and made_one.to_dict()["metadata"]["ownerReferences"] == [owner], kind


def test_what_an_older_version_made_without_owner_references_gets_them_and_a_users_account_never(
    store: SqliteStore,
) -> None:
    user_account = Resource(kind="ServiceAccount", name="mine", namespace="demo", api_version="v1")
    gateway = apply_gateway(store)
    want = desired(gateway, SETTINGS)
    older = [msgspec.structs.replace(r, owner_references=()) for r in (want.service_account, want.deployment,
                                                                        want.service)]
    store.apply([user_account, *older])
    other_owner = OwnerReference("v1", "ConfigMap", "keep", "cm-1")
    store.apply([msgspec.structs.replace(older[1], owner_references=(other_owner,))])
    run(controller(store), store)
    for kind in ("ServiceAccount", "Deployment", "Service"):
        made_one = store.get(ResourceRef(kind, "demo", "waypoint"))
        assert made_one is not None and made_one.controller is not None, kind
        assert made_one.controller.uid == gateway.uid
    deployment = store.get(DEPLOYMENT)
    assert deployment is not None and other_owner in deployment.owner_references  # another owner is kept
    assert store.get(user_account.ref) == store.list("ServiceAccount", "demo")[0]
    assert store.list("ServiceAccount", "demo")[0].owner_references == ()
    since = store.revision()
    assert run(controller(store), store, 0) == 0 and store.revision() == since  # and then nothing more


def test_the_waypoint_container_is_ready_only_when_it_answers_istios_readiness_endpoint() -> None:
    want = desired(waypoint("waypoint", "demo", uid="gw-uid"), SETTINGS)
    (container,) = want.deployment.spec["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
    probe = parse_probe(container, "waypoint pod")  # what the local cluster's kubelet runs
    assert probe is not None and (probe.kind, probe.port, probe.path) == ("httpGet", 15021, "/healthz/ready")
    assert parse_config(
        {"POD_NAME": "waypoint-1", "POD_NAMESPACE": "demo", "GATEWAY_NAME": "waypoint"}
    ).readiness_addr.port == probe.port  # the waypoint serves its readiness there by default
