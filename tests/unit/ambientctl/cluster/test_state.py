"""state.json: round trip, private mode, and clear refusals of unreadable files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ambientctl.cluster.errors import ClusterBusy, StateCorrupt
from ambientctl.cluster.spec import ClusterSpec, PodSpec, ServicePort
from ambientctl.cluster.state import ClusterState, PodRecord, ProcessRecord, ServiceRecord, StateFile


def sample() -> ClusterState:
    process = ProcessRecord(
        name="pod/d/web", netns="am-pod-d-web", pid=42, start_ticks=7, argv=("sleep", "9"), log="/l"
    )
    pod = PodRecord(
        spec=PodSpec("web", "d", "node-1", command=("sleep", "9"), labels={"app": "web"}),
        ip="10.244.1.2",
        netns="am-pod-d-web",
        host_veth="am-v12345678",
        node_ip="172.30.0.1",
        process=process,
    )
    service = ServiceRecord(
        name="web",
        namespace="d",
        vip="10.96.0.1",
        ports=(ServicePort(port=80, target_port=8080),),
        endpoints=("10.244.1.2",),
    )
    return ClusterState(
        phase="up", spec=ClusterSpec(nodes=3), pods={"d/web": pod}, services={"d/web": service}
    )


def test_a_saved_state_loads_back_equal_and_private(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "cluster")
    assert file.load() is None
    file.save(sample())
    assert file.load() == sample()
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert [p.name for p in file.directory.iterdir()] == ["state.json"]  # no temp file left behind


def test_remove_is_idempotent(tmp_path: Path) -> None:
    file = StateFile(tmp_path)
    file.save(sample())
    file.remove()
    file.remove()
    assert file.load() is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "malformed"),
        (b'{"phase": "up"}', "missing required field"),
        (b'{"version": 9, "phase": "up", "spec": {}}', "version 9"),
    ],
    ids=["garbage is refused", "a partial record is refused", "a newer format is refused"],
)
def test_unreadable_state_says_how_to_recover(tmp_path: Path, content: bytes, reason: str) -> None:
    file = StateFile(tmp_path)
    file.path.write_bytes(content)
    with pytest.raises(StateCorrupt) as caught:
        file.load()
    assert reason in str(caught.value).lower() or reason in str(caught.value)
    assert "ambientctl cluster down" in str(caught.value)


def test_the_lock_can_be_taken_again_after_release(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "new")
    with file.lock():
        pass
    with file.lock():
        file.save(sample())
    assert file.load() is not None


def test_a_held_lock_makes_a_second_writer_give_up_with_a_clear_error(tmp_path: Path) -> None:
    file = StateFile(tmp_path)
    with file.lock():
        with pytest.raises(ClusterBusy, match="another ambientctl"):
            with StateFile(tmp_path).lock(timeout=0.1):
                pass
