"""Events of the local cluster, for real (root): the kubelet records Scheduled, Pulled/Created/Started and,
for a container that keeps exiting, BackOff; ``ambientctl get events`` lists them in kubectl's columns
and ``describe pod`` shows the pod's own. The kubelet is driven in this process (``sync_pods`` then
``check_containers`` until a deadline); no mesh is needed.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from ambientctl.cli import app
from ambientctl.cluster import Cluster
from ambientctl.cluster.kubelet import Kubelet
from ambientctl.cluster.testing import wait_for
from meshcore.store import SqliteStore, load_documents, store_path

pytestmark = pytest.mark.timeout(60)

PODS = """apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: crash, namespace: shop}
spec:
  containers:
  - {name: app, image: local, command: [sh, -c, "exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers:
  - {name: main, image: busybox, command: [sleep, "600"]}
"""


def test_a_crashing_container_shows_back_off_and_describe_lists_scheduled_and_started(
    cluster: Cluster,
) -> None:
    def ctl(*args: str) -> Result:
        return CliRunner().invoke(app, ["--state-dir", str(cluster.directory.parent), *args])

    with SqliteStore(store_path(cluster.directory.parent)) as store:
        store.apply(load_documents(PODS, "test"))
        kubelet = Kubelet(cluster, store)
        report = kubelet.sync_pods()
        assert set(report.synced) == {"shop/crash", "shop/web"}, report.rejected

        def back_off() -> list[str] | None:
            kubelet.check_containers()
            lines = ctl("get", "events", "-n", "shop").stdout.splitlines()
            return lines if any("BackOff" in line and "pod/crash" in line for line in lines) else None

        lines = wait_for("a BackOff event for pod crash", back_off, timeout=30)

    assert lines[0].split() == ["LAST-SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    rows = [line.split(None, 4) for line in lines[1:]]
    assert any(
        row[1:4] == ["Warning", "BackOff", "pod/crash"]
        and row[4].startswith("Back-off restarting failed container app in pod crash_shop(")
        for row in rows
    ), lines
    assert ["Normal", "Scheduled", "pod/web", "Successfully assigned shop/web to node-1"] in [
        r[1:] for r in rows
    ]
    # oldest first: the Scheduled events come before the BackOff
    reasons = [row[2] for row in rows]
    assert reasons.index("Scheduled") < reasons.index("BackOff")

    described = ctl("describe", "pod", "web", "-n", "shop")
    assert described.exit_code == 0, described.output
    events = described.stdout.split("\nEvents:\n", 1)[1].splitlines()
    assert events[0].split() == ["Type", "Reason", "Age", "From", "Message"]
    found = {line.split()[1]: line for line in events[2:]}
    assert "Successfully assigned shop/web to node-1" in found["Scheduled"]
    assert "default-scheduler" in found["Scheduled"]
    assert 'Container image "busybox" not pulled' in found["Pulled"]
    assert "Started container main" in found["Started"] and "kubelet" in found["Started"]
    assert "BackOff" not in found  # the other pod's events are not this pod's
