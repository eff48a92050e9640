"""Pods started at once on a local cluster (no mesh; a test CNI plugin on each node that refuses the pods
named ``bad-*``): each pod fails alone, a pod whose CNI ADD failed leaves no netns, record or process
behind, every started pod has its own address, and ``down`` then leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster, ClusterSpec, PodSpec
from ambientctl.cluster.cni import CniPluginFailed, CniRuntime, build_conflist, node_conf_dir
from ambientctl.cluster.testing import random_prefix

pytestmark = pytest.mark.timeout(90)

PLUGIN = "refuse-bad"
# ADD: prevResult back, or a CNI error for pods named bad-*; DEL: nothing to undo.
PLUGIN_SOURCE = f"""#!{sys.executable}
import json, os, sys
conf = json.load(sys.stdin)
args = dict(p.split("=", 1) for p in os.environ.get("CNI_ARGS", "").split(";") if "=" in p)
if os.environ["CNI_COMMAND"] == "ADD":
    if args.get("K8S_POD_NAME", "").startswith("bad-"):
        print(json.dumps({{"cniVersion": "1.0.0", "code": 999, "msg": "refused by the test plugin"}}))
        sys.exit(1)
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": "1.0.0"}}))
"""


def netns_names(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    prefix = random_prefix()
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    plugin = bin_dir / PLUGIN
    plugin.write_text(textwrap.dedent(PLUGIN_SOURCE))
    plugin.chmod(0o755)
    made = Cluster(
        tmp_path, prefix=prefix, cni=CniRuntime(tmp_path / "cluster" / "nodes", cni_path=[str(bin_dir)])
    )
    try:
        made.up(ClusterSpec(nodes=2, prefix=prefix))
        for node in ("node-1", "node-2"):
            conf = node_conf_dir(made.nodes_dir, node)
            conf.mkdir(parents=True)
            (conf / "10-test.conflist").write_bytes(build_conflist("test", [{"type": PLUGIN}]))
        yield made
    finally:
        made.down()
        assert netns_names(prefix) == []


def test_pods_started_at_once_fail_alone_and_never_share_an_address(cluster: Cluster) -> None:
    names = [f"good-{i}" for i in range(8)] + ["bad-1", "bad-2"]
    pods = [
        PodSpec(n, "default", f"node-{1 + i % 2}", command=("sleep", "infinity")) for i, n in enumerate(names)
    ]
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        futures = {p.name: pool.submit(cluster.add_pod, p) for p in pods}
    ips = {}
    for name, future in futures.items():
        if name.startswith("bad-"):
            with pytest.raises(CniPluginFailed, match="refused by the test plugin"):
                future.result()
        else:
            ips[name] = future.result()

    assert len(set(ips.values())) == 8
    records = {r.spec.name: r for r in cluster.pods()}
    assert sorted(records) == sorted(ips)
    for name, record in records.items():
        assert record.ip == ips[name]
        assert record.process is not None and cluster.procs.is_running(record.process)
        assert cluster.net.netns_exists(record.netns)
    recorded = {r.netns for r in records.values()}
    layout_netns = set(cluster.layout().netns_names)
    assert set(netns_names(cluster.layout().prefix)) == recorded | layout_netns  # nothing of bad-* left
    assert cluster.status().problems == ()

    # The addresses the failed pods had reserved are free again; a new pod gets one nobody holds.
    late = cluster.add_pod(PodSpec("late", "default", "node-1", command=("sleep", "infinity")))
    assert late not in ips.values()
    record = cluster.find_pod("late", "default")
    assert record is not None and record.ip == late and cluster.net.netns_exists(record.netns)
