"""What the local cluster has made, recorded in ``<state-dir>/cluster/state.json``.

The record is written *before* the kernel is changed (phase ``creating``, a pod added with its netns
name) so that ``down`` after a crash knows what to remove; ``down`` also sweeps by name prefix, so even a
lost or corrupt record leaves nothing behind. Writes are atomic (temp file + rename, mode 0600);
mutations hold an exclusive ``flock`` on ``cluster/lock`` so two ambientctl runs never interleave.
This module holds data and file I/O only: no netlink, no processes.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import msgspec

from .errors import ClusterBusy, StateCorrupt
from .spec import ClusterSpec, PodSpec, ServicePort

STATE_VERSION = 1
LOCK_TIMEOUT_S = 60.0
LOCK_POLL_S = 0.05
Phase = Literal["creating", "up", "deleting"]


class ProcessRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A process started inside a netns (a pod's command, or a mesh component)."""

    name: str
    netns: str
    pid: int
    # /proc/<pid>/stat starttime: a pid that was reused by another process never matches.
    start_ticks: int
    argv: tuple[str, ...]
    log: str


class PodRecord(msgspec.Struct, frozen=True, kw_only=True):
    spec: PodSpec
    ip: str
    netns: str
    # Node-side end of the pod's veth (in the node netns); the pod side is always eth0.
    host_veth: str
    node_ip: str
    # The first app container's process (what a one-container pod runs); also in ``processes``.
    process: ProcessRecord | None = None
    # Every container's current (or last) process, keyed by container name, init containers included.
    processes: dict[str, ProcessRecord] = {}
    # Being removed (``Cluster.remove_pod``): out of every Service, its address still held until it is gone.
    terminating: bool = False

    def container_processes(self) -> dict[str, ProcessRecord]:
        """Each container's process by name (a record written before ``processes`` existed: its
        ``process`` under the first app container's name)."""
        if self.processes or self.process is None:
            return self.processes
        apps = self.spec.app_containers()
        return {apps[0].name if apps else "": self.process}


class ServiceRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    namespace: str
    vip: str
    ports: tuple[ServicePort, ...]
    # Pod IPs, in the order given (the DNAT spreads over them at random).
    endpoints: tuple[str, ...]


class ClusterState(msgspec.Struct, frozen=True, kw_only=True):
    version: int = STATE_VERSION
    phase: Phase
    spec: ClusterSpec
    # Keyed "namespace/name".
    pods: dict[str, PodRecord] = {}
    services: dict[str, ServiceRecord] = {}
    # Mesh components (istiod_lite, ztunnels, node agents), keyed by component name.
    processes: dict[str, ProcessRecord] = {}


def object_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class StateFile:
    """``<directory>/state.json`` plus the lock file that serialises mutations."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        self._lock_path = directory / "lock"

    @contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Exclusive for the block; ``ClusterBusy`` if another ambientctl holds it past ``timeout``."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ClusterBusy(str(self._lock_path), timeout) from None
                    time.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def load(self) -> ClusterState | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateCorrupt(str(self.path), e.strerror or str(e)) from None
        try:
            state = msgspec.json.decode(data, type=ClusterState)
        except msgspec.DecodeError as e:
            raise StateCorrupt(str(self.path), str(e)) from None
        if state.version != STATE_VERSION:
            raise StateCorrupt(
                str(self.path), f"version {state.version}, this ambientctl reads {STATE_VERSION}"
            )
        return state

    def save(self, state: ClusterState) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".state.json.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(msgspec.json.format(msgspec.json.encode(state), indent=2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
