"""The HTTP engine's resilience on loopback: retries (to another endpoint when there is one), per-try and
request timeouts, the body replay bound, mirrors, and every attempt in the request's record.

A listener runs ``sniff`` + ``serve_http`` with a handler returning one scripted ``Forward``; upstreams
are ``EchoBackend``s (meshcore.testing.echo) told to fail, delay or count; the client is a raw
keep-alive HTTP/1.1 connection.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from meshcore.aio.streams import TcpStream
from meshcore.testing.echo import EchoBackend
from waypoint.l7 import (
    ConnectionFacts,
    Detected,
    Forward,
    HttpCounters,
    RequestRecord,
    TcpUpstreamPool,
    Upstreams,
    serve_http,
    sniff,
)
from waypoint.l7.model import MirrorTarget, Request, Upstream
from waypoint.l7.session import shadow_authority
from waypoint.resilience.retry import RetryPolicy

pytestmark = pytest.mark.inproc
HOST = "127.0.0.1"
RETRY_5XX = RetryPolicy(2, frozenset({"5xx"}), backoff_base=0.001)


@dataclass
class Scripted:
    forward: Forward | None = None

    def decide(self, request: Request) -> Forward:
        assert self.forward is not None
        return self.forward


@dataclass
class Engine:
    handler: Scripted
    counters: HttpCounters
    records: list[RequestRecord]
    port: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)


@pytest.fixture
async def backends() -> AsyncIterator[list[EchoBackend]]:
    items = [await EchoBackend(name).start() for name in ("a", "b", "mirror")]
    try:
        yield items
    finally:
        for b in items:
            await b.close()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    pool = TcpUpstreamPool()
    upstreams = Upstreams(pool)
    eng = Engine(Scripted(), HttpCounters(), [])
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        eng.background.add(task)
        task.add_done_callback(eng.background.discard)

    async def serve(stream: TcpStream) -> None:
        verdict, first = await sniff(stream)
        assert verdict is Detected.HTTP1
        await serve_http(stream, first_bytes=first, protocol=verdict, handler=eng.handler, upstreams=upstreams,
                         counters=eng.counters, connection=ConnectionFacts(source_ip=HOST, destination="10.96.0.10:80"),
                         on_complete=eng.records.append, background=spawn, rng=random.Random(1))

    def on_connected(stream: TcpStream) -> None:
        task = asyncio.get_running_loop().create_task(serve(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.get_running_loop().create_server(lambda: TcpStream(on_connected), HOST, 0)
    eng.port = server.sockets[0].getsockname()[1]
    try:
        yield eng
    finally:
        server.close()
        for task in [*tasks, *eng.background]:
            task.cancel()
        await asyncio.gather(*tasks, *eng.background, return_exceptions=True)
        await upstreams.aclose()
        await pool.aclose()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection(HOST, port))

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\nhost: echo:80\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                          + body)
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                          if k.strip().lower() == "content-length")
            return int(lines[0].split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


def _ep(b: EchoBackend) -> tuple[str, int]:
    return (HOST, b.port)


async def test_a_retry_hides_a_backend_that_fails_every_other_request(engine, backends):
    a = backends[0]
    a.fail_every = 2
    engine.handler.forward = Forward(_ep(a), label="a", retry=RETRY_5XX)
    client = await Client.open(engine.port)
    try:
        statuses = [(await client.request())[0] for _ in range(10)]
    finally:
        await client.close()
    assert statuses == [200] * 10
    assert len(a.requests) == 19  # tries 2, 4, ... 18 failed: requests 2..10 each took a second try
    assert engine.counters.retries == 9
    retried = [r for r in engine.records if len(r.attempts) == 2]
    assert len(retried) == 9
    assert [(x.status, x.flags) for x in retried[0].attempts] == [(503, "-"), (200, "-")]


async def test_a_retry_goes_to_another_endpoint_when_there_is_one(engine, backends):
    a, b, _ = backends
    a.fail_every = 1
    engine.handler.forward = Forward(_ep(a), label="a", retry=RETRY_5XX, alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        status, body = await client.request("POST", "/x", b"payload")
    finally:
        await client.close()
    assert status == 200 and json.loads(body)["backend"] == "b"
    assert b.requests[0].body == b"payload"  # the small body was replayed whole
    record = engine.records[-1]
    assert [x.upstream for x in record.attempts] == ["a", "b"]
    assert record.upstream == "b"


async def test_without_a_retry_policy_the_failure_reaches_the_client(engine, backends):
    a, b, _ = backends
    a.fail_every = 1
    engine.handler.forward = Forward(_ep(a), alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        assert (await client.request())[0] == 503
    finally:
        await client.close()
    assert b.requests == [] and engine.counters.retries == 0


async def test_a_body_beyond_the_replay_buffer_is_never_resent(engine, backends):
    a, b, _ = backends
    a.fail_every = 1
    engine.handler.forward = Forward(_ep(a), retry=RETRY_5XX, alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        status, _ = await client.request("POST", "/big", b"x" * (64 * 1024 + 1))
    finally:
        await client.close()
    assert status == 503
    assert b.requests == []
    assert engine.counters.retries_exhausted == 1
    assert len(engine.records[-1].attempts) == 1


async def test_retries_exhausted_answer_the_last_response_and_count(engine, backends):
    a, b, _ = backends
    a.fail_every = b.fail_every = 1
    engine.handler.forward = Forward(_ep(a), retry=RETRY_5XX, alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        status, body = await client.request()
    finally:
        await client.close()
    assert (status, body) == (503, b"failing on purpose")
    assert [x.upstream for x in engine.records[-1].attempts] == [str(_ep(a)), "b", str(_ep(a))]
    assert engine.records[-1].response_flags == "-"  # an upstream's answer, passed on as it came
    assert engine.counters.retries == 2 and engine.counters.retries_exhausted == 1


async def test_a_per_try_timeout_is_retried_elsewhere_and_flagged_ut(engine, backends):
    a, b, _ = backends
    a.delay = 30.0
    policy = RetryPolicy(1, frozenset({"5xx"}), per_try_timeout=0.2, backoff_base=0.001)
    engine.handler.forward = Forward(_ep(a), label="a", retry=policy, alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        status, body = await client.request()
    finally:
        await client.close()
    assert status == 200 and json.loads(body)["backend"] == "b"
    assert [(x.upstream, x.flags) for x in engine.records[-1].attempts] == [("a", "UT"), ("b", "-")]


async def test_the_request_timeout_answers_504_ut_and_is_not_retried(engine, backends):
    a, b, _ = backends
    a.delay = 30.0
    engine.handler.forward = Forward(_ep(a), timeout=0.2, retry=RETRY_5XX, alternatives=(Upstream(_ep(b), "b"),))
    client = await Client.open(engine.port)
    try:
        status, _ = await client.request()
    finally:
        await client.close()
    assert status == 504
    assert engine.records[-1].response_flags == "UT"
    assert b.requests == []


async def test_a_mirror_gets_a_shadow_copy_without_holding_the_primary_response(engine, backends):
    a, _, mirror = backends
    mirror.delay = 30.0  # the copy is never answered while the test runs
    engine.handler.forward = Forward(_ep(a), mirrors=(MirrorTarget(_ep(mirror), "mirror"),))
    client = await Client.open(engine.port)
    try:
        status, body = await client.request("POST", "/m", b"copy me")
        await mirror.wait_for(1)
    finally:
        await client.close()
    assert status == 200 and json.loads(body)["backend"] == "a"
    assert engine.counters.mirrors_in_flight == 1  # the primary answered while the copy was still pending
    copy = mirror.requests[0]
    assert (copy.method, copy.path, copy.host, copy.body) == ("POST", "/m", "echo-shadow:80", b"copy me")
    assert a.requests[0].host == "echo:80"


async def test_a_failing_mirror_is_counted_and_never_seen_by_the_client(engine, backends):
    a, _, mirror = backends
    mirror.reset = True
    engine.handler.forward = Forward(_ep(a), mirrors=(MirrorTarget(_ep(mirror), "mirror"),))
    client = await Client.open(engine.port)
    try:
        assert (await client.request())[0] == 200
        await mirror.wait_for(1)
        async with asyncio.timeout(10):
            while engine.background:
                await asyncio.gather(*engine.background, return_exceptions=True)
    finally:
        await client.close()
    assert engine.counters.mirror_failures == 1


async def test_flags_the_decision_earned_are_kept_in_the_record(engine, backends):
    engine.handler.forward = Forward(_ep(backends[0]), flags="DI")
    client = await Client.open(engine.port)
    try:
        assert (await client.request())[0] == 200
    finally:
        await client.close()
    assert engine.records[-1].response_flags == "DI"


@pytest.mark.parametrize(("authority", "shadow"), [
    pytest.param("echo:80", "echo-shadow:80", id="the suffix goes before the port"),
    pytest.param("echo.default.svc.cluster.local", "echo.default.svc.cluster.local-shadow", id="no port: at the end"),
    pytest.param("[fd00::1]:80", "[fd00::1]:80", id="an IPv6 literal is kept"),
])
def test_shadow_authority(authority, shadow):
    assert shadow_authority(authority) == shadow
