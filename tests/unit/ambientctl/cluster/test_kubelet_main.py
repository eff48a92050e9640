"""The kubelet component never outlives its cluster: with no cluster up it exits instead of polling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster
from ambientctl.cluster.kubelet_main import ready_path, run
from meshcore.store import SqliteStore, store_path

pytestmark = pytest.mark.timeout(10)


def test_a_kubelet_whose_cluster_is_not_up_exits_without_being_told(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, prefix="zz9q-", host_check=lambda: None)
    stop = threading.Event()
    with SqliteStore(store_path(tmp_path)) as store:
        run(cluster, store, stop, poll=0.01)  # returns by itself
    assert not stop.is_set() and not ready_path(cluster).exists()
