"""``python -m ambientctl.cluster.kubelet_main``: the local cluster's long-running kubelet.

Started by ``cluster up`` (as the component ``kubelet``, on the host: it creates network namespaces
that every other process must see, so it keeps the host's mount namespace). It watches the store and,
whenever a Pod, Service or Deployment changed (or a failed pod's retry is due), runs the Deployment
controller (``deployments.DeploymentController``: pods created/deleted in the store) and then
``Kubelet.sync_pods``: new
Pod manifests start live (network, CNI ADD, command), deleted ones stop (CNI DEL), Services follow.
After its first full sync it writes ``<cluster dir>/run/kubelet.ready`` (what ``cluster up`` waits for).
Every pass it observes the pods' processes (``Kubelet.check_containers``: exits recorded, restarts per
``restartPolicy`` with Kubernetes' back-off, statuses written). Every ``CREDENTIALS_EVERY_S`` it re-issues the service-account tokens of running pods that are due
(``Kubelet.refresh_credentials``: 80% of their 1 h lifetime), so pods never hold an expired one.
SIGTERM/SIGINT stop it between passes; pods keep running (as when a kubelet restarts). It also exits
when its cluster is no longer up (removed behind its back), so it never outlives the cluster.
Must not: exit on a failed pass (it is logged; the next change or retry tries again).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import structlog

from meshcore.store import SqliteStore, StoreError, store_path

from .cluster import Cluster
from .component import start_component
from .deployments import DeploymentController
from .errors import ClusterError, ClusterNotUp
from .kubelet import Kubelet

log = structlog.get_logger("ambientctl.cluster.kubelet")

READY_FILE = "kubelet.ready"
POLL_S = 0.1
LIVENESS_EVERY_S = 2.0  # how often an idle kubelet checks that its cluster still exists
CREDENTIALS_EVERY_S = 30.0  # how often running pods' tokens are checked for refresh
WATCHED_KINDS = frozenset({"Pod", "Service", "Deployment"})


def ready_path(cluster: Cluster) -> Path:
    return cluster.procs.run_dir / READY_FILE


def run(cluster: Cluster, store: SqliteStore, stop: threading.Event, *, poll: float = POLL_S) -> None:
    """Sync on every relevant change until ``stop`` is set."""
    kubelet = Kubelet(cluster, store)
    deployments = DeploymentController(store)
    revision = -1
    first = True
    checked = time.monotonic()
    credentials_checked = time.monotonic()
    while not stop.is_set():
        due = kubelet.next_retry()
        retry = due is not None and due <= time.monotonic()
        try:
            current = store.revision()
            changed = revision < 0 or any(
                e.resource.kind in WATCHED_KINDS for e in store.changes_since(revision)
            )
            revision = current
            if changed or retry:
                done = deployments.sync()
                if done:
                    log.info("deployments synced", changes=done)
                report = kubelet.sync_pods()
                if report.synced or report.removed or report.rejected:
                    log.info(
                        "pods synced",
                        running=len(report.synced),
                        removed=list(report.removed),
                        failing=report.rejected,
                    )
            restarted = kubelet.check_containers()
            if restarted:
                log.info("pod statuses changed", pods=restarted)
            if time.monotonic() - credentials_checked >= CREDENTIALS_EVERY_S:
                credentials_checked = time.monotonic()
                refreshed = kubelet.refresh_credentials()
                if refreshed:
                    log.info("pod tokens refreshed", pods=refreshed)
            if time.monotonic() - checked >= LIVENESS_EVERY_S:
                checked = time.monotonic()
                if cluster.status().phase == "down":
                    raise ClusterNotUp(str(cluster.directory.parent))
            if first:
                ready_path(cluster).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                ready_path(cluster).write_text(f"{time.time()}\n")
                log.info("kubelet ready")
                first = False
        except ClusterNotUp:
            log.info("the cluster is not up any more: kubelet exits")
            return
        except (ClusterError, StoreError) as e:
            log.warning("sync pass failed; retrying on the next change", error=str(e))
        due = kubelet.next_retry()
        wait = poll if due is None else max(0.0, min(poll, due - time.monotonic()))
        stop.wait(wait)


def main(argv: list[str] | None = None) -> None:
    started = start_component("kubelet", "the local cluster's kubelet", argv)
    try:
        with SqliteStore(store_path(started.args.state_dir)) as store:
            run(started.cluster, store, started.stop)
    except (ClusterError, StoreError) as e:
        print(f"kubelet: {e}", file=sys.stderr)
        sys.exit(2)
    log.info("kubelet stopped")


if __name__ == "__main__":
    main()
