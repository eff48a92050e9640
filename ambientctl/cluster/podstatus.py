"""A pod's container lifecycle and the status a kubelet reports for it, as pure functions of what was
observed (process started, process exited with a code) and the time.

``ContainerTrack`` is one container's history: running since when, how often restarted, the last
termination, the current restart back-off. Kubernetes' rules:

* ``restartPolicy``: ``Always`` restarts any exit, ``OnFailure`` a non-zero exit, ``Never`` none.
* Back-off between restarts: 10 s after the first exit, doubling each time, capped at 5 min; a container
  that ran 10 min (twice the cap) before exiting starts again from 10 s. While waiting, the container is
  ``waiting`` with reason ``CrashLoopBackOff``; the pod stays phase ``Running`` (not Ready).
* A container not restarted is ``terminated`` (``Completed`` for exit 0, else ``Error``); the pod's
  phase becomes ``Succeeded`` (exit 0) or ``Failed``.
* Ready (and so traffic) only while the container runs and, with a ``readinessProbe``, once the probe
  succeeded ``successThreshold`` times in a row, until it failed ``failureThreshold`` times in a row.

Init containers (``init=True``) run one at a time before the app containers, each to completion:
exit 0 finishes one for good (whatever the policy); a failure is restarted with the same back-off unless
``restartPolicy`` is ``Never`` (``Always`` acts as ``OnFailure`` for them), in which case the pod is
``Failed``. Until every init container completed the pod is ``Pending``, condition ``Initialized``
False, and its app containers wait with reason ``PodInitializing``.

``pod_status`` renders the Kubernetes ``status`` (phase, conditions, containerStatuses and
initContainerStatuses with restartCount/state/lastState/ready, podIP, hostIP, startTime);
``display_status`` is kubectl's STATUS column (``Init:1/2``, ``Init:Error``, ``Init:CrashLoopBackOff``
while initialising, then a container's waiting/terminated reason, else the phase); ``ready_counts`` is
the READY column's (ready, total). Time arrives as arguments: ``now`` is a
monotonic clock for decisions, ``wall`` an RFC 3339 string for what is written. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

BACKOFF_INITIAL_S = 10.0
BACKOFF_MAX_S = 300.0
# A container that ran at least this long before exiting restarts with the initial back-off again.
BACKOFF_RESET_S = 2 * BACKOFF_MAX_S

RestartPolicy = Literal["Always", "OnFailure", "Never"]
RESTART_POLICIES: tuple[str, ...] = ("Always", "OnFailure", "Never")


class Termination(msgspec.Struct, frozen=True, kw_only=True):
    # None: the process is gone but its exit code could not be learned (not this kubelet's child).
    exit_code: int | None
    started_at: str
    finished_at: str


class ContainerTrack(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    restart_count: int = 0
    # Monotonic start time while running; None while waiting or terminated.
    running_since: float | None = None
    started_at: str = ""
    last: Termination | None = None
    backoff_s: float = 0.0
    # Monotonic time the next start is due (waiting in CrashLoopBackOff until then).
    restart_at: float | None = None
    # Terminated for good: the restart policy does not restart it.
    finished: bool = False
    # The readinessProbe's verdict (None: no probe, running means ready) and its consecutive counts.
    probe_ready: bool | None = None
    probe_successes: int = 0
    probe_failures: int = 0


def should_restart(policy: str, exit_code: int | None) -> bool:
    """Whether ``policy`` restarts a container that exited with ``exit_code`` (None: unknown = failed)."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def started(track: ContainerTrack, now: float, wall: str, *, probed: bool = False) -> ContainerTrack:
    """The container's process (re)started: a start after a termination counts as a restart. With a
    readinessProbe (``probed``) it is not ready until the probe has succeeded."""
    return msgspec.structs.replace(
        track,
        restart_count=track.restart_count + (1 if track.last is not None else 0),
        running_since=now,
        started_at=wall,
        restart_at=None,
        finished=False,
        probe_ready=False if probed else None,
        probe_successes=0,
        probe_failures=0,
    )


def probed(track: ContainerTrack, ok: bool, success_threshold: int, failure_threshold: int) -> ContainerTrack:
    """One readinessProbe result: ready after ``success_threshold`` successes in a row, unready after
    ``failure_threshold`` failures in a row (Kubernetes' defaults are 1 and 3)."""
    if ok:
        successes = track.probe_successes + 1
        ready = True if successes >= success_threshold else track.probe_ready
        return msgspec.structs.replace(track, probe_successes=successes, probe_failures=0, probe_ready=ready)
    failures = track.probe_failures + 1
    ready = False if failures >= failure_threshold else track.probe_ready
    return msgspec.structs.replace(track, probe_successes=0, probe_failures=failures, probe_ready=ready)


def is_ready(track: ContainerTrack) -> bool:
    """Running, and its readinessProbe (if any) says ready."""
    return track.running_since is not None and track.probe_ready is not False


def exited(
    track: ContainerTrack, exit_code: int | None, policy: str, now: float, wall: str, *, init: bool = False
) -> ContainerTrack:
    """The container's process exited: record it and plan the restart the policy asks for (an init
    container is restarted only after a failure, unless the policy is ``Never``)."""
    ran = now - track.running_since if track.running_since is not None else 0.0
    last = Termination(exit_code=exit_code, started_at=track.started_at, finished_at=wall)
    if init and policy == "Always":
        policy = "OnFailure"
    if not should_restart(policy, exit_code):
        return msgspec.structs.replace(track, running_since=None, last=last, restart_at=None, finished=True)
    if track.backoff_s == 0.0 or ran >= BACKOFF_RESET_S:
        backoff = BACKOFF_INITIAL_S
    else:
        backoff = min(track.backoff_s * 2, BACKOFF_MAX_S)
    return msgspec.structs.replace(
        track, running_since=None, last=last, backoff_s=backoff, restart_at=now + backoff
    )


def restart_due(track: ContainerTrack, now: float) -> bool:
    return track.restart_at is not None and now >= track.restart_at


def _terminated(term: Termination) -> dict[str, Any]:
    code = term.exit_code
    return {
        "exitCode": 255 if code is None else code,
        "reason": "Completed" if code == 0 else ("Unknown" if code is None else "Error"),
        "startedAt": term.started_at,
        "finishedAt": term.finished_at,
    }


def completed(track: ContainerTrack) -> bool:
    """Terminated for good with exit code 0 (an init container that did its work)."""
    return track.finished and track.last is not None and track.last.exit_code == 0


def initialized(init_tracks: Sequence[ContainerTrack]) -> bool:
    """Every init container completed (vacuously true without any)."""
    return all(completed(t) for t in init_tracks)


def init_failed(init_tracks: Sequence[ContainerTrack]) -> bool:
    """An init container failed and will not be restarted (``restartPolicy: Never``): the pod failed."""
    return any(t.finished and not completed(t) for t in init_tracks)


def current_init(init_tracks: Sequence[ContainerTrack]) -> int | None:
    """The index of the init container that runs (or is due) now; None once all completed."""
    return next((i for i, t in enumerate(init_tracks) if not completed(t)), None)


def container_status(
    track: ContainerTrack, image: str, *, waiting_reason: str = "ContainerCreating", init: bool = False
) -> dict[str, Any]:
    """One ``status.containerStatuses`` (or, ``init``, ``initContainerStatuses``) entry; a container
    not started yet waits with ``waiting_reason``."""
    if track.running_since is not None:
        state: dict[str, Any] = {"running": {"startedAt": track.started_at}}
    elif track.finished and track.last is not None:
        state = {"terminated": _terminated(track.last)}
    elif track.restart_at is not None:
        state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(track.backoff_s)}s restarting failed container={track.name}",
            }
        }
    else:
        state = {"waiting": {"reason": waiting_reason}}
    entry: dict[str, Any] = {
        "name": track.name,
        "image": image,
        "ready": completed(track) if init else is_ready(track),
        "started": track.running_since is not None,
        "restartCount": track.restart_count,
        "state": state,
    }
    if track.last is not None and not (track.finished and "terminated" in state):
        entry["lastState"] = {"terminated": _terminated(track.last)}
    return entry


def pod_phase(tracks: Sequence[ContainerTrack], init_tracks: Sequence[ContainerTrack] = ()) -> str:
    """Kubernetes' phase: Failed when an init container failed for good, Pending until all init
    containers completed; then Running while any container runs or will restart; Succeeded/Failed once
    all finished for good; Pending before any started."""
    if init_failed(init_tracks):
        return "Failed"
    if not initialized(init_tracks) or not tracks:
        return "Pending"
    if all(t.finished for t in tracks):
        return "Succeeded" if all(t.last is not None and t.last.exit_code == 0 for t in tracks) else "Failed"
    if any(t.running_since is not None or t.last is not None for t in tracks):
        return "Running"
    return "Pending"


def pod_ready(tracks: Sequence[ContainerTrack], init_tracks: Sequence[ContainerTrack] = ()) -> bool:
    """Ready (gets traffic) only when initialised and every app container is ready."""
    return initialized(init_tracks) and bool(tracks) and all(is_ready(t) for t in tracks)


def pod_status(
    tracks: Sequence[ContainerTrack],
    images: Mapping[str, str],
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    init_tracks: Sequence[ContainerTrack] = (),
    init_images: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The pod's ``status`` as a kubelet writes it."""
    done = initialized(init_tracks)
    flag = "True" if pod_ready(tracks, init_tracks) else "False"
    waiting = "ContainerCreating" if done else "PodInitializing"
    status: dict[str, Any] = {
        "phase": pod_phase(tracks, init_tracks),
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True" if done else "False"},
            {"type": "ContainersReady", "status": flag},
            {"type": "Ready", "status": flag},
        ],
        "hostIP": host_ip,
        "startTime": start_time,
        "containerStatuses": [
            container_status(t, images.get(t.name, ""), waiting_reason=waiting) for t in tracks
        ],
    }
    if init_tracks:
        init_images = images if init_images is None else init_images
        status["initContainerStatuses"] = [
            container_status(t, init_images.get(t.name, ""), waiting_reason="PodInitializing", init=True)
            for t in init_tracks
        ]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def _init_display(entries: Sequence[Any]) -> str | None:
    """kubectl's STATUS while init containers have work left: ``Init:<reason>`` for one that waits or
    failed, else ``Init:<completed>/<total>``; None once all completed."""
    total = len(entries)
    for i, entry in enumerate(entries):
        state = entry.get("state") if isinstance(entry, Mapping) else None
        if not isinstance(state, Mapping):
            continue
        terminated = state.get("terminated")
        if isinstance(terminated, Mapping) and terminated.get("exitCode") == 0:
            continue
        for key in ("terminated", "waiting"):
            detail = state.get(key)
            reason = detail.get("reason") if isinstance(detail, Mapping) else None
            if reason and reason != "PodInitializing":
                return f"Init:{reason}"
        return f"Init:{i}/{total}"
    return None


def display_status(status: Mapping[str, Any]) -> str:
    """kubectl's STATUS column: ``Init:...`` while init containers have work left, then the first
    container's waiting/terminated reason, else the phase."""
    init = [e for e in status.get("initContainerStatuses") or () if isinstance(e, Mapping)]
    shown = _init_display(init) if init else None
    if shown is not None:
        return shown
    for entry in status.get("containerStatuses") or ():
        state = entry.get("state") if isinstance(entry, Mapping) else None
        if not isinstance(state, Mapping):
            continue
        for key in ("waiting", "terminated"):
            detail = state.get(key)
            if isinstance(detail, Mapping) and detail.get("reason"):
                return str(detail["reason"])
    phase = status.get("phase")
    return str(phase) if phase else "Unknown"


def ready_counts(status: Mapping[str, Any]) -> tuple[int, int]:
    """(ready, total) app containers of a pod ``status`` (kubectl's READY n/m); init containers do not
    count. (0, 0) when no container status was reported."""
    entries = [e for e in status.get("containerStatuses") or () if isinstance(e, Mapping)]
    return sum(1 for e in entries if e.get("ready") is True), len(entries)


def ready_count(status: Mapping[str, Any]) -> str:
    """kubectl's READY column (``1/2``); ``-`` when no container status was reported."""
    ready, total = ready_counts(status)
    return f"{ready}/{total}" if total else "-"


def restart_total(status: Mapping[str, Any]) -> int:
    """kubectl's RESTARTS column: the sum of the containers' restartCount."""
    return sum(
        int(e.get("restartCount") or 0)
        for e in status.get("containerStatuses") or ()
        if isinstance(e, Mapping) and isinstance(e.get("restartCount"), int)
    )
