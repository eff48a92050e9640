"""Test kit for the node agent: ``FakeZtunnel``, a ZDS client that stands in for ztunnel's in-pod mode.

It connects to the agent's ZDS socket, greets, and answers every request with an ack (or a nack for the
uids in ``nack``, or nothing at all when ``silent``), recording what arrived: the requests in order, the
uids of each snapshot, and for every AddWorkload the ``NetnsId`` of the fd it carried (then closed), so a
test can check the fd names the pod's namespace. Tests wait with ``wait_until`` (woken on every packet,
bounded with ``asyncio.timeout``), never by sleeping. Also: ``agent_config`` (a node agent config with
every path under a test's directory), ``agent_running`` (a NodeAgent task for the
length of a ``async with``) and ``eventually`` (poll a condition with a deadline). Imported by tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from meshcore.aio.netns import NetnsId
from meshcore.store import Store
from ztunnel.cni.agent import NodeAgent, Redirector
from ztunnel.cni.config import NodeAgentConfig
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


def agent_config(directory: Path, **overrides: Any) -> NodeAgentConfig:
    """A node-1 agent config whose sockets, netns map and /proc root are under ``directory``."""
    settings: dict[str, Any] = {
        "node_name": "node-1",
        "zds_socket": directory / "run" / "ztunnel.sock",
        "event_socket": directory / "run" / "pluginevent.sock",
        "netns_map_path": directory / "run" / "pods.json",
        "monitoring_addr": None,
        "admin_addr": None,
        "proc_root": directory / "no-proc",
        **overrides,
    }
    return NodeAgentConfig(**settings)


@contextlib.asynccontextmanager
async def agent_running(
    config: NodeAgentConfig, store: Store, redirector: Redirector | None = None, *, within: float = 10.0
) -> AsyncIterator[NodeAgent]:
    """Run a NodeAgent (the real redirector unless one is given) until the block ends."""
    agent = NodeAgent(config, store, redirector=redirector)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(within):
            await agent.started.wait()
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(predicate: Callable[[], Any], what: str = "condition", within: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.01)
