"""Processes inside network namespaces: pods' commands now, the mesh components (istiod_lite, ztunnel,
node agent) later, all through ``ProcessSupervisor``.

A process is started as ``ip netns exec <netns> argv...`` (so /etc/netns/<netns>/hosts applies) in a
session of its own (``netns=""``: on the host, as is, for the one component that must share the host's
mount namespace: the kubelet, whose new network namespaces must be visible to every process), stdout+stderr appended to ``logs/<log_name>.log`` (0600), and recorded in
``run/<log_name>.pid`` (a JSON ``ProcessRecord``). A record carries the process's start time, so a pid
reused by an unrelated process is never signalled. Stopping is SIGTERM to the process group, a bounded
wait (the caller's grace period: a pod's ``terminationGracePeriodSeconds``), then SIGKILL. ``sweep_netns`` kills whatever still runs inside given namespaces (found through
/proc/<pid>/ns/net), which is how ``down`` leaves no process behind even without its records.
A process may run as another user (a pod's ``securityContext.runAsUser``/``runAsGroup``): inside a netns
the switch happens after entering it (``ip netns exec <netns> setpriv --reuid U --regid G
--clear-groups -- argv``: entering a netns needs root), on the host through Popen's user/group; no
supplementary groups are kept. The log file is opened by the supervisor, so it stays writable.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import structlog

from .errors import CommandNotFound, ProcessStartFailed
from .state import ProcessRecord

STOP_GRACE_S = 5.0
KILL_WAIT_S = 2.0
POLL_S = 0.02

log = structlog.get_logger("ambientctl.cluster.procs")


class ProcessSupervisor:
    """Starts, stops and finds processes in namespaces; logs in ``log_dir``, pidfiles in ``run_dir``."""

    def __init__(
        self, run_dir: Path, log_dir: Path, *, ip_tool: str = "ip", stop_grace: float = STOP_GRACE_S
    ) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.ip_tool = ip_tool
        # How long SIGTERM may take before SIGKILL.
        self.stop_grace = stop_grace
        # Children this supervisor started: kept so they are reaped (no zombies in a long-lived caller).
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # Exit statuses of reaped children, until ``collect_exit`` takes them.
        self._exits: dict[int, int] = {}

    def log_path(self, log_name: str) -> Path:
        return self.log_dir / f"{log_name}.log"

    def start(
        self,
        name: str,
        netns: str,
        argv: Sequence[str],
        *,
        log_name: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> ProcessRecord:
        """Start ``argv`` inside ``netns`` (``""``: the host's), as ``user``/``group`` when given (the
        other one then 0); returns once the process exists (not once it is ready)."""
        environment = dict(os.environ if env is None else env)
        self.check_command(name, argv, environment)
        ip_tool = shutil.which(self.ip_tool)
        if ip_tool is None and netns:
            raise ProcessStartFailed(name, f"{self.ip_tool} not found: apt-get install iproute2")
        switch = user is not None or group is not None
        enter = [ip_tool, "netns", "exec", netns] if netns and ip_tool else []
        if enter and switch:
            enter += as_user_argv(name, user, group)
        ids: dict[str, object] = (
            {"user": user or 0, "group": group or 0, "extra_groups": []} if switch and not enter else {}
        )
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.log_path(log_name)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = subprocess.Popen(
                [*enter, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() signals the whole group
                close_fds=True,
                **ids,  # type: ignore[arg-type]
            )
        except OSError as e:
            where = (
                f" (working directory {cwd})"
                if cwd and isinstance(e, FileNotFoundError | NotADirectoryError)
                else ""
            )
            raise ProcessStartFailed(name, (e.strerror or str(e)) + where) from None
        finally:
            os.close(log_fd)
        self._children[child.pid] = child
        ticks = _start_ticks(child.pid)
        record = ProcessRecord(
            name=name, netns=netns, pid=child.pid, start_ticks=ticks or 0, argv=tuple(argv), log=str(log_path)
        )
        self._write_pidfile(log_name, record)
        log.info("process started", name=name, netns=netns, pid=child.pid, log=str(log_path))
        return record

    def check_command(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """``CommandNotFound`` unless ``argv[0]`` resolves on the PATH the process would get."""
        search_path = (os.environ if env is None else env).get("PATH", os.defpath)
        if not argv or shutil.which(argv[0], path=search_path) is None:
            raise CommandNotFound(argv[0] if argv else "", name)

    def is_running(self, record: ProcessRecord) -> bool:
        self._reap(record.pid)
        return _alive(record.pid, record.start_ticks)

    def stop(self, record: ProcessRecord) -> bool:
        """Stop the process (and its group); True if it was running. Never signals a reused pid."""
        return bool(self.stop_all([record]))

    def stop_all(
        self, records: Sequence[ProcessRecord], *, grace: float | None = None
    ) -> list[ProcessRecord]:
        """Stop several at once (one shared grace period, not one each: ``grace`` seconds, default
        ``stop_grace``; 0 or less: SIGKILL at once, no SIGTERM); returns those that were running."""
        grace = self.stop_grace if grace is None else grace
        running = [r for r in records if self.is_running(r)]
        for record in running if grace > 0 else ():
            _signal_group(record.pid, signal.SIGTERM)
        if grace <= 0 or not self._wait_gone(running, grace):
            for record in running:
                if self.is_running(record):
                    _signal_group(record.pid, signal.SIGKILL)
            self._wait_gone(running, KILL_WAIT_S)
        for record in running:
            self._exits.pop(record.pid, None)  # stopped on purpose: no exit to report
            log.info("process stopped", name=record.name, pid=record.pid)
        return running

    def remove_pidfile(self, log_name: str) -> None:
        (self.run_dir / f"{log_name}.pid").unlink(missing_ok=True)

    def pidfile_records(self) -> list[ProcessRecord]:
        """Records of every pidfile (unreadable ones are skipped: the netns sweep still finds those)."""
        records = []
        try:
            paths = sorted(self.run_dir.glob("*.pid"))
        except OSError:
            return []
        for path in paths:
            try:
                records.append(msgspec.json.decode(path.read_bytes(), type=ProcessRecord))
            except (OSError, msgspec.DecodeError):
                log.warning("unreadable pidfile skipped", path=str(path))
        return records

    def clear_pidfiles(self) -> None:
        for path in self.run_dir.glob("*.pid"):
            path.unlink(missing_ok=True)

    def sweep_netns(self, netns_paths: Iterable[Path]) -> list[int]:
        """Kill every process whose network namespace is one of ``netns_paths``; returns their pids."""
        wanted = set()
        for path in netns_paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            wanted.add((st.st_dev, st.st_ino))
        if not wanted:
            return []
        victims = []
        for pid in _all_pids():
            if pid == os.getpid():
                continue
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                ticks = _start_ticks(pid)
                if ticks is not None:
                    victims.append(
                        ProcessRecord(name="swept", netns="", pid=pid, start_ticks=ticks, argv=(), log="")
                    )
        for victim in victims:
            _signal(victim.pid, signal.SIGTERM)
        if not self._wait_gone(victims, self.stop_grace):
            for victim in victims:
                if _alive(victim.pid, victim.start_ticks):
                    _signal(victim.pid, signal.SIGKILL)
            self._wait_gone(victims, KILL_WAIT_S)
        return [v.pid for v in victims]

    def _wait_gone(self, records: Sequence[ProcessRecord], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not any(self.is_running(r) for r in records):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def collect_exit(self, record: ProcessRecord) -> int | None:
        """The exit code of a process this supervisor started and that has ended (a signal ``n`` is
        ``128 + n``, as a container runtime reports it), once; None if it runs, was not started here, or
        was already collected."""
        self._reap(record.pid)
        code = self._exits.pop(record.pid, None)
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def collect_returncode(self, record: ProcessRecord) -> int | None:
        """Like ``collect_exit`` but as ``Popen.returncode`` (``-n``: killed by signal ``n``), so a
        signal is told apart from an exit code of ``128 + n``."""
        self._reap(record.pid)
        return self._exits.pop(record.pid, None)

    def _reap(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            self._exits[pid] = child.returncode

    def _write_pidfile(self, log_name: str, record: ProcessRecord) -> None:
        path = self.run_dir / f"{log_name}.pid"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.encode(record) + b"\n")


def as_user_argv(name: str, user: int | None, group: int | None) -> list[str]:
    """The prefix that runs the rest of a command line as ``user``/``group`` (None: 0), without
    supplementary groups (``setpriv`` of util-linux, after ``ip netns exec`` entered the netns)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ProcessStartFailed(
            name, "setpriv not found (runAsUser/runAsGroup need it): apt-get install util-linux"
        )
    return [setpriv, f"--reuid={user or 0}", f"--regid={group or 0}", "--clear-groups", "--"]


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after "pid (comm)"; comm may contain spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def _alive(pid: int, start_ticks: int) -> bool:
    """The same process (not a reused pid) exists and is not a zombie."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if start_ticks and int(fields[19]) != start_ticks:
        return False
    return fields[0] not in ("Z", "X")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        _signal(pid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
