"""The agent's ZDS server against a fake ztunnel on a real SOCK_SEQPACKET socket: hello, snapshot, live
add/delete, nacks, ack timeouts, bad peers, and old/new ztunnels side by side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from meshcore.aio.netns import NetnsId
from ztunnel.cni.errors import ZtunnelNack, ZtunnelNotConnected, ZtunnelUnresponsive
from ztunnel.cni.testing import FakeZtunnel
from ztunnel.cni.zds_server import ZdsPod, ZdsServer
from ztunnel.inpod.protocol import AddWorkload, DelWorkload, WorkloadInfo, encode_hello
from ztunnel.inpod.transport import open_listener

TIMEOUT = 5.0


def info(uid: str) -> WorkloadInfo:
    return WorkloadInfo(uid, "demo", "default")


def netns_fds(path: str) -> int:
    """How many of our fds refer to the namespace at ``path`` (to catch leaked snapshot fds)."""
    want = f"net:[{os.stat(path).st_ino}]"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == want
    return count


class Agent:
    """The agent's side of the callbacks: a fixed set of pods, and the snapshot results it was told."""

    def __init__(self, uids: Sequence[str], netns_path: str) -> None:
        self.uids = list(uids)
        self.netns_path = netns_path
        self.results: list[dict[str, str | None]] = []

    def snapshot(self) -> list[ZdsPod]:
        return [ZdsPod(u, info(u), os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)) for u in self.uids]

    def on_snapshot(self, results: dict[str, str | None]) -> None:
        self.results.append(results)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, agent: Agent, **kw) -> AsyncIterator[tuple[ZdsServer, str]]:
    path = str(tmp_path / "ztunnel.sock")
    listener = open_listener(path)
    server = ZdsServer(listener, snapshot=agent.snapshot, on_snapshot=agent.on_snapshot, **kw)
    task = asyncio.create_task(server.serve())
    try:
        yield server, path
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()


async def until(ztunnel: FakeZtunnel, predicate) -> None:
    async with asyncio.timeout(TIMEOUT):
        await ztunnel.wait_until(predicate)


async def snapshot_acked(server: ZdsServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        await server.wait_ready()


async def test_snapshot_then_live_add_and_delete(tmp_path: Path) -> None:
    netns = "/proc/self/ns/net"
    agent = Agent(["p1", "p2"], netns)
    before = netns_fds(netns)
    async with serving(tmp_path, agent) as (server, path), FakeZtunnel(path) as zt:
        await snapshot_acked(server)
        assert [type(r).__name__ for r in zt.requests] == ["AddWorkload", "AddWorkload", "SnapshotSent"]
        assert zt.snapshots == [frozenset({"p1", "p2"})]
        assert agent.results == [{"p1": None, "p2": None}]
        assert zt.netns_ids["p1"] == NetnsId.of_path(netns)
        assert netns_fds(netns) == before  # the snapshot's fds were closed once sent

        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await server.add("p3", info("p3"), fd)
            os.fstat(fd)  # still ours: the kernel passed a copy
        finally:
            os.close(fd)
        assert await server.delete("p1") == []
        assert zt.requests[3:] == [AddWorkload("p3", info("p3"), zt.requests[3].netns_fd), DelWorkload("p1")]
        assert zt.serving == {"p2", "p3"}


async def test_add_without_a_ztunnel_says_so(tmp_path: Path) -> None:
    async with serving(tmp_path, Agent([], "/proc/self/ns/net")) as (server, _):
        assert not server.ready
        with pytest.raises(ZtunnelNotConnected, match="no ztunnel is connected"):
            await server.add("p1", info("p1"), 0)


async def test_a_nack_fails_that_pod_only_and_keeps_the_connection(tmp_path: Path) -> None:
    agent = Agent(["p1", "p2"], "/proc/self/ns/net")
    async with serving(tmp_path, agent) as (server, path):
        async with FakeZtunnel(path, nack={"p2": "no such workload in xDS"}) as zt:
            await snapshot_acked(server)
            assert agent.results == [{"p1": None, "p2": "no such workload in xDS"}]
            fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                with pytest.raises(ZtunnelNack, match="no such workload"):
                    await server.add("p2", info("p2"), fd)
                await server.add("p4", info("p4"), fd)
            finally:
                os.close(fd)
            assert server.ready and server.connections == 1
            assert zt.serving == {"p1", "p4"}


async def test_a_ztunnel_that_does_not_ack_is_dropped_and_the_next_one_gets_the_snapshot(
    tmp_path: Path,
) -> None:
    agent = Agent(["p1"], "/proc/self/ns/net")
    async with serving(tmp_path, agent, ack_timeout=0.2) as (server, path):
        async with FakeZtunnel(path, silent=True) as mute:
            async with asyncio.timeout(TIMEOUT):
                await mute.closed.wait()
            assert agent.results == [] and not server.ready
        async with FakeZtunnel(path) as zt:
            await snapshot_acked(server)
            assert zt.snapshots == [frozenset({"p1"})]
            assert agent.results == [{"p1": None}]


async def test_a_live_add_that_is_not_acked_drops_the_connection(tmp_path: Path) -> None:
    agent = Agent([], "/proc/self/ns/net")
    async with serving(tmp_path, agent, ack_timeout=0.2) as (server, path), FakeZtunnel(path) as zt:
        await snapshot_acked(server)
        zt.silent = True
        fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(ZtunnelUnresponsive, match="no ack within"):
                await server.add("p1", info("p1"), fd)
        finally:
            os.close(fd)
        async with asyncio.timeout(TIMEOUT):
            await zt.closed.wait()
        assert not server.ready


async def test_bad_greetings_are_dropped_without_disturbing_others(tmp_path: Path) -> None:
    agent = Agent(["p1"], "/proc/self/ns/net")
    async with serving(tmp_path, agent, hello_timeout=0.2) as (server, path):
        async with FakeZtunnel(path) as good:
            await snapshot_acked(server)

            def peer(first: bytes | None) -> bytes:
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.settimeout(TIMEOUT)
                    s.connect(path)
                    if first is not None:
                        s.send(first)
                    return s.recv(1024)  # b"" once the agent closes it

            assert await asyncio.to_thread(peer, b"\xff\xffgarbage") == b""
            assert await asyncio.to_thread(peer, b"\x08\x07") == b""  # ZdsHello{version: 7}
            assert await asyncio.to_thread(peer, None) == b""  # says nothing: hello timeout
            assert server.ready and server.connections == 1
            assert await server.delete("p1") == []
            assert good.serving == set()


async def test_adds_go_to_the_newest_ztunnel_and_deletes_to_all(tmp_path: Path) -> None:
    agent = Agent([], "/proc/self/ns/net")
    async with serving(tmp_path, agent) as (server, path):
        async with FakeZtunnel(path) as old:
            await snapshot_acked(server)
            async with FakeZtunnel(path) as new:
                await until(new, lambda: new.snapshot_done)
                fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    await server.add("p1", info("p1"), fd)
                finally:
                    os.close(fd)
                assert await server.delete("p0") == []
                assert [type(r).__name__ for r in old.requests] == ["SnapshotSent", "DelWorkload"]
                assert [type(r).__name__ for r in new.requests] == [
                    "SnapshotSent",
                    "AddWorkload",
                    "DelWorkload",
                ]


async def test_an_unsolicited_packet_ends_that_connection(tmp_path: Path) -> None:
    agent = Agent([], "/proc/self/ns/net")
    async with serving(tmp_path, agent) as (server, path):

        def rogue() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.settimeout(TIMEOUT)
                s.connect(path)
                s.send(encode_hello())
                s.recv(1024)  # the (empty) snapshot's SnapshotSent
                s.send(b"\x0a\x00")  # the ack of SnapshotSent (WorkloadResponse{ack: {}})
                s.send(b"\x0a\x00")  # an ack for nothing
                return s.recv(1024)

        assert await asyncio.to_thread(rogue) == b""  # EOF: the agent dropped it
        assert server.connections == 0 and not server.ready
