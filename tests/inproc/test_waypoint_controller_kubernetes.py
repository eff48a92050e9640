"""The waypoint controller on the Kubernetes store, against the test kit's API server stand-in: the same
code path as on the local cluster makes a Deployment, a Service and a ServiceAccount through the API; a
Deployment as an API server returns it (defaults filled in, scaled by a user) is left alone; the Gateway's
status follows the pod Kubernetes' Deployment controller would make (played here by a write to the stand-in,
as that controller would make it); what is made is controlled by the Gateway (ownerReferences) and its pods
are gated by the waypoint's readinessProbe; deleting the Gateway deletes what was made."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from istiod_lite.waypoints import ControllerSettings, WaypointController
from meshcore.store import ResourceRef
from meshcore.store.kubernetes import KubernetesStore, to_manifest
from meshcore.testing.kube_api import ThreadedKubeApi
from meshcore.testing.resources import waypoint

DEADLINE = 10.0


def controller_ref(kind: str) -> ResourceRef:
    return ResourceRef(kind, "demo", "waypoint")


def eventually(predicate: Callable[[], Any], what: str) -> Any:
    """Poll the store's cache (fed by its watch) until ``predicate`` holds, with a deadline."""
    deadline = time.monotonic() + DEADLINE
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        yield server


@pytest.fixture
def store(api: ThreadedKubeApi) -> Iterator[KubernetesStore]:
    s = KubernetesStore.connect(host=api.url, sync_timeout=10, write_timeout=10)
    try:
        yield s
    finally:
        s.close()


def writes_to(api: ThreadedKubeApi, resource: str) -> list[str]:
    return [r.verb for r in api.server.requests if r.resource == resource and r.verb in ("create", "update", "patch")]


def test_a_waypoint_on_kubernetes_is_a_deployment_kept_as_the_cluster_and_users_change_it(
    api: ThreadedKubeApi, store: KubernetesStore
) -> None:
    server = api.server
    api.call(server.put_object, to_manifest(waypoint(address=None)))
    eventually(lambda: store.get(waypoint().ref), "the Gateway in the cache")
    controller = WaypointController(store, ControllerSettings(image="mesh:1"), metrics=CollectorRegistry())
    controller.resync()

    deployment = api.call(server.get_object, "Deployment", "demo", "waypoint")
    assert deployment is not None and deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"
    template = deployment["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "mesh:1"
    assert api.call(server.get_object, "Service", "demo", "waypoint") is not None
    assert api.call(server.get_object, "ServiceAccount", "demo", "waypoint") is not None
    assert not writes_to(api, "pods")  # Kubernetes' Deployment controller makes the pods
    # The Gateway controls each of them, so Kubernetes' garbage collector deletes them with it.
    gateway_uid = api.call(server.get_object, "Gateway", "demo", "waypoint")["metadata"]["uid"]
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert api.call(server.get_object, kind, "demo", "waypoint")["metadata"]["ownerReferences"] == [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
             "uid": gateway_uid, "controller": True}
        ], kind
    assert template["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"

    # What an API server returns: defaults filled in; and a user scaled it to 2.
    defaulted = copy.deepcopy(deployment)
    defaulted["spec"].update(replicas=2, revisionHistoryLimit=10, progressDeadlineSeconds=600,
                             strategy={"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    pod_spec = defaulted["spec"]["template"]["spec"]
    pod_spec.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
    pod_spec["containers"][0].update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    for volume in pod_spec["volumes"]:
        next(v for k, v in volume.items() if k != "name")["defaultMode"] = 420
    api.call(server.put_object, defaulted)
    eventually(lambda: (d := store.get(controller_ref("Deployment"))) and d.spec.get("replicas") == 2,
               "the defaulted Deployment in the cache")
    before = len(writes_to(api, "deployments"))
    assert controller.reconcile("demo", "waypoint") == 0
    assert len(writes_to(api, "deployments")) == before

    # Kubernetes allocates the VIP and its Deployment controller runs a pod of the template.
    service = api.call(server.get_object, "Service", "demo", "waypoint")
    service["spec"]["clusterIP"] = "10.96.7.7"
    api.call(server.put_object, service)
    api.call(server.put_object, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waypoint-5d9c7b-x2x7k", "namespace": "demo",
                     "labels": {**template["metadata"]["labels"], "pod-template-hash": "5d9c7b"}},
        "spec": {**template["spec"], "nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.244.1.7", "conditions": [{"type": "Ready", "status": "True"}]},
    })
    eventually(lambda: store.list("Pod", "demo") and store.get(controller_ref("Service")).spec.get("clusterIP"),
               "the pod and the VIP in the cache")
    assert controller.reconcile("demo", "waypoint") == 1  # the status, and nothing else
    gateway = api.call(server.get_object, "Gateway", "demo", "waypoint")
    programmed = next(c for c in gateway["status"]["conditions"] if c["type"] == "Programmed")
    assert (programmed["status"], gateway["status"]["addresses"]) == (
        "True", [{"type": "IPAddress", "value": "10.96.7.7"}]
    )
    eventually(lambda: store.get(waypoint().ref).status.get("conditions"), "the status in the cache")
    assert controller.reconcile("demo", "waypoint") == 0

    api.call(server.delete_object, "Gateway", "demo", "waypoint")
    eventually(lambda: store.get(waypoint().ref) is None, "the deletion in the cache")
    controller.reconcile("demo", "waypoint")
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert api.call(server.get_object, kind, "demo", "waypoint") is None, kind
