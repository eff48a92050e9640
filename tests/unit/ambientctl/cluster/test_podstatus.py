"""Container lifecycle and pod status as a kubelet computes them: restart policies, back-off with a
fake clock, and the columns kubectl derives from the status."""

from __future__ import annotations

import pytest

from ambientctl.cluster import podstatus
from ambientctl.cluster.podstatus import (
    ContainerTrack,
    display_status,
    pod_status,
    ready_count,
    restart_total,
)

W = "2026-01-01T00:00:00Z"


def crash_loop(policy: str, codes: list[int], *, run_for: float = 1.0) -> tuple[ContainerTrack, list[float]]:
    """Start, run ``run_for`` s, exit with each code in turn, restarting when due; returns the final
    track and the delays the back-off chose."""
    now = 0.0
    track = podstatus.started(ContainerTrack(name="c"), now, W)
    delays = []
    for code in codes:
        now += run_for
        track = podstatus.exited(track, code, policy, now, W)
        if track.restart_at is None:
            break
        delays.append(track.restart_at - now)
        assert not podstatus.restart_due(track, track.restart_at - 0.001)
        now = track.restart_at
        assert podstatus.restart_due(track, now)
        track = podstatus.started(track, now, W)
    return track, delays


def test_backoff_starts_at_10s_doubles_and_caps_at_5_minutes() -> None:
    track, delays = crash_loop("Always", [3] * 8)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert track.restart_count == 8


def test_a_container_that_ran_10_minutes_restarts_with_the_initial_backoff() -> None:
    track, delays = crash_loop("Always", [1, 1, 1])
    assert delays == [10, 20, 40]
    track = podstatus.exited(track, 1, "Always", 10_000.0 + podstatus.BACKOFF_RESET_S, W)
    assert track.backoff_s == 10


POLICIES = [
    ("Always restarts a clean exit", "Always", 0, True),
    ("Always restarts a failure", "Always", 3, True),
    ("OnFailure restarts a failure", "OnFailure", 3, True),
    ("OnFailure does not restart a clean exit", "OnFailure", 0, False),
    ("OnFailure restarts an exit of unknown code", "OnFailure", None, True),
    ("Never restarts nothing", "Never", 3, False),
]


@pytest.mark.parametrize(
    ("policy", "code", "restarts"), [p[1:] for p in POLICIES], ids=[p[0] for p in POLICIES]
)
def test_restart_policy(policy: str, code: int | None, restarts: bool) -> None:
    assert podstatus.should_restart(policy, code) is restarts


def status_of(track: ContainerTrack) -> dict[str, object]:
    return pod_status([track], {"c": "img"}, pod_ip="10.0.0.1", host_ip="172.30.0.1", start_time=W)


def test_a_running_container_is_ready_and_running() -> None:
    status = status_of(podstatus.started(ContainerTrack(name="c"), 0.0, W))
    assert (status["phase"], display_status(status), ready_count(status), restart_total(status)) == (
        "Running",
        "Running",
        "1/1",
        0,
    )
    assert {"type": "Ready", "status": "True"} in status["conditions"]  # type: ignore[operator]


def test_a_crashing_container_waits_in_crash_loop_back_off_not_ready_with_its_last_exit() -> None:
    track, _ = crash_loop("Always", [3])
    track = podstatus.exited(track, 3, "Always", 100.0, W)
    status = status_of(track)
    assert (status["phase"], display_status(status), ready_count(status), restart_total(status)) == (
        "Running",
        "CrashLoopBackOff",
        "0/1",
        1,
    )
    (entry,) = status["containerStatuses"]  # type: ignore[misc]
    assert entry["lastState"]["terminated"]["exitCode"] == 3
    assert entry["lastState"]["terminated"]["reason"] == "Error"
    assert entry["state"]["waiting"]["message"] == "back-off 20s restarting failed container=c"
    assert {"type": "Ready", "status": "False"} in status["conditions"]  # type: ignore[operator]


EXITS = [
    ("a clean exit under Never completes the pod", "Never", 0, "Succeeded", "Completed"),
    ("a failed exit under Never fails the pod", "Never", 3, "Failed", "Error"),
    ("a clean exit under OnFailure completes the pod", "OnFailure", 0, "Succeeded", "Completed"),
    ("an exit of unknown code under Never fails the pod", "Never", None, "Failed", "Unknown"),
]


@pytest.mark.parametrize(
    ("policy", "code", "phase", "shown"), [e[1:] for e in EXITS], ids=[e[0] for e in EXITS]
)
def test_a_container_not_restarted_terminates_the_pod(
    policy: str, code: int | None, phase: str, shown: str
) -> None:
    track = podstatus.exited(podstatus.started(ContainerTrack(name="c"), 0.0, W), code, policy, 5.0, W)
    status = status_of(track)
    assert (status["phase"], display_status(status), ready_count(status)) == (phase, shown, "0/1")
    (entry,) = status["containerStatuses"]  # type: ignore[misc]
    assert "lastState" not in entry
    assert entry["state"]["terminated"]["exitCode"] == (255 if code is None else code)


def test_columns_of_a_status_written_by_hand_fall_back_to_the_phase() -> None:
    assert (display_status({"phase": "Running"}), ready_count({"phase": "Running"}), restart_total({})) == (
        "Running",
        "-",
        0,
    )
    assert display_status({}) == "Unknown"


# --- several containers, init containers --------------------------------------------------------------


def run_init(policy: str, code: int) -> ContainerTrack:
    track = podstatus.started(ContainerTrack(name="init"), 0.0, W)
    return podstatus.exited(track, code, policy, 1.0, W, init=True)


INIT_EXITS = [
    ("an init container's clean exit completes it under Always", "Always", 0, True, False),
    ("an init container's failure is retried under Always", "Always", 1, False, True),
    ("an init container's failure is retried under OnFailure", "OnFailure", 1, False, True),
    ("an init container's failure is final under Never", "Never", 1, False, False),
]


@pytest.mark.parametrize(
    ("policy", "code", "done", "retried"), [r[1:] for r in INIT_EXITS], ids=[r[0] for r in INIT_EXITS]
)
def test_init_container_exits_follow_the_restart_policy(
    policy: str, code: int, done: bool, retried: bool
) -> None:
    track = run_init(policy, code)
    assert podstatus.completed(track) is done
    assert (track.restart_at is not None) is retried


def test_a_pod_initialising_is_pending_with_its_app_containers_waiting_for_it() -> None:
    first = podstatus.exited(
        podstatus.started(ContainerTrack(name="a"), 0.0, W), 0, "Always", 1.0, W, init=True
    )
    second = podstatus.started(ContainerTrack(name="b"), 1.0, W)
    apps = [ContainerTrack(name="web"), ContainerTrack(name="side")]
    status = pod_status(apps, {}, pod_ip="10.0.0.1", host_ip="h", start_time=W, init_tracks=[first, second])
    assert status["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "False"
    assert [e["state"] for e in status["containerStatuses"]] == [
        {"waiting": {"reason": "PodInitializing"}}
    ] * 2
    assert [e["ready"] for e in status["initContainerStatuses"]] == [True, False]
    assert display_status(status) == "Init:1/2"
    assert podstatus.ready_counts(status) == (0, 2)
    assert not podstatus.pod_ready(apps, [first, second])


INIT_DISPLAY = [
    ("a failed init container under Never fails the pod as Init:Error", "Never", "Init:Error", "Failed"),
    (
        "a failing init container retried shows Init:CrashLoopBackOff",
        "Always",
        "Init:CrashLoopBackOff",
        "Pending",
    ),
]


@pytest.mark.parametrize(
    ("policy", "shown", "phase"), [r[1:] for r in INIT_DISPLAY], ids=[r[0] for r in INIT_DISPLAY]
)
def test_a_failing_init_container_shows_in_status(policy: str, shown: str, phase: str) -> None:
    status = pod_status(
        [ContainerTrack(name="web")],
        {},
        pod_ip="",
        host_ip="h",
        start_time=W,
        init_tracks=[run_init(policy, 2)],
    )
    assert display_status(status) == shown
    assert status["phase"] == phase


def test_a_pod_is_ready_only_when_every_container_is_ready() -> None:
    web = podstatus.started(ContainerTrack(name="web"), 0.0, W)
    side = podstatus.started(ContainerTrack(name="side"), 0.0, W, probed=True)
    status = pod_status([web, side], {}, pod_ip="10.0.0.1", host_ip="h", start_time=W)
    assert podstatus.ready_counts(status) == (1, 2)
    assert ready_count(status) == "1/2"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    side = podstatus.probed(side, True, 1, 3)
    status = pod_status([web, side], {}, pod_ip="10.0.0.1", host_ip="h", start_time=W)
    assert podstatus.ready_counts(status) == (2, 2)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert display_status(status) == "Running"
