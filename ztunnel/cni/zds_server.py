"""The node agent's ZDS server: hands pods (their netns fds) to the ztunnels that connect to it.

Theory of operation (istio-cni's ztunnelserver, over ``ztunnel.inpod``'s sans-IO protocol and transport):
- ztunnel connects to ``INPOD_UDS`` and greets (``ZdsHello``, within ``hello_timeout``). The connection
  becomes the *newest* one, then gets the snapshot: one ``AddWorkload`` per captured pod (a duplicate of
  its netns fd rides along), each acked before the next, then ``SnapshotSent``. ``on_snapshot`` learns
  which pods were acked and which nacked. Only then is the connection *ready*.
- Live ``add`` goes to the newest connection only (waiting behind its snapshot, if one is running);
  ``delete`` goes to every connection (old and new ztunnel during an upgrade).
- One request at a time per connection (a lock), replies matched by order. A reader task per connection
  receives the replies, so EOF and unsolicited packets are noticed while idle too. An ack that does not
  come within ``ack_timeout``, a protocol error or EOF ends that connection: ztunnel reconnects and gets
  a fresh snapshot. A nack (``Ack.error``) keeps it: that pod is reported failed, the others are fine.
Must not: decide what to capture (the agent does), or close fds it did not take ownership of.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from ztunnel.cni.errors import ZtunnelNack, ZtunnelNotConnected, ZtunnelUnresponsive
from ztunnel.inpod.errors import ZdsClosed, ZdsError
from ztunnel.inpod.protocol import (
    Ack,
    AddWorkload,
    DelWorkload,
    SnapshotSent,
    WorkloadInfo,
    ZdsRequest,
    ZdsServerConnection,
)
from ztunnel.inpod.transport import ZdsSocket

log = structlog.get_logger("ztunnel.cni.zds")

DEFAULT_HELLO_TIMEOUT = 5.0  # istio-cni reads the hello with a 5 s deadline
DEFAULT_ACK_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ZdsPod:
    """One pod of a snapshot. ``netns_fd`` is owned by the server once returned to it (closed after use)."""

    uid: str
    info: WorkloadInfo
    netns_fd: int


SnapshotSource = Callable[[], Sequence[ZdsPod]]
SnapshotResult = Callable[[dict[str, str | None]], None]  # uid -> None (acked) or the nack's error


class _LinkClosed(Exception):
    pass


class _Link:
    """One ztunnel connection: the socket, its sans-IO state, the request lock and the reply reader."""

    def __init__(self, number: int, zsock: ZdsSocket, ack_timeout: float) -> None:
        self.number = number
        self.zsock = zsock
        self.conn = ZdsServerConnection()
        self.lock = asyncio.Lock()
        self.ready = False
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._ack_timeout = ack_timeout
        self._pending: asyncio.Future[Ack] | None = None

    async def receive_hello(self) -> None:
        data, fds = await self.zsock.recv()
        try:
            self.conn.receive_hello(data, fds)
        finally:
            _close_fds(fds)

    async def read_replies(self) -> None:
        """Deliver each reply to the request waiting for it; end the link on EOF or a protocol error."""
        reason = "ztunnel closed the connection"
        try:
            while True:
                data, fds = await self.zsock.recv()
                try:
                    ack = self.conn.receive_ack(data, fds)  # unsolicited packets raise here
                finally:
                    _close_fds(fds)
                pending, self._pending = self._pending, None
                if pending is not None and not pending.done():
                    pending.set_result(ack)
        except ZdsClosed:
            pass
        except (ZdsError, OSError) as e:
            reason = f"ZDS protocol error: {e}"
            log.warning(
                "ztunnel broke the ZDS protocol; dropping the connection", link=self.number, error=str(e)
            )
        finally:
            self.close(reason)

    async def request(self, msg: ZdsRequest) -> Ack:
        """Send ``msg`` and wait for its ack; the caller holds ``lock``. Raises ``_LinkClosed``."""
        if self.closed.is_set():
            raise _LinkClosed(self.close_reason)
        packet, fds = self.conn.send(msg)
        reply: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending = reply
        closed: asyncio.Future[Any] = asyncio.ensure_future(self.closed.wait())
        waiters: set[asyncio.Future[Any]] = {reply, closed}
        try:
            await self.zsock.send(packet, fds)
            done, _ = await asyncio.wait(
                waiters, timeout=self._ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except OSError as e:
            self.close(f"send failed: {e}")
            raise _LinkClosed(self.close_reason) from e
        finally:
            closed.cancel()
        if reply in done:
            return reply.result()
        if not done:
            self.close(f"no ack within {self._ack_timeout:g}s")
        reply.cancel()
        raise _LinkClosed(self.close_reason)

    def close(self, reason: str) -> None:
        """Mark the link finished; its owner stops the reader, then closes the socket."""
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class ZdsServer:
    """Accepts ztunnels on ``listener`` and serves them until ``serve()`` is cancelled."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        snapshot: SnapshotSource,
        on_snapshot: SnapshotResult,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        on_ready_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._listener = listener
        self._snapshot = snapshot
        self._on_snapshot = on_snapshot
        self._ack_timeout = ack_timeout
        self._hello_timeout = hello_timeout
        self._on_ready_change = on_ready_change
        self._links: list[_Link] = []  # oldest first
        self._numbers = itertools.count(1)
        self._ready_event = asyncio.Event()
        self._was_ready = False

    # -- state ---------------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._links)

    @property
    def ready(self) -> bool:
        """A ztunnel is connected and has acknowledged its snapshot."""
        return any(link.ready and not link.closed.is_set() for link in self._links)

    async def wait_ready(self) -> None:
        while not self.ready:
            self._ready_event.clear()
            await self._ready_event.wait()

    def _changed(self) -> None:
        self._ready_event.set()
        now = self.ready
        if now != self._was_ready:
            self._was_ready = now
            if self._on_ready_change is not None:
                self._on_ready_change(now)

    # -- serving -------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept ztunnel connections forever; each is served in its own task (cancelled with this)."""
        async with asyncio.TaskGroup() as tg:
            while True:
                zsock = await ZdsSocket.accept(self._listener)
                tg.create_task(self._serve_link(zsock))

    async def _serve_link(self, zsock: ZdsSocket) -> None:
        link = _Link(next(self._numbers), zsock, self._ack_timeout)
        try:
            async with asyncio.timeout(self._hello_timeout):
                await link.receive_hello()
        except (TimeoutError, ZdsError, OSError) as e:
            log.warning(
                "ztunnel connection without a valid hello; closed",
                link=link.number,
                error=str(e) or "timeout",
            )
            zsock.close()
            return
        log.info("ztunnel connected", link=link.number)
        self._links.append(link)
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(link.read_replies())
                try:
                    await self._send_snapshot(link)
                except _LinkClosed:
                    pass
                else:
                    link.ready = True
                    self._changed()
                await link.closed.wait()
                # A closed socket never wakes a pending read: stop the reader explicitly.
                reader.cancel()
        finally:
            link.close("agent stopping")
            zsock.close()
            self._links.remove(link)
            self._changed()
            log.info("ztunnel disconnected", link=link.number, reason=link.close_reason)

    async def _send_snapshot(self, link: _Link) -> None:
        async with link.lock:
            pods = list(self._snapshot())
            results: dict[str, str | None] = {}
            try:
                for i, pod in enumerate(pods):
                    ack = await link.request(AddWorkload(pod.uid, pod.info, pod.netns_fd))
                    _close_fds([pod.netns_fd])
                    pods[i] = ZdsPod(pod.uid, pod.info, -1)
                    results[pod.uid] = ack.error or None
                    if not ack.ok:
                        log.warning(
                            "ztunnel nacked a pod in its snapshot",
                            uid=pod.uid,
                            pod=_label(pod.info),
                            error=ack.error,
                        )
                ack = await link.request(SnapshotSent())
                if not ack.ok:
                    log.warning("ztunnel nacked the end of the snapshot", error=ack.error)
            finally:
                _close_fds([p.netns_fd for p in pods if p.netns_fd >= 0])
            log.info(
                "snapshot sent",
                link=link.number,
                pods=len(pods),
                nacked=sum(1 for e in results.values() if e),
            )
        self._on_snapshot(results)

    # -- requests ------------------------------------------------------------------------------------

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        """Hand pod ``uid`` to the newest ztunnel (``netns_fd`` stays ours: the kernel passes a copy).

        Raises ``ZtunnelNotConnected``, ``ZtunnelNack`` or ``ZtunnelUnresponsive``."""
        pod = _label(info)
        if not self._links:
            raise ZtunnelNotConnected(pod)
        link = self._links[-1]
        async with link.lock:
            try:
                ack = await link.request(AddWorkload(uid, info, netns_fd))
            except _LinkClosed as e:
                raise ZtunnelUnresponsive(pod, str(e) or "connection closed") from None
        if not ack.ok:
            raise ZtunnelNack(pod, ack.error)

    async def delete(self, uid: str) -> list[str]:
        """Tell every connected ztunnel to stop serving ``uid``; returns the problems (nacks, lost links)."""
        problems: list[str] = []
        for link in list(self._links):
            async with link.lock:
                try:
                    ack = await link.request(DelWorkload(uid))
                except _LinkClosed as e:
                    problems.append(f"ztunnel connection {link.number} lost: {e}")
                    continue
            if not ack.ok:
                problems.append(f"ztunnel connection {link.number} nacked: {ack.error}")
        return problems


def _label(info: WorkloadInfo) -> str:
    return f"{info.namespace}/{info.name}"
