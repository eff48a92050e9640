"""What the cluster's supervisor knows about the mesh components, and its restart back-off (pure + one file).

The supervisor (``supervisor.py``, a long-running process ``cluster up`` starts) restarts a mesh component
(istiod-lite, a node agent, a ztunnel, the kubelet) that died, with a back-off like kubelet's container
restarts but shorter, for a local dev cluster: 1 s, doubling to at most 30 s, back to 1 s once a
component stayed up 60 s. It records what it did in ``<cluster dir>/run/supervisor.json`` (one writer:
the supervisor; atomic replace), which ``cluster status`` and ``check`` read: per component its state,
restart count and last exit (exit code or signal, and when). A report whose ``pid`` is not the running
supervisor's is stale and ignored by readers.
Invariants: the back-off never exceeds ``BACKOFF_MAX_S`` nor goes under ``BACKOFF_INITIAL_S``; this module
does no process or network work.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

import msgspec

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
# A component that ran this long before it died starts again after BACKOFF_INITIAL_S.
BACKOFF_RESET_S = 60.0
REPORT_FILE = "supervisor.json"

ComponentState = Literal["Running", "BackOff", "Stopped"]
MeshPhase = Literal["starting", "up", "failed"]


class LastExit(msgspec.Struct, frozen=True, kw_only=True):
    """How a component's process ended; neither ``code`` nor ``signal``: unknown (not the supervisor's
    child, e.g. started by an earlier supervisor)."""

    at: float  # wall clock (time.time())
    code: int | None = None
    signal: str | None = None  # "SIGKILL"


class ComponentHealth(msgspec.Struct, frozen=True, kw_only=True):
    state: ComponentState = "Running"
    restarts: int = 0
    last_exit: LastExit | None = None
    # The delay before the pending (BackOff) or the last restart.
    backoff_s: float = 0.0
    # Wall clock of the pending restart (BackOff only).
    restart_at: float | None = None


class SupervisorReport(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    phase: MeshPhase
    # Why the mesh did not start (phase "failed").
    error: str = ""
    # Seconds each start step took: [["istiod", 1.2], ...].
    timings: tuple[tuple[str, float], ...] = ()
    components: dict[str, ComponentHealth] = {}


def next_backoff(previous_s: float, ran_for_s: float) -> float:
    """The delay before restarting a component that died after running ``ran_for_s`` seconds, when the
    delay before its previous restart was ``previous_s`` (0: never restarted)."""
    if previous_s <= 0.0 or ran_for_s >= BACKOFF_RESET_S:
        return BACKOFF_INITIAL_S
    return min(max(previous_s * 2, BACKOFF_INITIAL_S), BACKOFF_MAX_S)


def exit_from_returncode(returncode: int | None, at: float) -> LastExit:
    """``Popen.returncode`` (negative: killed by that signal; None: unknown) as a ``LastExit``."""
    if returncode is None:
        return LastExit(at=at)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return LastExit(at=at, signal=name)
    return LastExit(at=at, code=returncode)


def describe_exit(last: LastExit, now: float) -> str:
    """``killed by SIGKILL 12s ago``, ``exited with code 3 2m ago``, ``exit status unknown 5s ago``."""
    if last.signal is not None:
        what = f"killed by {last.signal}"
    elif last.code is not None:
        what = f"exited with code {last.code}"
    else:
        what = "exit status unknown"
    return f"{what} {_ago(now - last.at)} ago"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def report_path(run_dir: Path) -> Path:
    return run_dir / REPORT_FILE


def write_report(run_dir: Path, report: SupervisorReport) -> None:
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = report_path(run_dir)
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.encode(report) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_report(run_dir: Path, pid: int | None = None) -> SupervisorReport | None:
    """The supervisor's report; None if there is none, it is unreadable, or (``pid`` given) it was
    written by another process than the supervisor now recorded."""
    try:
        report = msgspec.json.decode(report_path(run_dir).read_bytes(), type=SupervisorReport)
    except (OSError, msgspec.DecodeError):
        return None
    if pid is not None and report.pid != pid:
        return None
    return report
