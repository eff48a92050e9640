"""Pod termination on the local cluster, for real (root): a deleted pod's containers get SIGTERM, then
SIGKILL once its ``spec.terminationGracePeriodSeconds`` is over. A pod that ignores SIGTERM with a 2 s
grace is killed (it noted the SIGTERM and kept running: only SIGKILL ends it) and is gone from the cluster
once the kubelet's pass returns; while it stops it is recorded terminating. A pod that exits on SIGTERM
goes at once even with Kubernetes' default grace (30 s). The kubelet is driven in this process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster
from ambientctl.cluster.kubelet import Kubelet
from ambientctl.cluster.testing import alive, wait_for
from meshcore.store import ResourceRef, SqliteStore, load_documents, store_path

pytestmark = pytest.mark.timeout(60)

PODS = """apiVersion: v1
kind: Pod
metadata: {{name: stubborn, namespace: default}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: local
    command: [sh, -c, "trap 'echo TERM >> {note}' TERM; echo started > {note}; while :; do sleep 0.1; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: polite, namespace: default}}
spec:
  nodeName: node-1
  containers:
  - {{name: app, image: local, command: [sleep, "600"]}}
"""


def test_a_pod_that_ignores_sigterm_is_killed_after_its_grace_period(
    cluster: Cluster, tmp_path: Path
) -> None:
    note = tmp_path / "note"
    with SqliteStore(store_path(cluster.directory.parent)) as store:
        store.apply(load_documents(PODS.format(note=note), "test"))
        kubelet = Kubelet(cluster, store)
        report = kubelet.sync_pods()
        assert set(report.synced) == {"default/stubborn", "default/polite"}, report.rejected
        wait_for("the stubborn pod noted its start", lambda: note.exists() and "started" in note.read_text())
        records = {name: cluster.find_pod(name, "default") for name in ("stubborn", "polite")}
        pids = {name: r.container_processes()["app"].pid for name, r in records.items() if r is not None}
        assert set(pids) == {"stubborn", "polite"}

        store.delete([ResourceRef("Pod", "default", "stubborn"), ResourceRef("Pod", "default", "polite")])
        with ThreadPoolExecutor(max_workers=1) as pool:
            removing = pool.submit(kubelet.sync_pods)
            # While its containers stop (it ignores SIGTERM) the pod is recorded terminating.
            wait_for(
                "stubborn marked terminating after its SIGTERM",
                lambda: (
                    (r := cluster.find_pod("stubborn", "default")) is not None
                    and r.terminating
                    and "TERM" in note.read_text()
                ),
                timeout=10,
            )
            report = removing.result(timeout=30)
        assert set(report.removed) == {"default/stubborn", "default/polite"}
    assert cluster.find_pod("stubborn", "default") is None and cluster.find_pod("polite", "default") is None
    assert not alive(pids["stubborn"]) and not alive(pids["polite"])
    # It got SIGTERM, ignored it and looped on: only the SIGKILL after the grace ended it.
    assert note.read_text().splitlines() == ["started", "TERM"]
