"""Test kit for ztunnel: configs on ephemeral ports, a static config source, a SOCKS5 client, addresses.

Used by the in-process tests (two ztunnels and echo servers on 127.0.0.0/8 in one event loop) and
usable by later tiers (in-pod, benchmarks). ``loopback_block()`` picks a random 127.a.b.0/24 so
concurrent test runs on one machine do not collide on <workload ip>:15008; Linux routes all of
127.0.0.0/8 to ``lo``, so any of those addresses can be bound without setup. Never imported by ztunnel
itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import struct
from typing import Any

from meshcore.aio.state_cell import StateCell
from meshcore.state import ProxyState
from ztunnel.config import HostPort, ZtunnelConfig


def loopback_block(rng: random.Random | None = None) -> str:
    """A random ``127.a.b.`` prefix (append the host number)."""
    r = rng or random.Random()
    return f"127.{r.randrange(100, 250)}.{r.randrange(1, 250)}."


def make_config(node: str, socks_ip: str | None, **overrides: Any) -> ZtunnelConfig:
    """A dedicated-mode config with every operator port ephemeral on 127.0.0.1 and SOCKS5 on ``socks_ip``."""
    base = ZtunnelConfig(
        node_name=node,
        admin_addr=HostPort("127.0.0.1", 0),
        stats_addr=HostPort("127.0.0.1", 0),
        readiness_addr=HostPort("127.0.0.1", 0),
        socks5_addr=HostPort(socks_ip, 0) if socks_ip is not None else None,
        drain_duration=1.0,
    )
    return dataclasses.replace(base, **overrides)


class StaticSource:
    """A config source that publishes one snapshot and is ready (``Ztunnel(xds=StaticSource.of(state))``)."""

    def __init__(self, cell: StateCell[ProxyState], state: ProxyState) -> None:
        self._cell = cell
        self._state = state
        self.ready = asyncio.Event()
        self._closed = asyncio.Event()

    @classmethod
    def of(cls, state: ProxyState) -> Any:
        return lambda cell: cls(cell, state)

    async def run(self) -> None:
        self._cell.publish(self._state)
        self.ready.set()
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()


class Socks5Refused(ConnectionError):
    """The SOCKS5 server answered the CONNECT with a failure ``reply`` code."""

    def __init__(self, reply: int) -> None:
        super().__init__(f"SOCKS5 CONNECT refused with reply 0x{reply:02x}")
        self.reply = reply


async def socks5_connect(
    proxy: tuple[str, int], src_ip: str, dst_ip: str, dst_port: int, *, limit: int = 1 << 20
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from ``src_ip`` through the SOCKS5 server at ``proxy`` to ``dst_ip:dst_port``.

    Raises ``Socks5Refused`` with the reply code when the server refuses the CONNECT.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((src_ip, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, proxy)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    try:
        writer.write(b"\x05\x01\x00")
        if await reader.readexactly(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 server refused the no-authentication method")
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton(dst_ip) + struct.pack("!H", dst_port))
        reply = await reader.readexactly(10)
        if reply[1] != 0:
            raise Socks5Refused(reply[1])
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer
