"""A started TrackedListener keeps a long accept queue: asyncio must not shrink it to its default of 100.

The queue length is read back from the kernel (Linux ``TCP_INFO`` of a listening socket reports its
maximum backlog in ``tcpi_sacked``), so the test checks what a burst of clients would meet.
"""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from meshcore.aio.listener import LISTEN_BACKLOG, TrackedListener
from meshcore.aio.streams import AsyncioByteStream

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the backlog from Linux TCP_INFO")


class Idle(TrackedListener):
    async def _serve(self, stream: AsyncioByteStream) -> None:
        await stream.aclose()


def kernel_backlog(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 28)[0])  # tcpi_sacked = sk_max_ack_backlog when listening


@pytest.mark.parametrize(
    ("backlog", "expected"),
    [(None, LISTEN_BACKLOG), (128, 128), (4096, 4096)],
    ids=["a listener started without a backlog keeps the long default",
         "a listener started with a short backlog keeps it",
         "a listener started with a longer backlog gets it"],
)
async def test_started_listener_listens_with_its_backlog(backlog: int | None, expected: int) -> None:
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener = Idle(sock) if backlog is None else Idle(sock, backlog=backlog)
    await listener.start()
    try:
        assert kernel_backlog(sock) == expected
        assert expected != 100  # asyncio's own default, which the bug left in place
    finally:
        await listener.aclose()
