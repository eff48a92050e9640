"""The cluster supervisor: its back-off, how it describes exits, its report file, and one restart cycle
on real host processes (a recorded cluster, no network namespaces) driven by a fake clock."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster, ClusterSpec
from ambientctl.cluster.mesh import Command
from ambientctl.cluster.state import ClusterState, StateFile
from ambientctl.cluster.supervision import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    ComponentHealth,
    LastExit,
    SupervisorReport,
    describe_exit,
    exit_from_returncode,
    next_backoff,
    read_report,
    write_report,
)
from ambientctl.cluster.supervisor import Supervisor
from ambientctl.commands.cluster import component_row


@pytest.mark.parametrize(
    ("previous", "ran_for", "expected"),
    [
        (0.0, 0.5, BACKOFF_INITIAL_S),
        (1.0, 0.5, 2.0),
        (8.0, 3.0, 16.0),
        (16.0, 3.0, BACKOFF_MAX_S),
        (BACKOFF_MAX_S, 3.0, BACKOFF_MAX_S),
        (BACKOFF_MAX_S, 59.9, BACKOFF_MAX_S),
        (BACKOFF_MAX_S, 60.0, BACKOFF_INITIAL_S),
    ],
    ids=[
        "the first death waits 1 s",
        "a second quick death waits twice as long",
        "the delay keeps doubling",
        "doubling stops at 30 s",
        "at the cap it stays at 30 s",
        "a component up for just under a minute keeps its back-off",
        "a component up for a minute starts over at 1 s",
    ],
)
def test_back_off_doubles_from_1s_to_30s_and_resets_after_a_minute_up(
    previous: float, ran_for: float, expected: float
) -> None:
    assert next_backoff(previous, ran_for) == expected


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (-signal.SIGKILL, "killed by SIGKILL 12s ago"),
        (-signal.SIGSEGV, "killed by SIGSEGV 12s ago"),
        (3, "exited with code 3 12s ago"),
        (0, "exited with code 0 12s ago"),
        (None, "exit status unknown 12s ago"),
    ],
    ids=[
        "a SIGKILL is named as the signal",
        "a crash is named as its signal",
        "an exit code is shown as is",
        "a clean exit is shown as code 0",
        "a process that was not the supervisor's child has an unknown exit",
    ],
)
def test_exits_are_described_as_an_operator_reads_them(returncode: int | None, expected: str) -> None:
    assert describe_exit(exit_from_returncode(returncode, at=1000.0), now=1012.0) == expected


@pytest.mark.parametrize(
    ("ago", "shown"),
    [(0.4, "0s"), (119.0, "119s"), (600.0, "10m"), (7300.0, "2h")],
    ids=["under a second", "under two minutes in seconds", "minutes", "hours"],
)
def test_exit_ages_are_short(ago: float, shown: str) -> None:
    assert describe_exit(LastExit(at=0.0, code=1), now=ago) == f"exited with code 1 {shown} ago"


def test_the_report_round_trips_and_a_stale_one_is_ignored(tmp_path: Path) -> None:
    report = SupervisorReport(
        pid=4242,
        phase="up",
        timings=(("istiod", 1.5),),
        components={
            "ztunnel-node-1": ComponentHealth(restarts=2, last_exit=LastExit(at=5.0, signal="SIGKILL"))
        },
    )
    write_report(tmp_path, report)
    assert read_report(tmp_path) == report
    assert read_report(tmp_path, pid=4242) == report
    assert read_report(tmp_path, pid=4243) is None  # written by another supervisor
    (tmp_path / "supervisor.json").write_text("{not json")
    assert read_report(tmp_path) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    StateFile(tmp_path / "cluster").save(ClusterState(phase="up", spec=ClusterSpec(prefix="ut-")))
    made = Cluster(tmp_path, prefix="ut-")
    try:
        yield made
    finally:
        made.procs.stop_all(list(made.components().values()) if made.is_up() else [])


def wait_exited(cluster: Cluster, name: str) -> None:
    deadline = time.monotonic() + 10
    record = cluster.components()[name]
    while cluster.procs.is_running(record):
        assert time.monotonic() < deadline, "the killed process is still there"
        time.sleep(0.02)


def test_a_killed_component_is_restarted_after_its_back_off_with_the_same_command(cluster: Cluster) -> None:
    clock = FakeClock()
    command = Command("sleeper", "", ("sleep", "300"), {"PATH": os.defpath, "MARK": "kept"})
    first = cluster.start_component(command.name, command.netns, command.argv, command.env)
    supervisor = Supervisor(cluster, clock=clock, wall=lambda: 5000.0)
    supervisor.watch({command.name: command})
    assert supervisor.check() is False  # running: nothing to do

    os.kill(first.pid, signal.SIGKILL)
    wait_exited(cluster, "sleeper")
    assert supervisor.check() is True
    health = supervisor.components()["sleeper"]
    assert (health.state, health.restarts, health.backoff_s) == ("BackOff", 0, BACKOFF_INITIAL_S)
    assert health.last_exit == LastExit(at=5000.0, signal="SIGKILL")

    clock.now += BACKOFF_INITIAL_S / 2
    assert supervisor.check() is False  # not due yet
    clock.now += BACKOFF_INITIAL_S
    assert supervisor.check() is True
    second = cluster.components()["sleeper"]
    assert second.pid != first.pid and cluster.procs.is_running(second)
    assert second.argv == first.argv
    assert open(f"/proc/{second.pid}/environ", "rb").read().split(b"\0").count(b"MARK=kept") == 1
    health = supervisor.components()["sleeper"]
    assert (health.state, health.restarts) == ("Running", 1)

    # It dies again quickly: the next back-off is twice as long, and the status row says so.
    os.kill(second.pid, signal.SIGTERM)
    wait_exited(cluster, "sleeper")
    supervisor.check()
    health = supervisor.components()["sleeper"]
    assert (health.state, health.backoff_s) == ("BackOff", 2 * BACKOFF_INITIAL_S)
    assert health.last_exit == LastExit(at=5000.0, signal="SIGTERM")


def test_a_component_stopped_on_purpose_is_not_restarted(cluster: Cluster) -> None:
    clock = FakeClock()
    command = Command("sleeper", "", ("sleep", "300"), {"PATH": os.defpath})
    cluster.start_component(command.name, command.netns, command.argv, command.env)
    supervisor = Supervisor(cluster, clock=clock)
    supervisor.watch({command.name: command})
    assert cluster.stop_component("sleeper") is True
    clock.now += 100
    supervisor.check()
    clock.now += 100
    supervisor.check()
    assert "sleeper" not in cluster.components()
    assert supervisor.components()["sleeper"].state == "Stopped"


def test_a_restart_never_replaces_a_process_someone_else_started(cluster: Cluster) -> None:
    command = Command("sleeper", "", ("sleep", "300"), {"PATH": os.defpath})
    first = cluster.start_component(command.name, command.netns, command.argv, command.env)
    os.kill(first.pid, signal.SIGKILL)
    wait_exited(cluster, "sleeper")
    second = cluster.start_component(command.name, command.netns, command.argv, command.env)
    assert cluster.restart_component(first, command.argv, command.env) is None
    assert cluster.components()["sleeper"] == second


@pytest.mark.parametrize(
    ("health_state", "running", "expected"),
    [
        ("Running", True, ["ztunnel-node-1", "am-node-1", "77", "Running", "2", "killed by SIGKILL 12s ago"]),
        ("BackOff", False, ["ztunnel-node-1", "am-node-1", "77", "BackOff (restart in 4s)", "2",
                            "killed by SIGKILL 12s ago"]),
    ],
    ids=["a restarted component shows its restarts and last exit", "a component waiting shows when it restarts"],
)  # fmt: skip
def test_status_rows_show_restarts_and_the_last_exit(
    health_state: str, running: bool, expected: list[str]
) -> None:
    from ambientctl.cluster.cluster import ProcessStatus

    status = ProcessStatus(
        name="ztunnel-node-1",
        netns="am-node-1",
        pid=77,
        running=running,
        log="x.log",
        state=health_state,
        restarts=2,
        last_exit=LastExit(at=1000.0, signal="SIGKILL"),
        restart_at=1016.0 if health_state == "BackOff" else None,
    )
    assert component_row(status, now=1012.0) == expected
