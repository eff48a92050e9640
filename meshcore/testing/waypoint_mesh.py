"""Helpers for in-process waypoint tests: destination-ztunnel stand-ins and an HTTP/1.1 client that
speaks inside an HBONE tunnel to the waypoint, as a source ztunnel would.

``DestinationZtunnel``: an mTLS HBONE listener's tunnel callback relaying each tunnel to the dialled
target (``host:port`` on loopback) and recording the peer identities. ``HttpOverHbone``: one tunnel to
the waypoint carrying keep-alive HTTP/1.1 requests (Content-Length bodies only); responses are read
with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshcore.aio.hbone_client import HboneClient
from meshcore.aio.hbone_server import TunnelRequest
from meshcore.aio.relay import relay
from meshcore.aio.streams import AsyncioByteStream
from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls.contexts import client_context
from meshcore.tls.verify import verify_peer


class DestinationZtunnel:
    """A destination ztunnel stand-in: relays each HBONE tunnel to its target on loopback."""

    def __init__(self) -> None:
        self.peers: list[SpiffeId | None] = []

    async def on_tunnel(self, request: TunnelRequest) -> None:
        self.peers.append(request.peer_identity)
        reader, writer = await asyncio.open_connection(request.target.host, request.target.port)
        stream = await request.accept()
        await relay(stream, AsyncioByteStream(reader, writer))


class HttpOverHbone:
    """The source ztunnel's side: one HBONE tunnel to the waypoint carrying a keep-alive HTTP/1.1 client."""

    def __init__(self, client: HboneClient, stream: Any) -> None:
        self.client, self.stream = client, stream
        self.buffer = b""

    @classmethod
    async def open(cls, hbone_address: tuple[str, int], ca: FakeCa, client_id: SpiffeId, waypoint_id: SpiffeId,
                   authority: str) -> HttpOverHbone:
        client = await HboneClient.connect(
            hbone_address[0], hbone_address[1], ssl_context=client_context(ca.issue(client_id)),
            verify=lambda der: verify_peer(der, expected=[waypoint_id]),
        )
        return cls(client, await client.open_tunnel(authority))

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"", *, host: str = "echo",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}content-length: {len(body)}\r\n\r\n".encode()
        await self.stream.send_all(head + body)
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += await self._more()
            head_bytes, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head_bytes.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(fields.get("content-length", "0"))
            while len(rest) < length:
                rest += await self._more()
        self.buffer = rest[length:]
        return status, fields, rest[:length]

    async def _more(self) -> bytes:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the waypoint closed the tunnel")
        return bytes(chunk)

    async def close(self) -> None:
        await self.stream.aclose()
        await self.client.aclose()
