"""Several containers per pod on the local cluster, for real (root): init containers run first, one at a
time, each to completion; then each app container is its own process in the pod's netns (same IP) with
its own env, workingDir ("/" when unset), user and group (securityContext, the container's over the
pod's) and log; the pod is Ready only when both containers are; ``exec`` runs as the chosen container.
A failing init container under ``restartPolicy: Never`` fails its pod (``Init:Error``) and no app
container starts. A restarted container gets a fresh log, the previous run's kept (``logs --previous``);
``ambientctl exec`` passes the command's exit code through. The kubelet is driven in this process (``sync_pods`` then ``check_containers``
until a deadline); no mesh is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ambientctl.cli import app
from ambientctl.cluster import Cluster
from ambientctl.cluster.kubelet import Kubelet
from ambientctl.cluster.podstatus import display_status, ready_counts
from ambientctl.cluster.testing import wait_for
from meshcore.store import ResourceRef, SqliteStore, load_documents, store_path

pytestmark = pytest.mark.timeout(60)

POD = """apiVersion: v1
kind: Pod
metadata: {{name: two, namespace: shop, labels: {{app: two}}}}
spec:
  nodeName: node-1
  securityContext: {{runAsUser: 1000}}
  initContainers:
  - {{name: first, image: local, command: [sh, -c, "echo first >> {d}/order; chmod 666 {d}/order"]}}
  - name: second
    image: local
    command: [sh, -c, "echo second >> {d}/order; id -u > {d}/init-uid"]
    securityContext: {{runAsUser: 1234}}
  containers:
  - name: web
    image: local
    command: [sleep, "600"]
    readinessProbe: {{exec: {{command: [cat, {d}/side-pwd]}}, periodSeconds: 1}}
  - name: side
    image: local
    command: [sh, -c, "pwd > {d}/side-pwd.tmp; echo \\"side of $ME\\"; mv {d}/side-pwd.tmp {d}/side-pwd; exec sleep 600"]
    env: [{{name: ME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    securityContext: {{runAsUser: 4321, runAsGroup: 4322}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken, namespace: shop}}
spec:
  nodeName: node-1
  restartPolicy: Never
  initContainers:
  - {{name: fail, image: local, command: [sh, -c, "exit 3"]}}
  containers:
  - {{name: app, image: local, command: [sleep, "600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: flaky, namespace: shop}}
spec:
  nodeName: node-1
  containers:
  - {{name: once, image: local, command: [sh, -c, "echo ran as $$; exit 1"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: rootless, namespace: shop}}
spec:
  nodeName: node-1
  securityContext: {{runAsNonRoot: true}}
  containers:
  - {{name: app, image: local, command: [sleep, "600"]}}
"""


def ids(pid: int) -> tuple[int, int]:
    """(uid, gid) of a process, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_init_containers_then_two_containers_with_their_own_users_share_the_pods_network(
    cluster: Cluster,
) -> None:
    # Written by containers running as other users (pytest's tmp_path is root's only).
    shared = cluster.directory.parent / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    os.chmod(cluster.directory.parent, 0o755)
    with SqliteStore(store_path(cluster.directory.parent)) as store:
        store.apply(load_documents(POD.format(d=shared), "test"))
        kubelet = Kubelet(cluster, store)
        report = kubelet.sync_pods()
        assert set(report.synced) == {"shop/two", "shop/broken", "shop/flaky"}, report.rejected
        assert "container has runAsNonRoot and image will run as root" in report.rejected["shop/rootless"]
        rootless = store.get(ResourceRef("Pod", "shop", "rootless"))
        assert rootless is not None and display_status(rootless.status) == "CreateContainerConfigError"
        assert cluster.find_pod("rootless", "shop") is None  # nothing of it runs

        def status(name: str) -> dict[str, Any]:
            kubelet.check_containers()
            pod = store.get(ResourceRef("Pod", "shop", name))
            assert pod is not None
            return dict(pod.status)

        def when(name: str, done: Any) -> Any:
            def check() -> dict[str, Any] | None:
                current = status(name)
                return current if done(current) else None

            return check

        ready = wait_for("pod two Ready", when("two", lambda s: ready_counts(s) == (2, 2)), timeout=40)
        broken = wait_for("pod broken Failed", when("broken", lambda s: s.get("phase") == "Failed"))
        flaky = cluster.find_pod("flaky", "shop")
        assert flaky is not None
        log = cluster.container_log_path(flaky, "once")
        previous = log.with_name(log.name + ".previous")

        def restarted() -> bool:  # the first restart comes after the 10 s back-off
            kubelet.check_containers()
            return previous.exists() and log.exists() and "ran as" in log.read_text()

        wait_for("flaky restarted with a fresh log", restarted, timeout=30)

    # Init containers ran in order, each to completion, as their own user.
    assert (shared / "order").read_text().split() == ["first", "second"]
    assert (shared / "init-uid").read_text().strip() == "1234"
    assert [(c["name"], c["state"]["terminated"]["exitCode"]) for c in ready["initContainerStatuses"]] == [
        ("first", 0),
        ("second", 0),
    ]
    assert ready["phase"] == "Running" and display_status(ready) == "Running"
    assert {c["type"]: c["status"] for c in ready["conditions"]}["Ready"] == "True"

    # Two processes in one netns (one IP), each with its user, group, env and working directory.
    record = cluster.find_pod("two", "shop")
    assert record is not None
    procs = record.container_processes()
    web, side = procs["web"].pid, procs["side"].pid
    assert web != side
    assert os.stat(f"/proc/{web}/ns/net").st_ino == os.stat(f"/proc/{side}/ns/net").st_ino
    assert ids(web) == (1000, 0)  # the pod's runAsUser; no runAsGroup: gid 0
    assert ids(side) == (4321, 4322)  # the container's own wins
    assert (shared / "side-pwd").read_text().strip() == "/"  # not the directory the test runs in
    side_log = cluster.container_log_path(record, "side").read_text()
    assert "side of two" in side_log
    assert "side of two" not in cluster.container_log_path(record, "web").read_text()

    # exec runs as the container does.
    assert cluster.exec("two", "shop", ["id", "-u"], container="side").stdout.strip() == "4321"
    assert cluster.exec("two", "shop", ["sh", "-c", "id -u; pwd"]).stdout.split() == ["1000", "/"]

    # A failed init container under restartPolicy Never fails the pod; its app container never ran.
    assert display_status(broken) == "Init:Error"
    assert broken["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert broken["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    failed = cluster.find_pod("broken", "shop")
    assert failed is not None and "app" not in failed.container_processes()

    # The previous run's log is kept apart from the current one's.
    assert previous.read_text() != log.read_text()
    assert previous.read_text().startswith("ran as") and log.read_text().startswith("ran as")

    # The CLI: exec as the container (exit code passed through), logs of one container.
    def ctl(*args: str) -> Result:
        return CliRunner().invoke(app, ["--state-dir", str(cluster.directory.parent), *args])

    check = 'test "$(id -u):$(id -g):$(pwd):$ME:$HOME" = 4321:4322:/:two:/'
    assert ctl("exec", "two", "-n", "shop", "-c", "side", "--", "sh", "-c", check).exit_code == 0
    assert ctl("exec", "shop/two", "--", "sh", "-c", "exit 7").exit_code == 7
    assert "side of two" in ctl("logs", "two", "-n", "shop", "-c", "side").stdout
    assert ctl("logs", "shop/flaky", "--previous").stdout == previous.read_text()
