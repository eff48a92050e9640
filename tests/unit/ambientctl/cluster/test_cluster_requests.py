"""Requests the Cluster refuses before touching the kernel: bad input first, then "no cluster is up"."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambientctl.cluster import Cluster, PodSpec, ServicePort
from ambientctl.cluster.errors import ClusterNotUp, InvalidClusterSpec


def no_host_check() -> None:
    return None


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path, prefix="zz9q-", host_check=no_host_check)


PORT = ServicePort(port=80, target_port=8080)


@pytest.mark.parametrize(
    ("name", "namespace", "ports", "endpoints", "path"),
    [
        ("Echo", "default", [PORT], [], "name"),
        ("echo", "a.b", [PORT], [], "namespace"),
        ("echo", "default", [PORT, ServicePort(port=80, target_port=9090)], [], "ports[1]"),
        ("echo", "default", [PORT], ["10.244.1.2", "pod-a"], "endpoints[1]"),
    ],
    ids=[
        "an upper-case service name is refused",
        "a dotted namespace is refused",
        "the same port twice is refused",
        "an endpoint that is not an IPv4 address is refused",
    ],
)
def test_bad_services_are_refused_before_anything_changes(
    cluster: Cluster, name: str, namespace: str, ports: list[ServicePort], endpoints: list[str], path: str
) -> None:
    with pytest.raises(InvalidClusterSpec) as caught:
        cluster.set_service(name, namespace, None, ports, endpoints)
    assert caught.value.path == path


def test_requests_to_a_cluster_that_is_not_up_say_how_to_start_one(cluster: Cluster, tmp_path: Path) -> None:
    for call in (
        lambda: cluster.add_pod(PodSpec("web", "default", "node-1")),
        lambda: cluster.remove_pod("web", "default"),
        lambda: cluster.set_service("web", "default", None, [PORT], []),
        lambda: cluster.exec("web", "default", ["true"]),
        lambda: cluster.start_component("istiod", "zz9q-fabric", ["true"]),
    ):
        with pytest.raises(ClusterNotUp, match="ambientctl cluster up"):
            call()
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_status_of_no_cluster_is_down_and_lists_nothing(cluster: Cluster) -> None:
    status = cluster.status()
    assert (status.phase, status.nodes, status.pods, status.problems) == ("down", (), (), ())
