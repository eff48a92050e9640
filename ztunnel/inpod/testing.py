"""Test kit for in-pod mode: a fake node agent (the ZDS server end) and loopback stand-ins for pod netns.

``FakeNodeAgent(path)`` listens where ztunnel's ``INPOD_UDS`` points; ``await agent.accept()`` returns an
``AgentConnection`` once a ztunnel connected and greeted, on which a test sends ``add`` (a netns path or
fd, passed with SCM_RIGHTS), ``keep``, ``delete``, ``snapshot_sent`` or raw packets, each returning the
ztunnel's ``Ack``. It drives the same ``ZdsServerConnection`` the real node agent uses, so a test that
breaks the protocol on purpose uses ``send_raw``.
``LoopbackPods`` lets unit tests run the manager without root or namespaces: each "pod" is a plain file
whose fd is handed over; the opener maps it to a ``LoopbackPodSockets`` that binds the pod's 127.x address
(ephemeral ports, recorded by the port asked for). Never imported by ztunnel itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from ztunnel.inpod.errors import ZdsClosed
from ztunnel.inpod.protocol import (
    Ack,
    AddWorkload,
    DelWorkload,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    ZdsRequest,
    ZdsServerConnection,
    decode_ack,
)
from ztunnel.inpod.transport import ZdsSocket, open_listener

ACK_TIMEOUT = 10.0  # seconds a fake agent waits for ztunnel's ack (the real one waits 5)


class FakeNodeAgent:
    """The node agent's ZDS listener (see the module docstring). ``close`` also closes every connection."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._listener = open_listener(self.path)
        self._connections: list[AgentConnection] = []

    async def accept(self, timeout: float = 10.0) -> AgentConnection:  # noqa: ASYNC109 - a test deadline
        """The next ztunnel that connects and says hello."""
        async with asyncio.timeout(timeout):
            sock = await ZdsSocket.accept(self._listener)
            conn = AgentConnection(sock)
            self._connections.append(conn)
            data, fds = await sock.recv()
            conn.protocol.receive_hello(data, fds)
        return conn

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class AgentConnection:
    """One ztunnel's connection, from the agent's side: one request, one ack, in order."""

    def __init__(self, sock: ZdsSocket) -> None:
        self.sock = sock
        self.protocol = ZdsServerConnection()

    async def request(self, msg: ZdsRequest) -> Ack:
        packet, fds = self.protocol.send(msg)
        await self.sock.send(packet, fds)
        return await self._ack(lambda data, fds: self.protocol.receive_ack(data, fds))

    async def add(self, uid: str, info: WorkloadInfo, netns: str | os.PathLike[str] | int) -> Ack:
        """AddWorkload with the namespace at ``netns`` (a path, opened here) or an fd (sent as is)."""
        fd = netns if isinstance(netns, int) else os.open(os.fspath(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return await self.request(AddWorkload(uid, info, fd))
        finally:
            if not isinstance(netns, int):
                os.close(fd)

    async def keep(self, uid: str) -> Ack:
        return await self.request(KeepWorkload(uid))

    async def delete(self, uid: str) -> Ack:
        return await self.request(DelWorkload(uid))

    async def snapshot_sent(self) -> Ack:
        return await self.request(SnapshotSent())

    async def send_raw(self, packet: bytes, fds: Sequence[int] = ()) -> Ack:
        """Send bytes the protocol may not allow; returns ztunnel's answer (a nack, usually)."""
        await self.sock.send(packet, fds)
        return await self._ack(decode_ack)

    async def wait_closed(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a test deadline
        """Return once ztunnel closed this connection (EOF)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    _, fds = await self.sock.recv()
                except ZdsClosed:
                    return
                for fd in fds:
                    os.close(fd)

    async def _ack(self, decode: Callable[[bytes, list[int]], Ack]) -> Ack:
        async with asyncio.timeout(ACK_TIMEOUT):
            data, fds = await self.sock.recv()
        return decode(data, fds)

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------------- loopback "pods"


class LoopbackPodSockets:
    """A pod's ``PodSockets`` without a namespace: listeners bind ``ip`` on ephemeral ports."""

    def __init__(self, ip: str, netns_id: tuple[int, int]) -> None:
        self.ip = ip
        self.netns_id = netns_id
        self.bound: dict[int, tuple[str, int]] = {}  # port asked for -> where it really listens
        self.closed = False

    def listen(self, host: str, port: int, *, backlog: int = 128) -> socket.socket:
        sock = socket.create_server((self.ip, 0), backlog=backlog)
        sock.setblocking(False)
        self.bound[port] = sock.getsockname()[:2]
        return sock

    def new_socket(self, family: int, *, source_ip: str | None = None) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    def for_original_source(self, client_ip: str) -> LoopbackPodSockets:
        return self

    def close(self) -> None:
        self.closed = True


class LoopbackPods:
    """Maps stand-in netns files to loopback pods; ``open`` is a ``PodOpener`` for the manager."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._ips: dict[tuple[int, int], str] = {}
        self.opened: list[LoopbackPodSockets] = []
        self.refuse: set[str] = set()  # pod uids whose netns "cannot be entered"

    def make(self, name: str, ip: str) -> Path:
        """A stand-in netns for a pod at ``ip``: hand its path to ``AgentConnection.add``."""
        path = self._dir / f"netns-{name}"
        path.touch()
        st = path.stat()
        self._ips[(st.st_dev, st.st_ino)] = ip
        return path

    async def open(self, fd: int, uid: str) -> LoopbackPodSockets:
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if uid in self.refuse:
            raise OSError(1, f"cannot enter the network namespace of {uid} (refused by the test)")
        key = (st.st_dev, st.st_ino)
        if key not in self._ips:
            raise OSError(22, "not a stand-in network namespace made by LoopbackPods.make")
        pod = LoopbackPodSockets(self._ips[key], key)
        self.opened.append(pod)
        return pod


__all__ = [
    "AgentConnection",
    "FakeNodeAgent",
    "LoopbackPodSockets",
    "LoopbackPods",
]
