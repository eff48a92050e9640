"""The local cluster for real (root): namespaces, veths, routes, DNAT, hosts files and pod processes.

Each test makes its own cluster with a random prefix ("t" + 3 characters + "-") in a temp state
directory and always runs ``down`` afterwards, so parallel runs and failed tests leave nothing behind.
Traffic is real TCP between pod namespaces; every wait is bounded by a deadline inside the pod.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.cluster import Cluster, ClusterSpec, PodPort, PodSpec, ServicePort
from ambientctl.cluster.errors import (
    ClusterAlreadyUp,
    CommandNotFound,
    LeftoversFound,
    PodNotFound,
    UnknownNode,
)
from ambientctl.cluster.kubelet import Kubelet
from ambientctl.cluster.procs import ProcessSupervisor
from ambientctl.cluster.testing import alive
from meshcore.store import ResourceRef, SqliteStore, build_resource, store_path

pytestmark = pytest.mark.timeout(60)

# A TCP server that answers every connection with its pod's name (POD_NAME comes from the cluster).
ECHO_SERVER = """
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
s.listen(64)
while True:
    c, _ = s.accept()
    c.sendall(os.environ["POD_NAME"].encode() + b"\\n")
    c.close()
"""

# Connects to each target: retries until the first answer (the server may still be starting) within
# a deadline, then `count` more times; prints {target: {answer: n}} as JSON.
CLIENT = """
import collections, json, socket, sys, time
count = int(sys.argv[1])
result = {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    answers = collections.Counter()
    deadline = time.monotonic() + 10
    while sum(answers.values()) < count:
        try:
            with socket.create_connection((host, int(port)), timeout=2) as s:
                answers[s.makefile().readline().strip()] += 1
        except OSError as e:
            if sum(answers.values()) or time.monotonic() > deadline:
                answers["error: " + type(e).__name__] += 1
                break
            time.sleep(0.05)
    result[target] = dict(answers)
print(json.dumps(result))
"""


def echo_pod(name: str, node: str, namespace: str = "default", port: int = 8080) -> PodSpec:
    return PodSpec(
        name,
        namespace,
        node,
        command=(sys.executable, "-c", ECHO_SERVER),
        labels={"app": "echo"},
        ports=(PodPort(port=port, name="http"),),
        env={"PORT": str(port)},
    )


def probe(
    cluster: Cluster, pod: str, count: int, *targets: str, namespace: str = "default"
) -> dict[str, dict[str, int]]:
    result = cluster.exec(pod, namespace, [sys.executable, "-c", CLIENT, str(count), *targets], timeout=40)
    assert result.returncode == 0, result.stderr
    answers: dict[str, dict[str, int]] = json.loads(result.stdout)
    return answers


def random_prefix() -> str:
    return "t" + "".join(random.choices(string.ascii_lowercase + string.digits, k=3)) + "-"


def netns_names(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def host_links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if f": {prefix}" in line]


def assert_nothing_left(prefix: str, pids: list[int]) -> None:
    assert netns_names(prefix) == []
    assert host_links(prefix) == []
    assert list(Path("/etc/netns").glob(f"{prefix}*")) == []
    assert [pid for pid in pids if alive(pid)] == []


@pytest.fixture
def prefix() -> str:
    return random_prefix()


@pytest.fixture
def cluster(tmp_path: Path, prefix: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, prefix=prefix)
    try:
        made.up(ClusterSpec(nodes=2, prefix=prefix))
        yield made
    finally:
        Cluster(tmp_path, prefix=prefix).down()


def test_pods_on_two_nodes_reach_each_other_by_ip_vip_and_name(cluster: Cluster) -> None:
    ip_a = cluster.add_pod(echo_pod("echo-a", "node-1"))
    ip_b = cluster.add_pod(echo_pod("echo-b", "node-2"))
    cluster.add_pod(PodSpec("client", "default", "node-2"))
    cluster.add_pod(PodSpec("client", "other", "node-1"))
    assert ip_a.startswith("10.244.1.") and ip_b.startswith("10.244.2.")
    vip = cluster.set_service("echo", "default", None, [ServicePort(port=80, target_port=8080)], [ip_a, ip_b])

    answers = probe(
        cluster,
        "client",
        1,
        f"{ip_a}:8080",
        f"{ip_b}:8080",
        f"{vip}:80",
        "echo:80",
        "echo.default.svc.cluster.local:80",
    )
    assert answers[f"{ip_a}:8080"] == {"echo-a": 1}  # across nodes, by pod IP
    assert answers[f"{ip_b}:8080"] == {"echo-b": 1}  # same node, by pod IP
    for target in (f"{vip}:80", "echo:80", "echo.default.svc.cluster.local:80"):
        assert set(answers[target]) <= {"echo-a", "echo-b"} and sum(answers[target].values()) == 1, answers

    # Another namespace: the short name is not its own, the namespaced name works.
    other = probe(cluster, "client", 1, "echo.default:80", namespace="other")
    assert sum(other["echo.default:80"].values()) == 1 and "error" not in str(other)


def test_a_vip_spreads_connections_over_endpoints_on_two_nodes(cluster: Cluster) -> None:
    ip_a = cluster.add_pod(echo_pod("echo-a", "node-1"))
    ip_b = cluster.add_pod(echo_pod("echo-b", "node-2"))
    cluster.add_pod(PodSpec("client", "default", "node-1"))
    vip = cluster.set_service("echo", "default", None, [ServicePort(port=80, target_port=8080)], [ip_a, ip_b])
    # Wait for both servers first, then count: 60 random picks all landing on one endpoint is 2^-59.
    probe(cluster, "client", 1, f"{ip_a}:8080", f"{ip_b}:8080")
    answers = probe(cluster, "client", 60, f"{vip}:80")[f"{vip}:80"]
    assert set(answers) == {"echo-a", "echo-b"}, answers
    assert answers["echo-a"] + answers["echo-b"] == 60


def test_a_pod_reaches_itself_through_its_service_vip(cluster: Cluster) -> None:
    ip = cluster.add_pod(echo_pod("solo", "node-1"))
    vip = cluster.set_service("solo", "default", None, [ServicePort(port=80, target_port=8080)], [ip])
    assert probe(cluster, "solo", 1, f"{ip}:8080", f"{vip}:80")[f"{vip}:80"] == {"solo": 1}


def test_a_removed_pod_leaves_its_services_and_its_process_dies(cluster: Cluster, prefix: str) -> None:
    ip_a = cluster.add_pod(echo_pod("echo-a", "node-1"))
    ip_b = cluster.add_pod(echo_pod("echo-b", "node-2"))
    cluster.set_service("echo", "default", None, [ServicePort(port=80, target_port=8080)], [ip_a, ip_b])
    record = cluster.find_pod("echo-a", "default")
    assert record is not None and record.process is not None

    cluster.remove_pod("echo-a", "default")

    assert not alive(record.process.pid)
    assert record.netns not in netns_names(prefix)
    assert [s.endpoints for s in cluster.services()] == [(ip_b,)]
    with pytest.raises(PodNotFound):
        cluster.remove_pod("echo-a", "default")


def test_up_on_a_running_cluster_changes_nothing_and_reports_it(cluster: Cluster, prefix: str) -> None:
    before = netns_names(prefix)
    again = cluster.up(ClusterSpec(nodes=2, prefix=prefix))
    assert again.changed is False and again.phase == "up" and len(again.nodes) == 2
    assert cluster.up().changed is False
    assert netns_names(prefix) == before
    with pytest.raises(ClusterAlreadyUp, match="cluster down"):
        cluster.up(ClusterSpec(nodes=3, prefix=prefix))


def test_a_bad_pod_is_refused_alone_and_leaves_no_namespace(cluster: Cluster, prefix: str) -> None:
    with pytest.raises(CommandNotFound):
        cluster.add_pod(PodSpec("web", "default", "node-1", command=("no-such-program-h10",)))
    with pytest.raises(UnknownNode, match="node-1, node-2"):
        cluster.add_pod(PodSpec("web", "default", "node-7"))
    assert [n for n in netns_names(prefix) if "pod" in n] == []
    assert cluster.add_pod(PodSpec("web", "default", "node-1")) == "10.244.1.2"  # the cluster carries on
    assert cluster.add_pod(PodSpec("web", "default", "node-1")) == "10.244.1.2"  # and adding again is a no-op


def test_down_removes_every_namespace_link_file_and_process(tmp_path: Path, prefix: str) -> None:
    cluster = Cluster(tmp_path, prefix=prefix)
    try:
        cluster.up(ClusterSpec(nodes=2, prefix=prefix))
        cluster.add_pod(echo_pod("echo-a", "node-1"))
        cluster.add_pod(echo_pod("echo-b", "node-2"))
        component = cluster.start_component("fake-istiod", f"{prefix}fabric", ["sleep", "30"])
        pids = [p.process.pid for p in cluster.pods() if p.process] + [component.pid]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        assert len(netns_names(prefix)) == 5
    finally:
        report = cluster.down()
    assert sorted(report.processes_stopped) == sorted(pids)
    assert_nothing_left(prefix, pids)
    assert not (tmp_path / "cluster" / "state.json").exists()
    assert cluster.down().netns_removed == ()  # idempotent


def test_down_after_a_crash_without_state_or_pidfiles_still_cleans_up(tmp_path: Path, prefix: str) -> None:
    cluster = Cluster(tmp_path, prefix=prefix)
    try:
        cluster.up(ClusterSpec(nodes=2, prefix=prefix))
        cluster.add_pod(echo_pod("echo-a", "node-1"))
        cluster.add_pod(echo_pod("echo-b", "node-2"))
        pids = [p.process.pid for p in cluster.pods() if p.process]
        # The crash: every record of the cluster is lost.
        (tmp_path / "cluster" / "state.json").unlink()
        for pidfile in (tmp_path / "cluster" / "run").glob("*.pid"):
            pidfile.unlink()
        with pytest.raises(LeftoversFound, match=prefix):
            Cluster(tmp_path, prefix=prefix).up(ClusterSpec(nodes=2, prefix=prefix))
    finally:
        report = Cluster(tmp_path, prefix=prefix).down()
    assert report.had_state is False
    assert len(report.netns_removed) == 5
    assert sorted(report.processes_stopped) == sorted(pids)  # found through their network namespaces
    assert_nothing_left(prefix, pids)


def test_down_after_a_corrupt_state_file_sweeps_by_prefix(tmp_path: Path, prefix: str) -> None:
    cluster = Cluster(tmp_path, prefix=prefix)
    try:
        cluster.up(ClusterSpec(nodes=1, prefix=prefix))
        (tmp_path / "cluster" / "state.json").write_text("{half a record")
    finally:
        report = Cluster(tmp_path, prefix=prefix).down()
    assert len(report.netns_removed) == 2
    assert_nothing_left(prefix, [])


def test_kubelet_registers_pods_and_services_in_the_store(cluster: Cluster) -> None:
    with SqliteStore(store_path(cluster.directory.parent)) as store:
        kubelet = Kubelet(cluster, store)
        kubelet.run_pod(echo_pod("echo-a", "node-1"))
        kubelet.run_pod(echo_pod("echo-b", "node-2"))
        kubelet.run_pod(PodSpec("client", "default", "node-1"))
        vip = kubelet.apply_service("echo", "default", [{"port": 80, "targetPort": "http"}], {"app": "echo"})

        pod = store.get(ResourceRef("Pod", "default", "echo-b"))
        assert pod is not None
        assert pod.spec["nodeName"] == "node-2" and pod.status["podIP"].startswith("10.244.2.")
        assert pod.status["phase"] == "Running"
        service = store.get(ResourceRef("Service", "default", "echo"))
        assert service is not None and service.spec["clusterIP"] == vip
        (programmed,) = cluster.services()
        assert programmed.vip == vip and len(programmed.endpoints) == 2

        answers = probe(cluster, "client", 1, "echo.default.svc.cluster.local:80")
        assert sum(answers["echo.default.svc.cluster.local:80"].values()) == 1 and "error" not in str(answers)

        kubelet.delete_pod("echo-a", "default")
        assert store.get(ResourceRef("Pod", "default", "echo-a")) is None
        assert len(cluster.services()[0].endpoints) == 1


def test_the_cli_brings_a_cluster_up_shows_it_runs_commands_and_takes_it_down(
    tmp_path: Path, prefix: str
) -> None:
    runner = CliRunner()
    spec = tmp_path / "cluster.yaml"
    spec.write_text(f"nodes: 2\nprefix: {prefix}\n")

    def ctl(*args: str) -> str:
        result = runner.invoke(app, ["--state-dir", str(tmp_path), "cluster", *args])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    down = ""
    try:
        assert "cluster up: 2 node(s)" in ctl("up", "-f", str(spec), "--no-mesh")
        assert "(unchanged)" in ctl("up", "--no-mesh")
        Cluster(tmp_path, prefix=prefix).add_pod(PodSpec("web", "shop", "node-2"))
        status = ctl("status")
        assert "node-2" in status and "10.244.2.2" in status and "shop" in status
        # exec keeps the terminal, so check through a subprocess: the exit code is the command's.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ambientctl",
                "--state-dir",
                str(tmp_path),
                "cluster",
                "exec",
                "web",
                "-n",
                "shop",
                "--",
                "sh",
                "-c",
                "ip -o -4 addr show eth0; exit 3",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 3, done.stderr
        assert "10.244.2.2/32" in done.stdout
    finally:
        down = ctl("down")
    assert "cluster down: removed 4 network namespace(s)" in down
    assert_nothing_left(prefix, [])


def pod_manifest(
    name: str, command: list[str], labels: dict[str, str], node: str | None = None
) -> dict[str, object]:
    spec: dict[str, object] = {"containers": [{"name": "app", "image": "python", "command": command}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": spec,
    }


def test_the_kubelet_runs_exactly_the_stores_pod_manifests(cluster: Cluster) -> None:
    sleeper = ["sleep", "30"]
    with SqliteStore(store_path(cluster.directory.parent)) as store:
        kubelet = Kubelet(cluster, store)
        store.apply(
            build_resource(doc)
            for doc in (
                pod_manifest("a", sleeper, {"app": "a"}),
                pod_manifest("b", sleeper, {"app": "b"}),
                pod_manifest("lost", sleeper, {}, node="node-9"),
            )
        )
        report = kubelet.sync_pods()
        assert set(report.synced) == {"shop/a", "shop/b"} and "node-9" in report.rejected["shop/lost"]
        placed = {p.spec.name: p for p in cluster.pods()}
        assert (placed["a"].spec.node, placed["b"].spec.node) == (
            "node-1",
            "node-2",
        )  # spread by the scheduler
        stored_a = store.get(ResourceRef("Pod", "shop", "a"))
        assert stored_a is not None and stored_a.spec["nodeName"] == "node-1"
        assert (
            stored_a.status["podIP"] == placed["a"].ip and stored_a.spec["containers"][0]["image"] == "python"
        )
        pid_a = placed["a"].process.pid if placed["a"].process else 0
        pid_b = placed["b"].process.pid if placed["b"].process else 0

        # Relabel a (no restart), change b's command (restart), delete lost from the store.
        store.apply(
            [
                build_resource(
                    pod_manifest("a", sleeper, {"app": "a", "istio.io/dataplane-mode": "ambient"}, "node-1")
                )
            ]
        )
        store.apply([build_resource(pod_manifest("b", ["sleep", "31"], {"app": "b"}, "node-2"))])
        store.delete([ResourceRef("Pod", "shop", "lost")])
        assert kubelet.sync_pods().rejected == {}
        after = {p.spec.name: p for p in cluster.pods()}
        assert after["a"].process is not None and after["a"].process.pid == pid_a and alive(pid_a)
        assert after["a"].spec.labels["istio.io/dataplane-mode"] == "ambient"
        assert after["b"].process is not None and after["b"].process.pid != pid_b and not alive(pid_b)

        store.delete([ResourceRef("Pod", "shop", "a")])
        assert kubelet.sync_pods().removed == ("shop/a",)
        assert [p.spec.name for p in cluster.pods()] == ["b"] and not alive(pid_a)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A state-directory parent any user may write (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ambientctl-cluster-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_ctl(
    state_parent: Path, argv_prefix: list[str], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    command = [
        *argv_prefix,
        sys.executable,
        "-m",
        "ambientctl",
        "--state-dir",
        str(state_parent / "s"),
        "cluster",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("verb", ["up", "down"])
def test_a_normal_user_is_told_in_one_line_that_root_is_needed(open_dir: Path, verb: str) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = run_ctl(open_dir, nobody, {"PATH": os.environ["PATH"]}, verb)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: the local cluster needs root: run with sudo")
    assert "Traceback" not in done.stderr


def test_missing_tools_are_named_with_the_package_to_install(open_dir: Path) -> None:
    done = run_ctl(open_dir, [], {"PATH": str(open_dir / "empty-bin")}, "up")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "`ip` and `nft` not found on PATH: install with `apt-get install iproute2 nftables`" in done.stderr
    assert not (open_dir / "s" / "cluster" / "state.json").exists()  # checked before any change


def pids_in_netns(netns: str) -> list[int]:
    target = os.stat(f"/run/netns/{netns}")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and alive(int(entry)):
                found.append(int(entry))
    return found


def test_a_pod_that_ignores_sigterm_and_forks_away_is_still_removed(tmp_path: Path, prefix: str) -> None:
    supervisor = ProcessSupervisor(
        tmp_path / "cluster" / "run", tmp_path / "cluster" / "logs", stop_grace=0.3
    )
    cluster = Cluster(tmp_path, prefix=prefix, supervisor=supervisor)
    # The shell ignores SIGTERM; `setsid` puts a sleeper in a session of its own, out of the pod's group.
    stubborn = "setsid sleep 300 & trap '' TERM; while :; do sleep 0.2; done"
    try:
        cluster.up(ClusterSpec(nodes=1, prefix=prefix))
        cluster.add_pod(
            PodSpec("stubborn", "default", "node-1", command=("sh", "-c", stubborn), termination_grace_s=1)
        )
        record = cluster.find_pod("stubborn", "default")
        assert record is not None
        deadline = time.monotonic() + 10
        while len(pids := pids_in_netns(record.netns)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # the shell, the setsid'd sleeper and a loop sleep: all inside the pod
        assert len(pids) >= 3, pids

        # remove_pod returns only once the pod's processes are gone: it kills what ignores SIGTERM
        # (waiting for the 300 s sleeper instead would trip the test timeout).
        cluster.remove_pod("stubborn", "default")
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        cluster.down()
