"""Network-namespace handles and per-namespace worker threads (ztunnel's InpodNetns, in Python).

setns(2) moves only the calling *thread*, and Python 3.11 has no ``os.setns``: we call pyroute2's
``pyroute2.netns.setns(fd, flags=0)`` (a ctypes wrapper around the syscall), and we call it only on a
worker thread that belongs to one ``NetnsHandle``. That thread enters the namespace once, checks that it
got there (by the (dev, inode) of ``/proc/thread-self/ns/net``), and then runs every job for that
namespace. Invariants:
- the event-loop thread (or any caller) never changes namespace; only the handle's worker does, once;
- a socket keeps the namespace it was created in for its whole life, so it may be bound, listened on
  and used from any thread afterwards;
- a child process forked from the worker thread starts inside the namespace (clone copies the calling
  thread's namespaces), which is how ``ztunnel.redirect.apply`` runs ``nft`` in a pod.
The handle owns its fd: an opened namespace stays alive while the handle is open even if the pod's
processes are gone. Must not: keep global state (no module-level registry of handles or threads).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from pyroute2 import netns as _pyroute2_netns

# ztunnel marks every socket it makes in a pod with this (istio-cni InpodMark); the pod's nftables rules
# let marked packets through uncaptured.
INPOD_MARK = 0x539

NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h

P = ParamSpec("P")
T = TypeVar("T")


class NetnsError(Exception):
    """Base class for network-namespace failures."""


class NetnsGone(NetnsError):
    """The namespace could not be opened: its path or process no longer exists (the pod went away)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"network namespace {where} is gone or unreadable: {reason}")
        self.where = where


class NetnsEnterFailed(NetnsError):
    """The worker thread could not enter the namespace (needs CAP_SYS_ADMIN; the fd must be a netns)."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(
            f"cannot enter network namespace {label}: {reason} "
            "(setns needs CAP_SYS_ADMIN and an fd of a network namespace)"
        )
        self.label = label


class NotANetns(NetnsError):
    """An fd handed to us (a path, or SCM_RIGHTS from the node agent) is not a network namespace."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label} is not a network namespace: {reason}")
        self.label = label


class NetnsClosed(NetnsError):
    """A job was submitted to a handle that was already closed (a caller bug)."""

    def __init__(self, label: str) -> None:
        super().__init__(f"network namespace handle {label} is closed")


@dataclass(frozen=True, slots=True)
class NetnsId:
    """Identity of a network namespace: two fds name the same namespace iff these are equal."""

    dev: int
    inode: int

    @classmethod
    def of_fd(cls, fd: int) -> NetnsId:
        st = os.fstat(fd)
        return cls(dev=st.st_dev, inode=st.st_ino)

    @classmethod
    def of_path(cls, path: str) -> NetnsId:
        st = os.stat(path)
        return cls(dev=st.st_dev, inode=st.st_ino)

    def __str__(self) -> str:
        return f"net:[{self.inode}]@{self.dev}"


def _check_is_netns(fd: int, label: str) -> None:
    """Ask nsfs what ``fd`` is (ioctl NS_GET_NSTYPE, Linux >= 4.11); refuse anything but a netns."""
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as e:
        raise NotANetns(label, f"not a namespace file (ioctl NS_GET_NSTYPE failed: {e.strerror or e})") from e
    if kind != _CLONE_NEWNET:
        raise NotANetns(label, f"namespace type {kind:#x}, not CLONE_NEWNET")


def current_netns_id() -> NetnsId:
    """The namespace of the *calling thread* (not the process: threads can differ)."""
    return NetnsId.of_path("/proc/thread-self/ns/net")


class NetnsHandle:
    """An open network namespace plus the one worker thread that runs jobs inside it.

    Build with ``open(path)``, ``from_pid(pid)`` or ``adopt_fd(fd)``; ``close()`` (or ``with``) stops the
    worker and closes the fd. The worker starts on the first job and is reused for every later one.
    """

    def __init__(self, fd: int, label: str) -> None:
        """Take ownership of ``fd`` (a netns fd). Prefer the classmethod constructors."""
        try:
            _check_is_netns(fd, label)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._label = label
        self._id = NetnsId(dev=st.st_dev, inode=st.st_ino)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._enter_error: BaseException | None = None
        self._worker_ident: int | None = None
        self._closed = False

    # -- constructors --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> NetnsHandle:
        """Open a namespace by path: ``/var/run/netns/NAME``, ``/proc/PID/ns/net`` or a bare ``NAME``."""
        text = os.fspath(path)
        if "/" not in text:
            text = os.path.join(NETNS_RUN_DIR, text)
        try:
            fd = os.open(text, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NetnsGone(text, "no such file") from e
        except OSError as e:
            raise NetnsGone(text, e.strerror or str(e)) from e
        return cls(fd, text)

    @classmethod
    def from_pid(cls, pid: int) -> NetnsHandle:
        """Open the namespace process ``pid`` lives in."""
        return cls.open(f"/proc/{pid}/ns/net")

    @classmethod
    def adopt_fd(cls, fd: int, label: str | None = None) -> NetnsHandle:
        """Take ownership of an fd received from elsewhere (SCM_RIGHTS); it is closed with the handle."""
        return cls(fd, label or f"fd:{fd}")

    # -- properties ----------------------------------------------------------------------------------

    @property
    def id(self) -> NetnsId:
        return self._id

    @property
    def label(self) -> str:
        return self._label

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        if self._closed:
            raise NetnsClosed(self._label)
        return self._fd

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"NetnsHandle({self._label!r}, {self._id}, {state})"

    # -- jobs ----------------------------------------------------------------------------------------

    def _enter(self) -> None:
        """Worker initializer: setns once, then prove we are where we meant to be."""
        self._worker_ident = threading.get_ident()
        try:
            _pyroute2_netns.setns(self._fd, flags=0)
            now_in = current_netns_id()
            if now_in != self._id:
                raise OSError(errno.EINVAL, f"thread is in {now_in} after setns, expected {self._id}")
        except BaseException as e:
            self._enter_error = e
            raise

    def _ensure_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise NetnsClosed(self._label)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"netns-{self._id.inode}", initializer=self._enter
                )
            return self._executor

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn`` on the worker (inside the namespace); the future fails with ``NetnsEnterFailed``
        if the worker could not enter it."""
        try:
            return self._ensure_executor().submit(fn, *args, **kwargs)
        except BrokenThreadPool as e:
            raise self._enter_failure() from e

    def _enter_failure(self) -> NetnsEnterFailed:
        cause = self._enter_error
        return NetnsEnterFailed(self._label, str(cause) if cause else "worker thread failed to start")

    def _on_worker(self) -> bool:
        return self._worker_ident == threading.get_ident()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` inside the namespace and return its result (blocks the caller until done).

        Called from the worker itself (a job that needs another job) it runs inline instead of
        deadlocking on its own queue."""
        if self._on_worker():
            return fn(*args, **kwargs)
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result()
        except BrokenThreadPool as e:
            raise self._enter_failure() from e

    def close(self) -> None:
        """Stop the worker (after queued jobs finish) and close the fd. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            # A job closing its own handle must not wait for itself.
            executor.shutdown(wait=not self._on_worker())
        os.close(self._fd)

    def __enter__(self) -> NetnsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_netns(handle: NetnsHandle, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on ``handle``'s worker thread (inside its namespace); blocking."""
    return handle.run(fn, *args, **kwargs)


async def in_netns(handle: NetnsHandle, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await ``fn(*args, **kwargs)`` run inside ``handle``'s namespace; the loop thread stays put."""
    future = handle.submit(fn, *args, **kwargs)
    try:
        return await asyncio.wrap_future(future)
    except BrokenThreadPool as e:
        raise handle._enter_failure() from e


def make_marked_socket(
    family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0, mark: int = INPOD_MARK
) -> socket.socket:
    """Create a socket in the *calling thread's* namespace with SO_MARK ``mark`` (0 = leave unmarked).

    Run it through ``in_netns``/``run_in_netns``; on its own it is an ordinary marked socket."""
    sock = socket.socket(family, type, proto)
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_in_netns(
    handle: NetnsHandle,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    *,
    mark: int = INPOD_MARK,
) -> socket.socket:
    """A new socket living in ``handle``'s namespace, marked ``mark`` (ztunnel's 0x539 by default) so
    the pod's redirection lets its packets through. Blocks for one hop to the worker thread; from a
    coroutine prefer ``await in_netns(handle, make_marked_socket, family, type, proto, mark)``."""
    return handle.run(make_marked_socket, family, type, proto, mark)


__all__ = [
    "INPOD_MARK",
    "NETNS_RUN_DIR",
    "NetnsClosed",
    "NetnsEnterFailed",
    "NetnsError",
    "NetnsGone",
    "NetnsHandle",
    "NetnsId",
    "NotANetns",
    "current_netns_id",
    "in_netns",
    "make_marked_socket",
    "run_in_netns",
    "socket_in_netns",
]
