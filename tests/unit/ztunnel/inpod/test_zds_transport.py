"""ztunnel.inpod.transport over real SOCK_SEQPACKET sockets: a real netns fd crosses with SCM_RIGHTS,
oversized packets and fd floods are refused without leaking fds, EOF is reported, and the asyncio
wrapper carries a whole ZDS exchange."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat

import pytest

from meshcore.aio.netns import NetnsId
from ztunnel.inpod.errors import ZdsClosed, ZdsTruncated
from ztunnel.inpod.protocol import (
    MAX_PACKET,
    AddWorkload,
    DelWorkload,
    SnapshotSent,
    WorkloadInfo,
    ZdsClientConnection,
    ZdsServerConnection,
    encode_request,
)
from ztunnel.inpod.transport import (
    RECV_MAX_FDS,
    ZdsSocket,
    open_listener,
    recv_packet,
    send_packet,
    seqpacket_pair,
)

INFO = WorkloadInfo("web-0", "shop", "web")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair():
    a, b = seqpacket_pair()
    yield a, b
    a.close()
    b.close()


def test_a_netns_fd_crosses_the_socket_and_names_the_same_namespace(pair) -> None:
    agent, ztunnel = pair
    netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data, fds = encode_request(AddWorkload("uid-1", INFO, netns_fd))
        send_packet(agent, data, fds)
    finally:
        os.close(netns_fd)  # the sender's copy; the receiver has its own
    got_data, got_fds = recv_packet(ztunnel)
    try:
        assert got_data == data
        assert len(got_fds) == 1
        assert NetnsId.of_fd(got_fds[0]) == NetnsId.of_path("/proc/self/ns/net")
        assert fcntl.fcntl(got_fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        for fd in got_fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("size", "nfds"),
    [(MAX_PACKET + 1, 1), (100, RECV_MAX_FDS + 1)],
    ids=["a packet over 1024 bytes is refused and its fd closed", "a flood of fds is refused and all closed"],
)
def test_truncated_packets_are_refused_without_leaking_fds(pair, size: int, nfds: int) -> None:
    agent, ztunnel = pair
    sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(nfds)]
    try:
        send_packet(agent, b"\x0a" * size, sent)
    finally:
        for fd in sent:
            os.close(fd)
    before = open_fds()
    with pytest.raises(ZdsTruncated):
        recv_packet(ztunnel)
    assert open_fds() == before


def test_eof_is_reported_as_closed(pair) -> None:
    agent, ztunnel = pair
    agent.close()
    with pytest.raises(ZdsClosed):
        recv_packet(ztunnel)


def test_the_listener_is_private_and_replaces_a_stale_socket(tmp_path) -> None:
    path = str(tmp_path / "ztunnel.sock")
    open_listener(path).close()  # leaves a stale socket file behind
    listener = open_listener(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        listener.close()


def test_the_listener_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path) -> None:
    path = tmp_path / "ztunnel.sock"
    path.write_text("important")
    with pytest.raises(OSError):
        open_listener(str(path))
    assert path.read_text() == "important"


async def test_a_zds_exchange_over_asyncio_sockets(tmp_path) -> None:
    path = str(tmp_path / "ztunnel.sock")
    listener = open_listener(path)
    netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    received: list[object] = []

    async def agent() -> list[bool]:
        acks = []
        async with await ZdsSocket.accept(listener) as zsock:
            conn = ZdsServerConnection()
            conn.receive_hello(*await zsock.recv())
            for msg in (AddWorkload("uid-1", INFO, netns_fd), SnapshotSent(), DelWorkload("uid-1")):
                await zsock.send(*conn.send(msg))
                acks.append(conn.receive_ack(*await zsock.recv()).ok)
        return acks

    async def ztunnel() -> None:
        async with await ZdsSocket.connect(path) as zsock:
            conn = ZdsClientConnection()
            await zsock.send(conn.hello())
            for _ in range(3):
                data, fds = await zsock.recv()
                event = conn.receive_request(data, fds)
                if isinstance(event, AddWorkload):
                    assert NetnsId.of_fd(event.netns_fd) == NetnsId.of_fd(netns_fd)
                    os.close(event.netns_fd)
                received.append(event)
                await zsock.send(conn.ack())
            assert conn.snapshot_uids == {"uid-1"}

    try:
        async with asyncio.timeout(5):
            acks, _ = await asyncio.gather(agent(), ztunnel())
    finally:
        listener.close()
        os.close(netns_fd)
    assert acks == [True, True, True]
    assert [type(e).__name__ for e in received] == ["AddWorkload", "SnapshotSent", "DelWorkload"]


async def test_recv_waits_for_a_packet_and_reports_eof() -> None:
    a, b = seqpacket_pair()
    za, zb = ZdsSocket(a), ZdsSocket(b)
    try:
        pending = asyncio.ensure_future(zb.recv())
        await asyncio.sleep(0)
        assert not pending.done()
        await za.send(b"\x1a\x00")
        async with asyncio.timeout(5):
            assert await pending == (b"\x1a\x00", [])
        za.close()
        with pytest.raises(ZdsClosed):
            async with asyncio.timeout(5):
                await zb.recv()
    finally:
        za.close()
        zb.close()
