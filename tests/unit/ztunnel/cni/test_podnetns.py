"""podnetns: the persisted pod -> netns map (atomic, private, stale entries dropped, corruption survived)
and the /proc scan for a pod's processes (on a fake /proc tree)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from meshcore.aio.netns import NetnsId
from ztunnel.cni.podnetns import NetnsEntry, NetnsMap, find_pod_netns, named_netns_path

# Any file has a (dev, inode); the map only compares identities, so plain files stand in for netns here.


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _entry(path: Path, container: str = "c1") -> NetnsEntry:
    return NetnsEntry(str(path), str(NetnsId.of_path(str(path))), container)


def test_recorded_entries_survive_a_restart_in_a_private_file(tmp_path: Path) -> None:
    ns = _file(tmp_path / "netns" / "pod-a")
    map_file = tmp_path / "run" / "pods.json"
    first = NetnsMap(map_file)
    assert first.load() == []
    assert first.record("demo", "a", _entry(ns)) is True
    assert first.record("demo", "a", _entry(ns)) is False  # unchanged: not rewritten
    assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
    second = NetnsMap(map_file)
    assert second.load() == []
    assert second.get("demo", "a") == _entry(ns)
    assert [p.name for p in map_file.parent.iterdir()] == ["pods.json"]  # no temp files left


def test_stale_entries_are_dropped_on_load(tmp_path: Path) -> None:
    kept, gone, replaced = (_file(tmp_path / n) for n in ("kept", "gone", "replaced"))
    m = NetnsMap(tmp_path / "pods.json")
    m.record("demo", "kept", _entry(kept))
    m.record("demo", "gone", _entry(gone))
    m.record("demo", "replaced", _entry(replaced))
    gone.unlink()
    replaced.rename(tmp_path / "replaced-old")  # the old inode stays in use, so the new file's differs
    _file(replaced)
    again = NetnsMap(tmp_path / "pods.json")
    problems = again.load()
    assert [k for k, _ in again.items()] == [("demo", "kept")]
    assert len(problems) == 2 and all("no longer names" in p for p in problems)


def test_a_corrupt_map_counts_as_empty_and_is_replaced(tmp_path: Path) -> None:
    map_file = tmp_path / "pods.json"
    map_file.write_text("{ not json")
    m = NetnsMap(map_file)
    (problem,) = m.load()
    assert "empty map" in problem and len(m) == 0
    ns = _file(tmp_path / "ns")
    m.record("demo", "a", _entry(ns))
    assert json.loads(map_file.read_text())["pods"]["demo/a"]["path"] == str(ns)


def test_forget_only_drops_the_entry_of_the_given_sandbox(tmp_path: Path) -> None:
    ns = _file(tmp_path / "ns")
    m = NetnsMap(None)
    m.record("demo", "a", _entry(ns, "new-sandbox"))
    assert m.forget("demo", "a", "old-sandbox") is None
    assert m.forget("demo", "a", "new-sandbox") == _entry(ns, "new-sandbox")
    assert m.forget("demo", "a") is None


def _proc(root: Path, pid: int, environ: dict[str, str], netns: Path) -> None:
    d = root / str(pid)
    _file(d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in environ.items()) + b"\0")
    (d / "ns").mkdir()
    os.symlink(netns, d / "ns" / "net")


def test_the_scan_finds_the_pods_process_and_prefers_a_named_path(tmp_path: Path) -> None:
    proc, run = tmp_path / "proc", tmp_path / "netns"
    pod_ns, own_ns, other_ns = _file(run / "pod-demo-web"), _file(tmp_path / "own"), _file(tmp_path / "x")
    _proc(proc, 10, {"POD_NAME": "web", "POD_NAMESPACE": "demo"}, own_ns)  # a host-network process
    _proc(proc, 11, {"POD_NAME": "web", "POD_NAMESPACE": "other"}, other_ns)
    _proc(proc, 12, {"PATH": "/bin", "POD_NAMESPACE": "demo", "POD_NAME": "web"}, pod_ns)
    (proc / "self").mkdir()
    found = find_pod_netns(
        "demo", "web", proc_root=proc, exclude=NetnsId.of_path(str(own_ns)), run_dir=str(run)
    )
    assert found == NetnsEntry(str(pod_ns), str(NetnsId.of_path(str(pod_ns))))
    assert named_netns_path(NetnsId.of_path(str(other_ns)), str(run)) is None


def test_the_scan_falls_back_to_the_proc_path_and_finds_nothing_for_unknown_pods(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    anon = _file(tmp_path / "anon")
    _proc(proc, 7, {"POD_NAME": "web", "POD_NAMESPACE": "demo"}, anon)
    found = find_pod_netns("demo", "web", proc_root=proc, run_dir=str(tmp_path / "none"))
    assert found is not None and found.path == str(proc / "7" / "ns" / "net")
    assert find_pod_netns("demo", "db", proc_root=proc) is None
    assert find_pod_netns("demo", "web", proc_root=tmp_path / "missing") is None


def test_the_scan_never_takes_another_clusters_pod_of_the_same_name(tmp_path: Path) -> None:
    proc, run = tmp_path / "proc", tmp_path / "netns"
    theirs, ours = _file(tmp_path / "theirs"), _file(tmp_path / "ours")
    # Another local cluster's shop/web runs first on the same machine (lower pid), with its own uid.
    _proc(proc, 20, {"POD_NAME": "web", "POD_NAMESPACE": "shop", "POD_UID": "uid-other-cluster"}, theirs)
    _proc(proc, 30, {"POD_NAME": "web", "POD_NAMESPACE": "shop", "POD_UID": "uid-ours"}, ours)
    found = find_pod_netns("shop", "web", proc_root=proc, run_dir=str(run), uid="uid-ours")
    assert found is not None and found.netns_id == str(NetnsId.of_path(str(ours)))
    assert find_pod_netns("shop", "web", proc_root=proc, run_dir=str(run), uid="uid-gone") is None
