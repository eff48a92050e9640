"""The ZDS socket: SOCK_SEQPACKET over a unix path, one packet per message, fds as SCM_RIGHTS.

Thin I/O around ``protocol`` (which never touches sockets): ``send_packet``/``recv_packet`` for blocking
use and ``ZdsSocket`` for asyncio (non-blocking socket + loop readiness callbacks; asyncio has no
recvmsg of its own). Invariants: a received packet larger than ``MAX_PACKET`` or with more fds than
``RECV_MAX_FDS`` is refused *after closing every fd that came with it*; fds are received close-on-exec
(MSG_CMSG_CLOEXEC) so a child process never inherits a pod netns; every fd handed to the caller is
the caller's to close. An empty read is EOF (no ZDS message encodes to zero bytes).
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import stat
from collections.abc import Sequence

from ztunnel.inpod.errors import ZdsClosed, ZdsTruncated
from ztunnel.inpod.protocol import MAX_PACKET

# More than AddWorkload's one, so an extra fd is reported as an fd mismatch by the protocol rather
# than as truncation; more than this is truncation (the kernel drops the rest).
RECV_MAX_FDS = 4
_ANCBUF = socket.CMSG_SPACE(RECV_MAX_FDS * array.array("i").itemsize)


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of ZDS sockets (tests, and in-process wiring)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def open_listener(path: str, backlog: int = 16) -> socket.socket:
    """The node agent's listening socket at ``path``; a stale socket file is replaced, anything else
    at that path is refused. Mode 0600: only root talks ZDS (the fds it carries enter pods)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)  # before listen(): nobody can have connected yet (umask is process-wide)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    # One byte more than the limit: a packet of exactly MAX_PACKET + 1 bytes must count as too big.
    # Not socket.recv_fds: in 3.11 it ignores its flags argument, and we need MSG_CMSG_CLOEXEC.
    data, ancdata, flags, _ = sock.recvmsg(MAX_PACKET + 1, _ANCBUF, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise ZdsTruncated(f"more than {RECV_MAX_FDS} file descriptors")
    if flags & socket.MSG_TRUNC or len(data) > MAX_PACKET:
        _close_all(fds)
        raise ZdsTruncated(f"packet over {MAX_PACKET} bytes")
    if not data:
        _close_all(fds)
        raise ZdsClosed()
    return data, list(fds)


def send_packet(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one packet (blocking socket). The fds stay open on our side; close them when done."""
    socket.send_fds(sock, [data], list(fds))


def recv_packet(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one packet and its fds (blocking socket). Raises ``ZdsClosed`` or ``ZdsTruncated``."""
    return _receive(sock)


class ZdsSocket:
    """One ZDS connection for asyncio. Not safe for concurrent ``recv`` calls (the protocol never needs
    them: each side waits for one reply at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    async def connect(cls, path: str) -> ZdsSocket:
        """ztunnel's side: connect to the node agent's socket at ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    async def accept(cls, listener: socket.socket) -> ZdsSocket:
        """The node agent's side: wait for the next ztunnel on ``listener`` (made non-blocking)."""
        listener.setblocking(False)
        conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        return cls(conn)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    async def _wait(self, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if writable:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            if writable:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one packet with ``fds`` attached (they stay open on our side)."""
        while True:
            try:
                send_packet(self._sock, data, fds)
                return
            except BlockingIOError:
                await self._wait(writable=True)

    async def recv(self) -> tuple[bytes, list[int]]:
        """The next packet and its fds (ours to close). Raises ``ZdsClosed`` on EOF, ``ZdsTruncated``
        for an oversized packet (its fds already closed)."""
        while True:
            try:
                return _receive(self._sock)
            except BlockingIOError:
                await self._wait(writable=False)

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> ZdsSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
