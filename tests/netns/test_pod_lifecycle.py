"""Workloads on the local cluster with the mesh: a crashing container is restarted with Kubernetes'
back-off, shows CrashLoopBackOff with its exit code, and gets no traffic, nor does a running pod whose
readinessProbe fails, while their sibling (Ready by its httpGet probe) behind the same Service serves
every request through the mesh; a container that is not to be restarted leaves
its pod Succeeded; a Deployment of an upstream image (run by the stand-in) with 3 replicas serves a
Service through the mesh from all 3 pods, then scales down to 1."""

from __future__ import annotations

from typing import Any

import pytest

from ambientctl.cluster.deployments import replace_replicas
from ambientctl.cluster.testing import (
    AMBIENT,
    MeshCluster,
    namespace,
    ok_count,
    served_by,
    service,
    sleeper_pod,
    wait_for,
)
from meshcore.store import ResourceRef

pytestmark = pytest.mark.timeout(120)


def command_pod(name: str, ns: str, command: list[str], labels: dict[str, str], **spec: str) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in spec.items())
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n"
        f"spec:\n  nodeName: node-1\n{extra}  containers:\n"
        f"  - {{name: main, image: local, command: {command}, ports: [{{name: http, containerPort: 8080}}]}}\n"
    )


PROBED_WEB = """apiVersion: v1
kind: Pod
metadata: {name: web, namespace: life, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    image: local
    command: [python, -m, ambientctl.apps.echo, --port, "8080"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
"""

NEVER_READY = """apiVersion: v1
kind: Pod
metadata: {name: idle, namespace: life, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: idle
    image: local
    command: [sleep, infinity]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
"""


def container(mc: MeshCluster, name: str, ns: str) -> dict[str, Any]:
    pod = mc.pod(name, ns)
    statuses = (pod.status.get("containerStatuses") if pod is not None else None) or [{}]
    return dict(statuses[0])


def test_a_crashing_container_reaches_crash_loop_back_off_and_gets_no_traffic(mc: MeshCluster) -> None:
    mc.apply(
        namespace("life", AMBIENT),
        PROBED_WEB,
        NEVER_READY,
        command_pod("crasher", "life", ["sh", "-c", "exit 3"], {"app": "web"}),
        sleeper_pod("client", "life", "node-1"),
        service("web", "life", {"app": "web"}),
    )
    mc.wait_running([("web", "life"), ("client", "life"), ("idle", "life")])
    # web's httpGet probe passes (Ready); idle's tcpSocket probe never does (Running, not Ready).
    wait_for("web ready by its probe", lambda: container(mc, "web", "life").get("ready") is True, timeout=20)
    assert container(mc, "idle", "life").get("ready") is False

    def crash_looping() -> dict[str, Any] | None:
        c = container(mc, "crasher", "life")
        waiting = c.get("state", {}).get("waiting", {})
        restarted = c.get("restartCount", 0) >= 1
        return c if restarted and waiting.get("reason") == "CrashLoopBackOff" else None

    # The first restart comes 10 s after the first exit; the second exit follows at once.
    c = wait_for("crasher in CrashLoopBackOff after a restart", crash_looping, timeout=40)
    assert c["lastState"]["terminated"]["exitCode"] == 3 and c["ready"] is False
    pod = mc.pod("crasher", "life")
    assert pod.status["phase"] == "Running"
    assert {"type": "Ready", "status": "False"} in pod.status["conditions"]

    # Without a readiness probe a restarted container is Ready while it runs (as in Kubernetes), so a
    # batch that overlaps one of the crasher's brief restarts may lose a request to it: poll for a clean
    # batch with a deadline; in backoff it is never an endpoint.
    def clean_batch() -> dict[str, Any] | None:
        result = mc.request("client", "life", "http://web.life:80/", count=20)
        return result if ok_count(result) == 20 else None

    result = wait_for("20 requests in a row served", clean_batch, timeout=60)
    assert served_by(result) == {"web"}  # neither the crashing pod nor the unready one got a request


def test_a_container_that_is_not_restarted_leaves_its_pod_succeeded(mc: MeshCluster) -> None:
    mc.apply(
        namespace("once"),
        command_pod("job", "once", ["sh", "-c", "exit 0"], {"app": "job"}, restartPolicy="Never"),
    )

    def succeeded() -> bool:
        pod = mc.pod("job", "once")
        return pod is not None and pod.status.get("phase") == "Succeeded"

    wait_for("job Succeeded", succeeded, timeout=30)
    terminated = container(mc, "job", "once")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: details-v1, namespace: apps, labels: {app: details}}
spec:
  replicas: 3
  selector: {matchLabels: {app: details, version: v1}}
  template:
    metadata: {labels: {app: details, version: v1}}
    spec:
      serviceAccountName: bookinfo-details
      containers:
      - name: details
        image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 9080}]
"""

DETAILS_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: details, namespace: apps, labels: {app: details, service: details}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: details}
"""


def test_a_deployment_of_an_image_serves_its_service_through_the_mesh_and_scales(mc: MeshCluster) -> None:
    mc.apply(
        namespace("apps", AMBIENT),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bookinfo-details, namespace: apps}\n",
        DEPLOYMENT,
        DETAILS_SERVICE,
        sleeper_pod("client", "apps", "node-1"),
    )

    def ready_pods() -> list[str]:
        return sorted(
            p.name
            for p in mc.store.list("Pod", "apps")
            if p.name.startswith("details-v1-")
            and {"type": "Ready", "status": "True"} in (p.status.get("conditions") or [])
        )

    pods = wait_for("3 details pods ready", lambda: len(ready_pods()) == 3 and ready_pods(), timeout=45)
    mc.wait_redirection([("client", "apps"), *((p, "apps") for p in pods)], "enabled")
    deployment = mc.store.get(ResourceRef("Deployment", "apps", "details-v1"))
    assert deployment is not None
    wait_for(
        "deployment status 3 ready",
        lambda: (d := mc.store.get(deployment.ref)) is not None and d.status.get("readyReplicas") == 3,
        timeout=20,
    )

    result = mc.request("client", "apps", "http://details.apps:9080/details/0", count=30)
    assert ok_count(result) == 30, result
    assert served_by(result) == set(pods)

    mc.store.apply([replace_replicas(deployment, 1)])
    wait_for(
        "scaled down to 1 pod",
        lambda: (
            len(ready_pods()) == 1
            and len([p for p in mc.store.list("Pod", "apps") if p.name.startswith("details-v1-")]) == 1
        ),
        timeout=30,
    )
