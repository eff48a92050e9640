"""``python -m ambientctl.cluster.supervisor``: the local cluster's supervisor, a long-running process.

``cluster up`` starts it (the component ``supervisor``, on the host) and waits for its report. It starts
the mesh itself (``Mesh.start``: istiod-lite, node agents, ztunnels, the kubelet, in order, each waited
for), so every component is its child and its exit status is known, then watches them: a component whose
process died is started again with the command and environment it had, after a back-off (1 s doubling to
30 s, reset once it ran 60 s: ``supervision.next_backoff``), as a kubelet restarts a static pod. Each
pass and each change is recorded in ``run/supervisor.json`` (``supervision.SupervisorReport``), where
``cluster status`` reads state, restarts and last exit. Why a process of its own and not the kubelet: the
kubelet is one of the supervised components (it must be restarted too), and the pod loop stays free of
mesh concerns.
Rules: a component removed from the cluster's record (``Mesh.stop``, ``stop_component``) was stopped on
purpose and is never restarted; a restart replaces exactly the dead process it saw
(``Cluster.restart_component``), never starts a second copy; the supervisor exits when the cluster is no
longer up (``down`` also stops it) and on SIGTERM/SIGINT (components keep running). A failed restart is
logged and retried after the next back-off; nothing makes the supervisor exit but the two above.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog

from .cluster import Cluster
from .component import start_component
from .errors import ClusterBusy, ClusterError, ClusterNotUp
from .mesh import Command, Mesh, MeshSettings
from .state import ProcessRecord
from .supervision import (
    ComponentHealth,
    MeshPhase,
    SupervisorReport,
    exit_from_returncode,
    next_backoff,
    read_report,
    report_path,
    write_report,
)

log = structlog.get_logger("ambientctl.cluster.supervisor")

POLL_S = 0.2
# A restart waits at most this long for the cluster's lock (``down`` holds it while it stops everything).
RESTART_LOCK_TIMEOUT_S = 1.0


@dataclass(slots=True)
class _Watched:
    command: Command
    record: ProcessRecord
    started: float  # monotonic
    health: ComponentHealth
    due: float | None = None  # monotonic time of the pending restart


class Supervisor:
    """Watches the components a ``Mesh`` started (``watch``) and restarts the dead ones (``check``)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._clock = clock
        self._wall = wall
        self._watched: dict[str, _Watched] = {}

    def watch(self, commands: dict[str, Command], previous: SupervisorReport | None = None) -> None:
        """Watch these components (as recorded now); restart counts carry over from ``previous``."""
        records = self.cluster.components()
        now = self._clock()
        for name, command in commands.items():
            record = records.get(name)
            if record is None:
                continue
            health = ComponentHealth()
            if previous is not None and name in previous.components:
                old = previous.components[name]
                health = ComponentHealth(
                    restarts=old.restarts, last_exit=old.last_exit, backoff_s=old.backoff_s
                )
            self._watched[name] = _Watched(command=command, record=record, started=now, health=health)

    def components(self) -> dict[str, ComponentHealth]:
        return {name: w.health for name, w in sorted(self._watched.items())}

    def check(self) -> bool:
        """One pass over the watched components; True if anything changed. ``ClusterNotUp`` once the
        cluster is not up any more."""
        records = self.cluster.components()
        changed = False
        for name, w in self._watched.items():
            recorded = records.get(name)
            if recorded is None:
                if w.health.state != "Stopped":
                    w.health = msgspec.structs.replace(w.health, state="Stopped", restart_at=None)
                    w.due = None
                    changed = True
                continue
            if (recorded.pid, recorded.start_ticks) != (w.record.pid, w.record.start_ticks):
                # Started again by someone else (``cluster up``, a test's Mesh): watch that process.
                w.record, w.started, w.due = recorded, self._clock(), None
                w.health = msgspec.structs.replace(w.health, state="Running", restart_at=None)
                changed = True
                continue
            if w.due is None:
                if not self.cluster.procs.is_running(w.record):
                    self._died(w)
                    changed = True
            elif self._clock() >= w.due:
                changed = self._restart(w) or changed
        return changed

    def _died(self, w: _Watched) -> None:
        now = self._clock()
        last = exit_from_returncode(self.cluster.procs.collect_returncode(w.record), self._wall())
        delay = next_backoff(w.health.backoff_s, now - w.started)
        w.due = now + delay
        w.health = msgspec.structs.replace(
            w.health, state="BackOff", last_exit=last, backoff_s=delay, restart_at=last.at + delay
        )
        log.warning(
            "component died: restarting after back-off",
            component=w.record.name,
            pid=w.record.pid,
            code=last.code,
            signal=last.signal,
            backoff_s=delay,
        )

    def _restart(self, w: _Watched) -> bool:
        try:
            record = self.cluster.restart_component(
                w.record, w.command.argv, w.command.env, lock_timeout=RESTART_LOCK_TIMEOUT_S
            )
        except ClusterBusy:
            return False  # `down` or another ambientctl holds the lock: try on the next pass
        except ClusterNotUp:
            raise
        except ClusterError as e:
            # It could not even start (its command is gone...): wait a longer back-off and try again.
            delay = next_backoff(w.health.backoff_s, 0.0)
            w.due = self._clock() + delay
            w.health = msgspec.structs.replace(w.health, backoff_s=delay, restart_at=self._wall() + delay)
            log.warning("component restart failed", component=w.record.name, error=str(e), backoff_s=delay)
            return True
        if record is None:
            w.health = msgspec.structs.replace(w.health, state="Stopped", restart_at=None)
            w.due = None
            return True
        w.record, w.started, w.due = record, self._clock(), None
        w.health = msgspec.structs.replace(
            w.health, state="Running", restarts=w.health.restarts + 1, restart_at=None
        )
        log.info("component restarted", component=record.name, pid=record.pid, restarts=w.health.restarts)
        return True


def run(cluster: Cluster, mesh: Mesh, stop: threading.Event, *, poll: float = POLL_S) -> None:
    """Start the mesh, report, then supervise until ``stop`` is set or the cluster is not up."""
    run_dir = cluster.procs.run_dir
    previous = read_report(run_dir)
    pid = os.getpid()

    def report(
        phase: MeshPhase,
        supervisor: Supervisor | None,
        *,
        error: str = "",
        timings: tuple[tuple[str, float], ...] = (),
    ) -> None:
        if supervisor is not None:
            components = supervisor.components()
        else:
            components = previous.components if previous is not None else {}
        write_report(
            run_dir,
            SupervisorReport(pid=pid, phase=phase, error=error, timings=timings, components=components),
        )

    report("starting", None)
    try:
        started = mesh.start()
    except ClusterNotUp:
        return
    except ClusterError as e:
        report("failed", None, error=str(e))
        raise
    supervisor = Supervisor(cluster)
    supervisor.watch(mesh.commands, previous)
    timings = started.timings
    report("up", supervisor, timings=timings)
    log.info("supervising", components=sorted(mesh.commands))
    while not stop.wait(poll):
        try:
            if supervisor.check():
                report("up", supervisor, timings=timings)
        except ClusterNotUp:
            log.info("the cluster is not up any more: supervisor exits")
            return
        except ClusterError as e:
            log.warning("supervision pass failed; trying again", error=str(e))


def main(argv: list[str] | None = None) -> None:
    started = start_component("supervisor", "the local cluster's supervisor", argv)
    cluster = started.cluster
    code = 0
    try:
        run(cluster, Mesh(cluster, MeshSettings(log_level=started.args.log_level)), started.stop)
    except ClusterError as e:
        print(f"supervisor: {e}", file=sys.stderr)
        code = 2
    if not cluster.is_up():
        report_path(cluster.procs.run_dir).unlink(missing_ok=True)
    log.info("supervisor stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
