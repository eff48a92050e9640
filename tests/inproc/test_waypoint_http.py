"""In-process tests of the waypoint's HTTP engine over real sockets on 127.0.0.1.

A waypoint listener (``sniff`` + ``serve_http``, a round-robin handler that denies ``/deny``) sits in
front of two HTTP/1.1 backends written on h11 (an independent implementation) and two gRPC backends
(grpcio). Clients: raw sockets (exact bytes, for keep-alive and smuggling), curl, grpcio.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import h11
import pytest

from meshcore.aio.streams import TcpStream
from waypoint.l7 import (
    ConnectionFacts,
    Detected,
    Forward,
    HttpCounters,
    HttpLimits,
    LocalResponse,
    Request,
    RequestRecord,
    TcpUpstreamPool,
    Upstreams,
    serve_http,
    sniff,
)

HOST = "127.0.0.1"
DEADLINE = 10.0


# --- HTTP/1.1 backends (h11) ---------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    port: int = 0
    connections: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.SWITCHED_PROTOCOL:
                        return
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    await self._answer(conn, event, reader, writer)
                    if conn.our_state is h11.SWITCHED_PROTOCOL:
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except h11.ProtocolError:
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _answer(self, conn: h11.Connection, request: h11.Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        headers = {k.decode(): v.decode() for k, v in request.headers}
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        record = {"backend": self.name, "method": request.method.decode(), "path": request.target.decode(),
                  "headers": headers, "raw_headers": [[k.decode(), v.decode()] for k, v in request.headers],
                  "body": body.decode("latin-1")}
        self.requests.append(record)
        if headers.get("upgrade", "").lower() == "websocket":
            writer.write(conn.send(h11.InformationalResponse(
                status_code=101, headers=[("connection", "upgrade"), ("upgrade", "websocket")])) or b"")
            await writer.drain()
            rest, _ = conn.trailing_data
            if rest:
                writer.write(b"echo:" + rest)
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.write_eof()
            return
        payload = json.dumps(record).encode()
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/json"), ("content-length", str(len(payload))),
            ("connection", "x-hop"), ("x-hop", "must be removed"), ("keep-alive", "timeout=5")])) or b"")
        if request.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=payload)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()  # Python 3.11 has no Server.close_clients
        await self.server.wait_closed()


# --- the waypoint under test -----------------------------------------------------------------------------


class RoundRobin:
    """Per request: /deny -> 403 as Istio's RBAC filter answers; else the next backend in turn."""

    def __init__(self, endpoints: list[tuple[str, int]]) -> None:
        self.endpoints = endpoints
        self.next = 0
        self.seen: list[Request] = []

    def decide(self, request: Request) -> LocalResponse | Forward:
        self.seen.append(request)
        if request.path.startswith("/deny"):
            return LocalResponse(403, b"RBAC: access denied", response_flags="-")
        endpoint = self.endpoints[self.next % len(self.endpoints)]
        self.next += 1
        return Forward(endpoint, label=f"{endpoint[0]}:{endpoint[1]}")


@dataclass
class Waypoint:
    handler: RoundRobin
    pool: TcpUpstreamPool
    upstreams: Upstreams
    counters: HttpCounters
    records: list[RequestRecord]
    port: int
    detected: list[Detected]


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    items = [Backend("a"), Backend("b")]
    for backend in items:
        await backend.start()
    yield items
    for backend in items:
        await backend.aclose()


async def start_waypoint(endpoints: list[tuple[str, int]], limits: HttpLimits = HttpLimits()):
    pool = TcpUpstreamPool()
    upstreams = Upstreams(pool, limits)
    waypoint = Waypoint(RoundRobin(endpoints), pool, upstreams, HttpCounters(), [], 0, [])
    tasks: set[asyncio.Task[None]] = set()

    async def serve(stream: TcpStream) -> None:
        verdict, first = await sniff(stream, limits)
        waypoint.detected.append(verdict)
        if verdict is Detected.TCP:
            await stream.aclose()
            return
        peer = stream.get_extra_info("peername")
        await serve_http(stream, first_bytes=first, protocol=verdict, handler=waypoint.handler,
                         upstreams=upstreams, limits=limits, counters=waypoint.counters,
                         connection=ConnectionFacts(source_ip=peer[0], source_port=peer[1],
                                                    destination="10.96.0.10:80"),
                         on_complete=waypoint.records.append)

    def on_connected(stream: TcpStream) -> None:
        task = asyncio.get_running_loop().create_task(serve(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.get_running_loop().create_server(lambda: TcpStream(on_connected), HOST, 0)
    waypoint.port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstreams.aclose()
        await pool.aclose()
        await server.wait_closed()

    return waypoint, stop


@pytest.fixture
async def waypoint(backends: list[Backend]) -> AsyncIterator[Waypoint]:
    wp, stop = await start_waypoint([(HOST, b.port) for b in backends])
    try:
        yield wp
    finally:
        await stop()


# --- a raw HTTP/1.1 client (exact bytes) -------------------------------------------------------------------


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next response, parsed by h11 (an independent parser)."""
        if self.conn.our_state is h11.IDLE:  # the request went as raw bytes: let h11 expect a response
            self.conn.send(h11.Request(method="GET", target="/", headers=[("host", "svc")]))
            self.conn.send(h11.EndOfMessage())
        async with asyncio.timeout(DEADLINE):
            response: h11.Response | None = None
            body = b""
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
                    return response, body
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("closed before a response")

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b""):
        all_headers = [("host", "svc.default.svc.cluster.local"), *headers]
        if body:
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.send(data)
        return await self.response()

    async def closed_by_peer(self) -> bool:
        async with asyncio.timeout(DEADLINE):
            return await self.reader.read(65536) == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib_suppress():
            await self.writer.wait_closed()


def contextlib_suppress():
    import contextlib

    return contextlib.suppress(ConnectionError, OSError)


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode() == name:
            return value.decode()
    return None


# --- HTTP/1.1 ------------------------------------------------------------------------------------------------


async def test_one_keepalive_connection_balances_requests_across_two_upstreams(waypoint, backends):
    client = await RawClient.open(waypoint.port)
    try:
        served = []
        for i in range(4):
            response, body = await client.request("GET", f"/item/{i}")
            assert response.status_code == 200
            served.append(json.loads(body)["backend"])
        assert served == ["a", "b", "a", "b"]
        assert [b.connections for b in backends] == [1, 1]  # upstream keep-alive: one connection each
        assert waypoint.detected == [Detected.HTTP1]
    finally:
        await client.aclose()
    assert [r.status for r in waypoint.records] == [200] * 4
    assert [r.upstream for r in waypoint.records] == [f"{HOST}:{backends[i % 2].port}" for i in range(4)]
    assert all(r.response_bytes > 0 and r.protocol == "HTTP/1.1" for r in waypoint.records)


async def test_a_denied_request_gets_403_and_the_connection_serves_the_next(waypoint, backends):
    client = await RawClient.open(waypoint.port)
    try:
        response, body = await client.request("GET", "/deny/me")
        assert (response.status_code, body) == (403, b"RBAC: access denied")
        response, body = await client.request("GET", "/after")
        assert response.status_code == 200 and json.loads(body)["path"] == "/after"
    finally:
        await client.aclose()
    assert sum(len(b.requests) for b in backends) == 1  # the denied request never reached a backend
    assert waypoint.records[0].status == 403 and waypoint.records[0].upstream is None


async def test_request_headers_are_set_as_envoy_sets_them(waypoint, backends):
    client = await RawClient.open(waypoint.port)
    try:
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        _, body = await client.request("GET", "/h", [
            ("traceparent", tp), ("baggage", "k8s.namespace.name=default"), ("connection", "x-drop, keep-alive"),
            ("x-drop", "1"), ("keep-alive", "timeout=1"), ("proxy-connection", "keep-alive"), ("te", "trailers")])
        seen = json.loads(body)["headers"]
        _, body2 = await client.request("GET", "/h2", [("x-request-id", "client-chosen-id")])
        seen2 = json.loads(body2)["headers"]
    finally:
        await client.aclose()
    assert seen["traceparent"] == tp and seen["baggage"] == "k8s.namespace.name=default"
    assert seen["x-forwarded-proto"] == "http"
    assert len(seen["x-request-id"]) == 36  # made: a uuid4
    for hop in ("x-drop", "keep-alive", "proxy-connection"):
        assert hop not in seen
    assert seen["te"] == "trailers"
    assert seen2["x-request-id"] == "client-chosen-id"
    assert waypoint.handler.seen[1].request_id == "client-chosen-id"


async def test_response_hop_by_hop_headers_are_dropped(waypoint):
    client = await RawClient.open(waypoint.port)
    try:
        response, _ = await client.request("GET", "/")
    finally:
        await client.aclose()
    assert header(response, "x-hop") is None and header(response, "keep-alive") is None
    assert header(response, "content-type") == "application/json"


async def test_chunked_request_body_streams_through(waypoint):
    client = await RawClient.open(waypoint.port)
    try:
        await client.send(b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n")
        await client.send(b"6\r\n world\r\n0\r\n\r\n")
        client.conn.send(h11.Request(method="POST", target="/upload", headers=[("host", "svc"),
                                                                              ("transfer-encoding", "chunked")]))
        client.conn.send(h11.EndOfMessage())
        response, body = await client.response()
    finally:
        await client.aclose()
    assert response.status_code == 200
    assert json.loads(body)["body"] == "hello world"
    assert waypoint.records[0].request_bytes == 11


async def test_expect_100_continue_gets_continue_before_the_body(waypoint):
    client = await RawClient.open(waypoint.port)
    try:
        await client.send(b"PUT /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            interim = await client.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        await client.send(b"data")
        client.conn.send(h11.Request(method="PUT", target="/x", headers=[("host", "svc"), ("content-length", "4")]))
        client.conn.send(h11.Data(data=b"data"))
        client.conn.send(h11.EndOfMessage())
        response, body = await client.response()
    finally:
        await client.aclose()
    record = json.loads(body)
    assert response.status_code == 200 and record["body"] == "data"
    assert "expect" not in record["headers"]


async def test_websocket_upgrade_passes_opaque_bytes_after_the_101(waypoint):
    reader, writer = await asyncio.open_connection(HOST, waypoint.port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"upgrade: websocket" in head.lower()
            writer.write(b"\x81\x02hi")
            assert await reader.readexactly(9) == b"echo:\x81\x02hi"
            writer.write_eof()
            assert await reader.read() == b""
    finally:
        writer.close()
    assert waypoint.counters.upgrades == 1


async def test_head_response_has_no_body_and_keeps_the_connection(waypoint):
    client = await RawClient.open(waypoint.port)
    try:
        client.conn.send(h11.Request(method="HEAD", target="/", headers=[("host", "svc")]))
        await client.send(b"HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n")
        client.conn.send(h11.EndOfMessage())
        response, body = await client.response()
        assert response.status_code == 200 and body == b""
        response, body = await client.request("GET", "/next")
        assert json.loads(body)["path"] == "/next"
    finally:
        await client.aclose()


async def test_an_unreachable_upstream_gets_503_with_envoys_words():
    wp, stop = await start_waypoint([(HOST, 1)])  # nothing listens on port 1
    try:
        client = await RawClient.open(wp.port)
        try:
            response, body = await client.request("GET", "/")
        finally:
            await client.aclose()
    finally:
        await stop()
    assert response.status_code == 503
    assert body.startswith(b"upstream connect error or disconnect/reset before headers")
    assert wp.records[0].response_flags == "UF"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_keepalive_requests_go_through(waypoint):
    url = f"http://{HOST}:{waypoint.port}"
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n",
        f"{url}/one", "-o", "/dev/null", f"{url}/deny", "-o", "/dev/null", f"{url}/three",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(DEADLINE):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert out.decode().split("\n")[:3] == ["200 1", "403 0", "200 0"]  # one connection for all three


# --- smuggling and bad input -----------------------------------------------------------------------------

SMUGGLING = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                 id="content-length together with transfer-encoding is refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400,
                 id="two different content-lengths are refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400,
                 id="a chunk size that is not hex is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400,
                 id="an obs-fold continuation line is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400,
                 id="a NUL in a header value is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400,
                 id="a space in a header name is refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
                 id="transfer-encoding other than chunked alone is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(101)) + b"\r\n",
                 431, id="more headers than max_header_count get 431"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n", 431,
                 id="headers over max_header_bytes get 431"),
    pytest.param(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
                 id="a request line over max_request_line gets 414"),
]


@pytest.mark.parametrize(("raw", "status"), SMUGGLING)
async def test_smuggling_and_bad_input_are_refused_and_the_connection_closes(waypoint, backends, raw, status):
    client = await RawClient.open(waypoint.port)
    other = await RawClient.open(waypoint.port)
    try:
        await client.send(raw)
        response, _ = await client.response()
        assert response.status_code == status
        assert header(response, "connection") == "close"
        assert await client.closed_by_peer()
        response, _ = await other.request("GET", "/unaffected")  # another connection is not affected
        assert response.status_code == 200
    finally:
        await client.aclose()
        await other.aclose()
    assert [r["path"] for b in backends for r in b.requests] == ["/unaffected"]  # nothing smuggled through
    assert waypoint.counters.refused_requests == 1
    refused = [r for r in waypoint.records if r.response_flags == "DPE"]
    assert len(refused) == 1 and refused[0].status == status


async def test_a_request_before_a_refused_pipelined_one_is_still_answered(waypoint, backends):
    client = await RawClient.open(waypoint.port)
    try:
        await client.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
        response, body = await client.response()
        assert response.status_code == 200 and json.loads(body)["path"] == "/first"
        response, _ = await client.response()
        assert response.status_code == 400
    finally:
        await client.aclose()


async def test_non_http_bytes_are_detected_as_tcp(waypoint):
    reader, writer = await asyncio.open_connection(HOST, waypoint.port)
    try:
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        async with asyncio.timeout(DEADLINE):
            assert await reader.read() == b""
    finally:
        writer.close()
    assert waypoint.detected == [Detected.TCP]


# --- gRPC (HTTP/2 prior knowledge) -------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


class GrpcBackend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.aio.server()
        self.calls: list[dict[str, str]] = []

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(dict(context.invocation_metadata()))
            context.set_trailing_metadata((("x-backend", name),))
            if request == b"fail":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no such luck")
            return name.encode() + b":" + request

        async def stream(requests, context: grpc.aio.ServicerContext):
            context.set_trailing_metadata((("x-backend", name),))
            async for item in requests:
                yield name.encode() + b":" + item

        handler = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
            "Stream": grpc.stream_stream_rpc_method_handler(stream, _identity, _identity),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{HOST}:0")


@pytest.fixture
async def grpc_waypoint() -> AsyncIterator[tuple[Waypoint, list[GrpcBackend]]]:
    servers = [GrpcBackend("a"), GrpcBackend("b")]
    for server in servers:
        await server.server.start()
    wp, stop = await start_waypoint([(HOST, s.port) for s in servers])
    try:
        yield wp, servers
    finally:
        await stop()
        for server in servers:
            await server.server.stop(None)


async def test_grpc_unary_calls_are_balanced_with_trailers_intact(grpc_waypoint):
    wp, servers = grpc_waypoint
    async with grpc.aio.insecure_channel(f"{HOST}:{wp.port}") as channel:
        unary = channel.unary_unary("/test.Echo/Unary", request_serializer=_identity,
                                    response_deserializer=_identity)
        answers = []
        for i in range(4):
            call = unary(b"m%d" % i, metadata=(("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
                         timeout=DEADLINE)
            answers.append(await call)
            trailers = dict(await call.trailing_metadata())
            assert trailers["x-backend"] == answers[-1].split(b":")[0].decode()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(b"fail", timeout=DEADLINE)
    assert answers == [b"a:m0", b"b:m1", b"a:m2", b"b:m3"]
    assert failure.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert failure.value.details() == "no such luck"
    assert wp.detected == [Detected.HTTP2]
    assert servers[0].calls[0]["traceparent"].startswith("00-0af7651916cd43dd")
    assert "x-request-id" in servers[0].calls[0]
    assert [r.grpc_status for r in wp.records] == ["0", "0", "0", "0", "7"]
    assert all(r.protocol == "HTTP/2" and r.status == 200 for r in wp.records)


async def test_grpc_bidirectional_streaming_goes_through(grpc_waypoint):
    wp, _ = grpc_waypoint
    async with grpc.aio.insecure_channel(f"{HOST}:{wp.port}") as channel:
        stream = channel.stream_stream("/test.Echo/Stream", request_serializer=_identity,
                                       response_deserializer=_identity)
        call = stream(timeout=DEADLINE)
        got = []
        for i in range(5):
            await call.write(b"x%d" % i)
            got.append(await call.read())
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
        trailers = dict(await call.trailing_metadata())
    assert got == [b"a:x%d" % i for i in range(5)]
    assert trailers["x-backend"] == "a"


async def test_a_denied_grpc_call_gets_403_on_its_stream_only(grpc_waypoint):
    wp, _ = grpc_waypoint
    async with grpc.aio.insecure_channel(f"{HOST}:{wp.port}") as channel:
        denied = channel.unary_unary("/deny.Me/Unary", request_serializer=_identity, response_deserializer=_identity)
        allowed = channel.unary_unary("/test.Echo/Unary", request_serializer=_identity,
                                      response_deserializer=_identity)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await denied(b"x", timeout=DEADLINE)
        assert await allowed(b"ok", timeout=DEADLINE) == b"a:ok"
    # gRPC maps HTTP 403 to PERMISSION_DENIED
    assert failure.value.code() is grpc.StatusCode.PERMISSION_DENIED
