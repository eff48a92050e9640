"""A small HTTP/1.1 server for admin, metrics, readiness and debug endpoints (h11 over asyncio).

Used by every binary for its operator-facing ports (istiod_lite 15014, ztunnel 15000/15020/15021). It is not
on the data path: one request per connection is fine, bodies are small, and handlers are plain async
functions ``handler(request) -> Response`` looked up by exact path. A handler that raises gives a 500 with the
error text; a bad request gives a 400; neither affects other connections or stops the listener.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import structlog

log = structlog.get_logger("meshcore.http")

MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode())

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(
            status=status,
            body=json.dumps(value, indent=2, default=str).encode() + b"\n",
            content_type="application/json",
        )


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``routes`` (exact path -> handler) on one address until ``close()``."""

    def __init__(self, routes: Mapping[str, Handler], *, name: str) -> None:
        self._routes = dict(routes)
        self._name = name
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            req = await asyncio.wait_for(self._read_request(conn, reader), timeout=10)
            if req is None:
                return
            handler = self._routes.get(req.path)
            if handler is None:
                resp = Response.text(f"no such endpoint {req.path}; try one of: {', '.join(sorted(self._routes))}\n", 404)
            else:
                try:
                    resp = await handler(req)
                except Exception as e:  # a broken handler must not take the listener down
                    log.exception("http handler failed", server=self._name, path=req.path)
                    resp = Response.text(f"internal error: {e}\n", 500)
            await self._write(conn, writer, resp)
        except (h11.RemoteProtocolError, ValueError) as e:
            try:
                await self._write(h11.Connection(h11.SERVER), writer, Response.text(f"bad request: {e}\n", 400), raw=True)
            except Exception:  # noqa: S110 - the client is gone; nothing more to tell it
                pass
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_BYTES:
                    raise ValueError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return None
        assert head is not None
        target = urlsplit(head.target.decode("latin-1"))
        return Request(
            method=head.method.decode(),
            path=target.path,
            query=parse_qs(target.query),
            headers={k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
            body=bytes(body),
        )

    async def _write(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response, raw: bool = False
    ) -> None:
        headers = [
            ("content-type", resp.content_type),
            ("content-length", str(len(resp.body))),
            ("connection", "close"),
            *resp.headers.items(),
        ]
        if raw:
            writer.write(f"HTTP/1.1 {resp.status} Bad Request\r\n".encode())
            writer.write(b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n" + resp.body)
        else:
            writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=resp.body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


def metrics_handler(registry: Any) -> Handler:
    """A handler rendering a prometheus_client CollectorRegistry in the text exposition format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(_: Request) -> Response:
        return Response(body=generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return handle
