"""Pods started at once on a local cluster (no mesh; a test CNI plugin on each node that refuses the pods
named ``bad-*``): each pod fails alone, a pod whose CNI ADD failed leaves no netns, record or process
behind, every started pod has its own address, and ``down`` then leaves nothing. Pods removed: out of
their Services before their processes stop, their address and name held until they are gone, several
removed at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster, ClusterSpec, PodSpec, ServicePort
from ambientctl.cluster.cni import CniPluginFailed, CniRuntime, build_conflist, node_conf_dir
from ambientctl.cluster.errors import ClusterError, PodTerminating
from ambientctl.cluster.testing import alive, random_prefix, wait_for

pytestmark = pytest.mark.timeout(90)

PLUGIN = "refuse-bad"
# ADD: prevResult back, or a CNI error for pods named bad-*; pods named slow-* first wait (30 s at most)
# for the file ``gate`` (from the conflist) after creating ``gate``.waiting; DEL: nothing to undo.
PLUGIN_SOURCE = f"""#!{sys.executable}
import json, os, sys, time
conf = json.load(sys.stdin)
args = dict(p.split("=", 1) for p in os.environ.get("CNI_ARGS", "").split(";") if "=" in p)
if os.environ["CNI_COMMAND"] == "ADD":
    if args.get("K8S_POD_NAME", "").startswith("slow-"):
        open(conf["gate"] + ".waiting", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(conf["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
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
            plugin_conf = {"type": PLUGIN, "gate": str(tmp_path / "gate")}
            (conf / "10-test.conflist").write_bytes(build_conflist("test", [plugin_conf]))
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


def test_a_pod_removed_while_it_starts_leaves_nothing_and_its_start_fails(
    cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    pod = PodSpec("slow-1", "default", "node-1", command=("sleep", "infinity"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(cluster.add_pod, pod)
        wait_for("the CNI ADD of slow-1 under way", lambda: Path(f"{gate}.waiting").exists(), timeout=30)
        reserved = cluster.find_pod("slow-1", "default")
        assert reserved is not None and reserved.process is None  # reserved, not started
        cluster.remove_pod("slow-1", "default")  # the lock is free while the pod's sandbox is made
        gate.touch()
        with pytest.raises(ClusterError, match="removed while it was starting"):
            starting.result(timeout=60)
    assert cluster.find_pod("slow-1", "default") is None
    assert reserved.netns not in netns_names(cluster.layout().prefix)
    assert [r for r in cluster.procs.pidfile_records() if "slow-1" in r.name] == []
    assert cluster.status().problems == ()


def test_a_terminating_pod_leaves_its_services_first_and_holds_its_address_and_name_until_gone(
    cluster: Cluster,
) -> None:
    # The shell ignores SIGTERM, so the pod stays terminating for its whole grace period (5 s).
    stubborn = ("sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    leaving = PodSpec("leaving", "default", "node-1", command=stubborn, termination_grace_s=5)
    leaving_ip = cluster.add_pod(leaving)
    staying_ip = cluster.add_pod(PodSpec("staying", "default", "node-1", command=("sleep", "infinity")))
    ports = [ServicePort(port=80, target_port=8080)]
    cluster.set_service("web", "default", None, ports, [leaving_ip, staying_ip])
    record = cluster.find_pod("leaving", "default")
    assert record is not None and record.process is not None
    with ThreadPoolExecutor(max_workers=1) as pool:
        removing = pool.submit(cluster.remove_pod, "leaving", "default")
        marked = wait_for(
            "leaving marked terminating",
            lambda: (r := cluster.find_pod("leaving", "default")) is not None and r.terminating,
            timeout=10,
        )
        assert marked and alive(record.process.pid)  # its process still runs: it is out of the Service first
        (web,) = cluster.services()
        assert web.endpoints == (staying_ip,)
        # A Service written meanwhile never lists it; a new pod gets another address; its name waits.
        cluster.set_service("web", "default", None, ports, [leaving_ip, staying_ip])
        assert cluster.services()[0].endpoints == (staying_ip,)
        newcomer_ip = cluster.add_pod(PodSpec("newcomer", "default", "node-1", command=("sleep", "infinity")))
        assert newcomer_ip not in (leaving_ip, staying_ip)
        with pytest.raises(PodTerminating, match="default/leaving is still terminating"):
            cluster.add_pod(PodSpec("leaving", "default", "node-1", command=("sleep", "infinity")))
        removing.result(timeout=30)
    assert cluster.find_pod("leaving", "default") is None
    assert not alive(record.process.pid)
    assert record.netns not in netns_names(cluster.layout().prefix)
    # Gone: its address is free again (the lowest free one of the node).
    assert cluster.add_pod(PodSpec("later", "default", "node-1", command=("sleep", "infinity"))) == leaving_ip
    assert cluster.status().problems == ()


def test_pods_removed_at_once_are_all_gone_and_leave_nothing(cluster: Cluster) -> None:
    pods = [PodSpec(f"p{i}", "default", f"node-{1 + i % 2}", command=("sleep", "infinity")) for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        ips = list(pool.map(cluster.add_pod, pods))
        cluster.set_service("web", "default", None, [ServicePort(port=80, target_port=8080)], ips)
        records = cluster.pods()
        list(pool.map(lambda p: cluster.remove_pod(p.name, p.namespace), pods))
    assert cluster.pods() == []
    assert cluster.services()[0].endpoints == ()
    assert set(netns_names(cluster.layout().prefix)) == set(cluster.layout().netns_names)
    assert [r.process.pid for r in records if r.process is not None and alive(r.process.pid)] == []
    assert cluster.procs.pidfile_records() == []
    assert cluster.status().problems == ()
