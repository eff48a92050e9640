"""Test kit for the node agent: ``FakeZtunnel``, a ZDS client that stands in for ztunnel's in-pod mode.

It connects to the agent's ZDS socket, greets, and answers every request with an ack (or a nack for the
uids in ``nack``, or nothing at all when ``silent``), recording what arrived: the requests in order, the
uids of each snapshot, and for every AddWorkload the ``NetnsId`` of the fd it carried (then closed), so a
test can check the fd names the pod's namespace. Tests wait with ``wait_until`` (woken on every packet,
bounded with ``asyncio.timeout``), never by sleeping. Imported by tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from meshcore.aio.netns import NetnsId
from ztunnel.inpod.errors import ZdsClosed, ZdsError
from ztunnel.inpod.protocol import AddWorkload, DelWorkload, SnapshotSent, ZdsClientConnection, ZdsEvent
from ztunnel.inpod.transport import ZdsSocket


class FakeZtunnel:
    """One ZDS connection to the agent at ``path``; ``start()`` connects, ``close()`` disconnects."""

    def __init__(
        self, path: str | Path, *, nack: Mapping[str, str] | None = None, silent: bool = False
    ) -> None:
        self.path = str(path)
        self.nack = dict(nack or {})
        self.silent = silent
        self.requests: list[ZdsEvent] = []
        self.netns_ids: dict[str, NetnsId] = {}  # uid -> namespace of the last AddWorkload's fd
        self.snapshots: list[frozenset[str]] = []
        self.serving: set[str] = set()  # uids added and not deleted (what ztunnel would serve)
        self.closed = asyncio.Event()
        self._conn = ZdsClientConnection()
        self._sock: ZdsSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed: set[asyncio.Future[None]] = set()

    async def start(self) -> FakeZtunnel:
        self._sock = await ZdsSocket.connect(self.path)
        await self._sock.send(self._conn.hello())
        self._task = asyncio.create_task(self._serve())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
        self.closed.set()

    async def __aenter__(self) -> FakeZtunnel:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def snapshot_done(self) -> bool:
        return bool(self.snapshots)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds (checked after each packet); bound it with ``asyncio.timeout``."""
        while not predicate():
            if self.closed.is_set():
                raise ZdsClosed()
            changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._changed.add(changed)
            try:
                await changed
            finally:
                self._changed.discard(changed)

    def _wake(self) -> None:
        for fut in self._changed:
            if not fut.done():
                fut.set_result(None)

    async def _serve(self) -> None:
        assert self._sock is not None
        try:
            while True:
                data, fds = await self._sock.recv()
                try:
                    event = self._conn.receive_request(data, fds)
                except ZdsError as e:
                    for fd in fds:
                        os.close(fd)
                    await self._sock.send(self._conn.ack(str(e)))
                    return
                self._record(event)
                if self.silent:
                    self._wake()
                    continue
                uid = getattr(event, "uid", "")
                error = self.nack.get(uid, "") if isinstance(event, AddWorkload) else ""
                if isinstance(event, AddWorkload) and error:
                    self.serving.discard(uid)
                await self._sock.send(self._conn.ack(error))
                self._wake()
        except (ZdsClosed, OSError):
            pass
        finally:
            self.closed.set()
            self._wake()

    def _record(self, event: ZdsEvent) -> None:
        self.requests.append(event)
        if isinstance(event, AddWorkload):
            try:
                self.netns_ids[event.uid] = NetnsId.of_fd(event.netns_fd)
            finally:
                os.close(event.netns_fd)
            self.serving.add(event.uid)
        elif isinstance(event, SnapshotSent):
            snapshot = self._conn.snapshot_uids or frozenset()
            self.snapshots.append(snapshot)
            self.serving &= set(snapshot)
        elif isinstance(event, DelWorkload):
            self.serving.discard(event.uid)
