"""The asyncio shell of the waypoint's HTTP engine: ``serve_http`` serves one downstream connection (the
bytes inside one HBONE tunnel) with the sans-IO sessions of ``http1``/``http2``.

Per request: the head becomes a ``Request`` (hop-by-hop headers dropped, ``x-request-id`` kept or made,
``x-forwarded-proto``; ``waypoint.l7.headers``), the ``RequestHandler`` decides, and the engine either
answers locally or forwards to the ``Forward``'s endpoint through ``Upstreams`` (HTTP/1.1 keep-alive
connections from the ``UpstreamPool``, or a multiplexed HTTP/2 connection). Requests of one keep-alive
connection are decided one by one, so each may go to a different endpoint. Bodies stream both ways
(``HttpLimits.request_body_buffer`` > 0 buffers a request body up to that size first). After each
response ``on_complete(RequestRecord)`` is called; it must not raise (it is guarded and logged if it does).

Failure rules (fail closed, one connection at a time):
- a refused request (``Refusal``: malformed, smuggling-shaped, over a limit) is answered with its status
  (if no response started yet), counted, logged once, and its HTTP/1 connection closed; on HTTP/2 a
  stream-level refusal costs only that stream, connection abuse ends with GOAWAY;
- an upstream that cannot be reached gives 503 (flag UF), one that goes away before answering 503 (UC),
  one that answers invalid HTTP 502 (UPE), a ``Forward.timeout`` passed 504 (UT); once a response has
  started the downstream stream is reset / the HTTP/1 connection closed instead;
- a reused HTTP/1 upstream connection that turns out closed before answering a body-less request is
  retried once on another connection (the keep-alive race every proxy has);
- with ``Forward.retry``, an attempt whose outcome matches ``retry_on`` (a response status, or a failure
  before any response) is retried after a jittered backoff, on the first ``Forward.alternatives``
  endpoint not tried yet; only while nothing went downstream, the request body ended and fitted the
  replay buffer (64 KiB: a longer body is never resent), attempts are left, and the request timeout
  (``Forward.timeout``, over all attempts) has time left; each attempt is bounded by the per-try
  timeout. Every attempt is in the record (``RequestRecord.attempts``: one record per request, its
  attempts in order); retries that ran out add flag ``URX``;
- ``Forward.mirrors`` get a fire-and-forget copy (authority ``<host>-shadow``) as a task of ``background``
  once the request body is known (at once for body-less requests); the copy's answer is read and dropped,
  failures counted, copies over 256 in flight (or bodies over the replay buffer) dropped and counted; the
  primary response never waits for a copy;
- a downstream that goes away mid-request aborts the upstream exchange (flag DC).
A response head is written together with the body bytes that arrived with it (one write, so one HBONE
DATA frame and one TLS record, not two) when the upstream's next event is already buffered; a head whose
body is still on its way is written at once.
Every task is owned: HTTP/2 stream tasks by the connection's TaskGroup, request-body pumps by their request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any

import structlog

from meshcore.aio.streams import ByteStream
from waypoint.l7.detect import Detected, detect
from waypoint.l7.events import (
    Body,
    ConnectionEnded,
    EndOfMessage,
    Event,
    Headers,
    Informational,
    Refusal,
    RequestHead,
    ResponseHead,
    StreamReset,
    Upgraded,
    WindowOpened,
)
from waypoint.l7.headers import apply_edits, prepare_request, prepare_response
from waypoint.l7.http1 import Http1Server
from waypoint.l7.http2 import ENHANCE_YOUR_CALM, H2Server
from waypoint.l7.model import (
    DEFAULT_LIMITS,
    Attempt,
    ConnectionFacts,
    Forward,
    HeaderList,
    HttpCounters,
    HttpLimits,
    HttpProtocol,
    LocalResponse,
    MirrorTarget,
    Request,
    RequestHandler,
    RequestRecord,
    Upstream,
)
from waypoint.l7.upstream import Exchange, UpstreamError, Upstreams
from waypoint.resilience.retry import REPLAY_BUFFER, GiveUp, Outcome, ReplayBuffer, Retry, RetryState
from waypoint.resilience.timeouts import Deadline

log = structlog.get_logger("waypoint.http")

OnComplete = Callable[[RequestRecord], None]
Spawn = Callable[[Coroutine[Any, Any, None]], object]
"""Runs a coroutine as a task someone owns (the waypoint's background tasks): mirrors go there."""
_MIRROR_LIMIT = 256  # mirror copies in flight at once (process-wide); past it a copy is dropped and counted
_MIRROR_TIMEOUT = 30.0  # seconds a mirror copy may take before it is abandoned
_DRAIN_LIMIT = 64 * 1024  # body bytes read and discarded after a local response before closing instead
_TEXT = (("content-type", "text/plain"),)
_UPSTREAM_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


async def sniff(stream: ByteStream, limits: HttpLimits = DEFAULT_LIMITS) -> tuple[Detected, bytes]:
    """Read the first bytes of ``stream`` until ``detect`` decides; returns the verdict and the bytes read
    (pass them on as ``first_bytes``). EOF before a decision is ``TCP``. Bounded by ``detect``'s bound."""
    data = b""
    while True:
        verdict = detect(data, limits.max_request_line)
        if verdict is not Detected.NEED_MORE:
            return verdict, data
        chunk = await stream.receive_some(limits.read_size)
        if not chunk:
            return Detected.TCP, data
        data += chunk


class _DownstreamGone(Exception):
    """The downstream went away (or broke) while a request was in flight."""


class _DownstreamRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


@dataclass(slots=True)
class _Ctx:
    handler: RequestHandler
    upstreams: Upstreams
    limits: HttpLimits
    facts: ConnectionFacts
    on_complete: OnComplete | None
    counters: HttpCounters
    protocol: HttpProtocol
    peer: str = ""
    background: Spawn | None = None
    rng: random.Random = field(default_factory=random.Random)


@dataclass(slots=True)
class _Rec:
    head: RequestHead
    authority: str
    request_id: str = ""
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    flags: str = "-"
    request_bytes: int = 0
    response_bytes: int = 0
    upstream: str | None = None
    grpc_status: str | None = None
    detail: str = ""
    decision_flags: str = ""  # flags the decision earned (DI) before the upstream's own
    attempts: list[Attempt] = field(default_factory=list)
    # A route's response header edits (set, add, remove), applied to the upstream's response head.
    response_edits: tuple[HeaderList, HeaderList, tuple[str, ...]] | None = None


def _flags(rec: _Rec) -> str:
    if not rec.decision_flags or rec.decision_flags == "-":
        return rec.flags
    return rec.decision_flags if rec.flags == "-" else f"{rec.decision_flags},{rec.flags}"


def _emit(ctx: _Ctx, rec: _Rec) -> None:
    if ctx.on_complete is None:
        return
    head = rec.head
    protocol = "HTTP/2" if head.http_version == "2" else f"HTTP/{head.http_version}"
    record = RequestRecord(
        head.method, head.path, rec.authority, head.scheme, protocol, rec.status, _flags(rec), rec.request_bytes,
        rec.response_bytes, time.monotonic() - rec.started, rec.upstream, rec.request_id, head.user_agent,
        ctx.facts, rec.grpc_status, rec.detail, tuple(rec.attempts),
    )
    try:
        ctx.on_complete(record)
    except Exception:
        log.exception("on_complete callback failed", request_id=rec.request_id)


def _grpc_status(headers: Headers) -> str | None:
    for name, value in headers:
        if name == "grpc-status":
            return value
    return None


def _grpc_code(headers: Headers) -> int | None:
    text = _grpc_status(headers)
    return int(text) if text is not None and text.isdigit() else None


def _refused(exc: UpstreamError) -> bool:
    """An HTTP/2 REFUSED_STREAM reset (code 7): the upstream never processed the request."""
    return exc.detail.endswith("(error code 7)")


# --- the downstream side of one request (HTTP/1 and HTTP/2 behind one face) ---------------------------


class _Down:
    response_started = False
    request_ended = False

    async def next_body_event(self) -> Body | EndOfMessage:
        raise NotImplementedError

    async def send_continue(self) -> None:
        raise NotImplementedError

    async def send_head(self, status: int, headers: Headers, *, content_length: int | None, end_stream: bool,
                        close: bool = False, more: bool = False) -> None:
        """``more``: body bytes follow at once (the caller has them); the head may wait to go out with them."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Write anything ``send_head(more=True)`` held back."""
        return None

    async def send_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_end(self, trailers: Headers) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _H1Down(_Down):
    """HTTP/1 downstream; one instance per connection, reset per request."""

    def __init__(self, stream: ByteStream, server: Http1Server, limits: HttpLimits) -> None:
        self.stream = stream
        self.server = server
        self.limits = limits
        self.pending: deque[Event] = deque()
        self.closing = False
        self.held = b""  # a response head waiting for its body (see send_head)

    def reset(self, head: RequestHead) -> None:
        self.response_started = False
        self.request_ended = head.end_stream
        self.closing = False

    async def next_event(self, wait_limit: float | None = None) -> Event:
        pending = self.pending
        while not pending:
            if wait_limit is None:
                data = await self.stream.receive_some(self.limits.read_size)
            else:
                async with asyncio.timeout(wait_limit):
                    data = await self.stream.receive_some(self.limits.read_size)
            pending.extend(self.server.receive_data(data))
        return pending.popleft()

    async def next_body_event(self) -> Body | EndOfMessage:
        try:
            event = await self.next_event()
        except (ConnectionError, OSError) as exc:
            raise _DownstreamGone(f"downstream connection broke: {exc!r}") from exc
        if isinstance(event, Body | EndOfMessage):
            if isinstance(event, EndOfMessage):
                self.request_ended = True
            return event
        if isinstance(event, Refusal):
            raise _DownstreamRefused(event)
        raise _DownstreamGone(getattr(event, "reason", "downstream closed mid-request"))

    async def _write(self, data: bytes) -> None:
        if self.held:
            data, self.held = self.held + data, b""
        if not data:
            return
        try:
            await self.stream.send_all(data)
        except (ConnectionError, OSError) as exc:
            raise _DownstreamGone(f"downstream connection broke: {exc!r}") from exc

    async def send_continue(self) -> None:
        await self._write(self.server.send_continue())

    async def send_head(self, status: int, headers: Headers, *, content_length: int | None, end_stream: bool,
                        close: bool = False, more: bool = False) -> None:
        self.response_started = True
        out = self.server.send_response(status, headers, content_length=content_length, end_stream=end_stream,
                                        close=close or self.closing)
        if more:
            self.held += out
            return
        await self._write(out)

    async def flush(self) -> None:
        await self._write(b"")

    async def send_data(self, data: bytes) -> None:
        await self._write(self.server.send_data(data))

    async def send_end(self, trailers: Headers) -> None:
        await self._write(self.server.send_end(trailers))

    def abort(self) -> None:
        self.closing = True
        self.server.keep_alive = False


class _H2DownStream(_Down):
    def __init__(self, owner: _H2DownConn, stream_id: int, head: RequestHead) -> None:
        self.owner = owner
        self.sid = stream_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.window: asyncio.Future[None] | None = None
        self.request_ended = head.end_stream
        self.ended_response = False

    async def next_body_event(self) -> Body | EndOfMessage:
        event = await self.queue.get()
        if isinstance(event, Body):
            self.owner.conn.acknowledge(self.sid, len(event.data))
            return event
        if isinstance(event, EndOfMessage):
            self.request_ended = True
            return event
        raise _DownstreamGone(getattr(event, "reason", "client reset the stream"))

    async def send_continue(self) -> None:
        return None  # HTTP/2 clients do not wait for 100 (gRPC never asks)

    async def send_head(self, status: int, headers: Headers, *, content_length: int | None, end_stream: bool,
                        close: bool = False, more: bool = False) -> None:
        self.response_started = True
        if content_length is not None and not any(n == "content-length" for n, _ in headers):
            headers = [*headers, ("content-length", str(content_length))]
        self.owner.conn.send_response(self.sid, status, headers, end_stream=end_stream)
        self.ended_response = end_stream
        if not more:
            await self.owner.flush()

    async def flush(self) -> None:
        await self.owner.flush()

    async def send_data(self, data: bytes) -> None:
        view = memoryview(data)
        owner = self.owner
        while view:
            if owner.conn.closed:
                raise _DownstreamGone("downstream HTTP/2 connection ended")
            sent = owner.conn.send_data(self.sid, view)
            view = view[sent:]
            await owner.flush()
            if view:
                self.window = asyncio.get_running_loop().create_future()
                try:
                    await self.window
                finally:
                    self.window = None

    async def send_end(self, trailers: Headers) -> None:
        if self.ended_response:
            return
        self.ended_response = True
        self.owner.conn.end_stream(self.sid, trailers)
        await self.owner.flush()

    def abort(self) -> None:
        self.owner.conn.reset(self.sid, 0x2)  # INTERNAL_ERROR: the response cannot be completed


# --- one request -----------------------------------------------------------------------------------


async def _serve_request(ctx: _Ctx, down: _Down, head: RequestHead) -> bool:
    """Serve one request; returns False if the (HTTP/1) connection must close after it."""
    ctx.counters.requests += 1
    headers, request_id = prepare_request(head.headers, scheme=head.scheme, keep_upgrade=head.upgrade is not None)
    authority = head.authority or ctx.facts.destination
    rec = _Rec(head, authority, request_id)
    request = Request(head.method, head.scheme, authority, head.path, tuple(headers), head.http_version,
                      request_id, ctx.facts)
    try:
        decision = ctx.handler.decide(request)
        if inspect.isawaitable(decision):
            decision = await decision
    except Exception as exc:
        log.exception("request handler failed", request_id=request_id)
        decision = LocalResponse(500, b"internal error\n", response_flags="-")
        rec.detail = f"handler_error:{type(exc).__name__}"
    try:
        if isinstance(decision, Forward):
            return await _forward(ctx, down, head, headers, decision, rec)
        return await _local(ctx, down, head, decision, rec)
    except _DownstreamGone as exc:
        rec.flags = "DC"
        rec.detail = rec.detail or str(exc)
        return False
    finally:
        _emit(ctx, rec)


async def _local(ctx: _Ctx, down: _Down, head: RequestHead, response: LocalResponse, rec: _Rec) -> bool:
    ctx.counters.local_responses += 1
    close = response.close
    if not down.request_ended:
        if head.expect_continue or isinstance(down, _H2DownStream):
            close = close or isinstance(down, _H1Down)  # the body was never asked for (or: RST after)
        else:
            drained = 0
            while not down.request_ended and drained <= _DRAIN_LIMIT:
                event = await down.next_body_event()
                if isinstance(event, Body):
                    drained += len(event.data)
                    rec.request_bytes += len(event.data)
            close = close or not down.request_ended
    rec.status = response.status
    rec.flags = response.response_flags
    rec.detail = rec.detail or "local_reply"
    await _send_local(down, response.status, response.body, response.headers, close=close)
    if isinstance(down, _H2DownStream) and not down.request_ended:
        down.owner.conn.reset(down.sid, 0)  # NO_ERROR: the response is complete, the rest of the body is not needed
    return not close


async def _send_local(down: _Down, status: int, body: bytes, headers: Headers | tuple[tuple[str, str], ...],
                      *, close: bool = False) -> None:
    await down.send_head(status, list(headers), content_length=len(body), end_stream=not body, close=close)
    if body:
        await down.send_data(body)
        await down.send_end([])


async def _forward(ctx: _Ctx, down: _Down, head: RequestHead, headers: Headers, decision: Forward,
                   rec: _Rec) -> bool:
    protocol = decision.protocol or ctx.protocol
    if head.upgrade is not None:
        protocol = HttpProtocol.HTTP1  # upgrades exist only in HTTP/1.1
    label = decision.label or str(decision.endpoint)
    rec.upstream = label
    rec.decision_flags = decision.flags
    if decision.set_headers or decision.remove_headers:
        headers = apply_edits(headers, decision.set_headers, decision.remove_headers)
    if decision.add_headers:
        headers = [*headers, *decision.add_headers]
    if decision.path is not None:
        head = dataclasses.replace(head, path=decision.path)  # the record keeps the path as received
    if decision.authority is not None:
        rec.authority = decision.authority
    if decision.response_set_headers or decision.response_add_headers or decision.response_remove_headers:
        rec.response_edits = (decision.response_set_headers, decision.response_add_headers,
                              decision.response_remove_headers)
    body_buffer: list[bytes] | None = None
    if ctx.limits.request_body_buffer and not head.end_stream:
        body_buffer = await _buffer_body(ctx, down, rec)
        if body_buffer is None:
            return False
    policy = decision.retry if head.upgrade is None else None
    keep_body = body_buffer is None and not head.end_stream and (policy is not None or bool(decision.mirrors))
    retrying = _Retrying(
        RetryState(policy, ctx.rng) if policy is not None and policy.attempts > 0 else None,
        Deadline.start(time.monotonic(), decision.timeout, policy.per_try_timeout if policy else None),
        ReplayBuffer(policy.replay_buffer if policy else REPLAY_BUFFER) if keep_body else None,
        ctx.counters,
    )
    mirrored = False
    if decision.mirrors and not keep_body:
        mirrored = True
        _spawn_mirrors(ctx, decision, protocol, head, headers, rec.authority, body_buffer or [])
    targets = (Upstream(decision.endpoint, label), *decision.alternatives)
    tried: list[Hashable] = []
    try:
        while True:
            target = next((t for t in targets if t.endpoint not in tried), targets[len(tried) % len(targets)])
            tried.append(target.endpoint)
            rec.upstream = target.label
            body = body_buffer
            if body is None and len(tried) > 1 and retrying.replay is not None:
                body = retrying.replay.chunks  # a retry: the whole body is here (wants() checked it ended)
            result = await _attempt(ctx, down, head, headers, rec, protocol, target, body, retrying,
                                    resend=len(tried) > 1)
            if result is not _RETRY:
                return bool(result)
            ctx.counters.retries += 1
            log.debug("retrying upstream request", upstream=target.label, attempt=len(tried) + 1,
                      backoff=round(retrying.delay, 4))
            if retrying.delay > 0:
                await asyncio.sleep(retrying.delay)
    finally:
        if not mirrored and decision.mirrors:
            replay = retrying.replay
            if replay is not None and replay.replayable and down.request_ended:
                _spawn_mirrors(ctx, decision, protocol, head, headers, rec.authority, replay.chunks)
            else:
                ctx.counters.mirrors_dropped += len(decision.mirrors)  # the body did not fit: no copy


class _RetryMarker:
    """Returned by an attempt that should be retried (nothing was sent downstream)."""


_RETRY = _RetryMarker()


@dataclass(slots=True)
class _Retrying:
    """One request's retry state in the engine: the pure ``RetryState``, the deadline, the body replay
    buffer, and what the last verdict said."""

    state: RetryState | None
    deadline: Deadline
    replay: ReplayBuffer | None
    counters: HttpCounters
    delay: float = 0.0
    exhausted: bool = False

    def wants(self, outcome: Outcome, down: _Down, *, request_timed_out: bool = False) -> bool:
        """Whether the attempt that ended in ``outcome`` is retried (then ``delay`` is its backoff)."""
        if self.state is None:
            return False
        replayable = down.request_ended and (self.replay is None or self.replay.replayable)
        verdict = self.state.after(outcome, body_replayable=replayable, response_started=down.response_started,
                                   request_timed_out=request_timed_out)
        if isinstance(verdict, Retry):
            left = self.deadline.remaining(time.monotonic())
            if left is None or left > verdict.delay:
                self.delay = verdict.delay
                return True
            verdict = GiveUp("request timeout before the next retry")
        if verdict.reason != "not retriable":
            self.counters.retries_exhausted += 1
            self.exhausted = verdict.reason.startswith("retries exhausted")  # Envoy's URX
            log.debug("not retrying", reason=verdict.reason)
        return False


def _note_attempt(rec: _Rec, target: Upstream, status: int, flags: str, started: float) -> None:
    rec.attempts.append(Attempt(target.label, target.endpoint, status, flags, time.monotonic() - started))


async def _attempt(ctx: _Ctx, down: _Down, head: RequestHead, headers: Headers, rec: _Rec, protocol: HttpProtocol,
                   target: Upstream, body: list[bytes] | None, retrying: _Retrying,
                   *, resend: bool) -> bool | _RetryMarker:
    """One attempt at ``target``: keep-alive, or ``_RETRY``. A reused HTTP/1 connection found closed before
    answering a body-less request is tried once more on a fresh one (not an attempt of its own)."""
    connections = 2 if protocol is HttpProtocol.HTTP1 and head.end_stream else 1
    for n in range(connections):
        started = time.monotonic()
        try:
            exchange = await ctx.upstreams.open(target.endpoint, protocol, target.label)
        except UpstreamError as exc:
            _note_attempt(rec, target, 0, exc.flag, started)
            if retrying.wants(Outcome.failure(exc.flag), down):
                return _RETRY
            ctx.counters.upstream_failures += 1
            return await _upstream_failed(down, rec, exc, "connection failure", retrying.exhausted)
        outcome = await _exchange(ctx, down, head, headers, rec, exchange, body, retrying, target, started,
                                  retry=n + 1 < connections, resend=resend)
        if outcome is not None:
            return outcome
    raise AssertionError("unreachable: the last connection never asks for a retry")


def shadow_authority(authority: str) -> str:
    """Envoy's mirror host: ``-shadow`` appended to the host, before any port (``echo:80`` -> ``echo-shadow:80``)."""
    if authority.startswith("["):
        return authority  # an IPv6 literal has no name to suffix
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"


def _spawn_mirrors(ctx: _Ctx, decision: Forward, protocol: HttpProtocol, head: RequestHead, headers: Headers,
                   authority: str, body: list[bytes]) -> None:
    for target in decision.mirrors:
        if ctx.background is None or ctx.counters.mirrors_in_flight >= _MIRROR_LIMIT:
            ctx.counters.mirrors_dropped += 1
            continue
        ctx.counters.mirrored += 1
        ctx.counters.mirrors_in_flight += 1
        ctx.background(_mirror(ctx, target, protocol, head, headers, shadow_authority(authority), list(body)))


async def _mirror(ctx: _Ctx, target: MirrorTarget, protocol: HttpProtocol, head: RequestHead, headers: Headers,
                  authority: str, body: list[bytes]) -> None:
    """Fire and forget: send the copy, read and drop the answer; failures are counted, never surfaced."""
    ok = False
    exchange: Exchange | None = None
    try:
        async with asyncio.timeout(_MIRROR_TIMEOUT):
            exchange = await ctx.upstreams.open(target.endpoint, protocol, target.label)
            length = sum(map(len, body))
            await exchange.start(head.method, head.scheme, authority, head.path, headers,
                                 content_length=length if body else head.content_length, end_stream=not body,
                                 upgrade=False)
            if body:
                for chunk in body:
                    await exchange.send_data(chunk)
                await exchange.send_end([])
            while not isinstance(await exchange.next_event(), EndOfMessage):
                pass
            ok = True
    except (UpstreamError, TimeoutError, ConnectionError, OSError) as exc:
        ctx.counters.mirror_failures += 1
        log.debug("mirror failed", upstream=target.label, error=str(exc) or type(exc).__name__)
    finally:
        ctx.counters.mirrors_in_flight -= 1
        if exchange is not None:
            exchange.finish(ok)


async def _buffer_body(ctx: _Ctx, down: _Down, rec: _Rec) -> list[bytes] | None:
    chunks: list[bytes] = []
    size = 0
    try:
        while not down.request_ended:
            event = await down.next_body_event()
            if isinstance(event, Body):
                size += len(event.data)
                if size > ctx.limits.request_body_buffer:
                    rec.status, rec.flags, rec.detail = 413, "-", "request_payload_too_large"
                    await _send_local(down, 413, b"Payload Too Large\n", _TEXT, close=True)
                    if isinstance(down, _H2DownStream):
                        down.owner.conn.reset(down.sid, 0)
                    return None
                chunks.append(event.data)
    except _DownstreamRefused as exc:
        await _refused_mid_request(ctx, down, rec, exc.refusal)
        return None
    return chunks


async def _upstream_failed(down: _Down, rec: _Rec, exc: UpstreamError, reason: str, exhausted: bool = False) -> bool:
    rec.flags = f"{exc.flag},URX" if exhausted else exc.flag
    rec.detail = exc.detail
    if down.response_started:
        with contextlib.suppress(_DownstreamGone):
            await down.flush()  # a head held for its body goes out: the client sees a truncated response
        down.abort()
        return False
    if exc.flag == "UPE":
        status, body = 502, b"upstream protocol error\n"
    elif exc.flag == "UT":
        status, body = 504, b"upstream request timeout\n"
    else:
        status = 503
        body = (_UPSTREAM_RESET + ("connection failure" if exc.flag == "UF" else reason)).encode() + b"\n"
    rec.status = status
    close = not down.request_ended
    await _send_local(down, status, body, _TEXT, close=close)
    if isinstance(down, _H2DownStream) and not down.request_ended:
        down.owner.conn.reset(down.sid, 0)
    return not close


async def _refused_mid_request(ctx: _Ctx, down: _Down, rec: _Rec, refusal: Refusal) -> None:
    ctx.counters.refused_requests += 1
    rec.flags = "DPE"
    rec.detail = refusal.reason
    log.warning("request refused", peer=ctx.peer, status=refusal.status, reason=refusal.reason,
                detail=refusal.detail)
    if not down.response_started:
        rec.status = refusal.status
        with contextlib.suppress(_DownstreamGone):
            await _send_local(down, refusal.status, f"{refusal.detail}\n".encode(), _TEXT, close=True)
    down.abort()


async def _pump(down: _Down, exchange: Exchange, rec: _Rec, replay: ReplayBuffer | None) -> Refusal | str | None:
    """Copy the request body to the upstream (and into ``replay``, for a retry or a mirror). Returns None
    when done, a Refusal or a reason string when the downstream failed (the caller aborts the exchange)."""
    try:
        while True:
            event = await down.next_body_event()
            if isinstance(event, Body):
                rec.request_bytes += len(event.data)
                if replay is not None:
                    replay.add(event.data)
                await exchange.send_data(event.data)
            else:
                await exchange.send_end(event.trailers)
                return None
    except _DownstreamRefused as exc:
        return exc.refusal
    except _DownstreamGone as exc:
        return str(exc) or "downstream closed mid-request"
    except UpstreamError:
        return None  # the upstream broke: the response side reports it


async def _exchange(ctx: _Ctx, down: _Down, head: RequestHead, headers: Headers, rec: _Rec, exchange: Exchange,
                    body: list[bytes] | None, retrying: _Retrying, target: Upstream, started: float, *, retry: bool,
                    resend: bool) -> bool | _RetryMarker | None:
    """Run one upstream exchange. Returns keep-alive, ``_RETRY`` for a new attempt, or None to ask for the
    same attempt on a fresh connection (a stale keep-alive connection)."""
    ok = False
    pump: asyncio.Task[Refusal | str | None] | None = None
    try:
        end_stream = head.end_stream
        content_length = head.content_length
        if body is not None:
            content_length, end_stream = sum(map(len, body)), False
        await exchange.start(head.method, head.scheme, rec.authority, head.path, headers,
                             content_length=content_length, end_stream=end_stream and body is None,
                             upgrade=head.upgrade is not None)
        if body is not None:
            for chunk in body:
                if not resend:
                    rec.request_bytes += len(chunk)
                await exchange.send_data(chunk)
            await exchange.send_end([])
        elif not head.end_stream:
            if head.expect_continue:
                await down.send_continue()
            pump = asyncio.get_running_loop().create_task(_pump(down, exchange, rec, retrying.replay))
        timeout, per_try = retrying.deadline.attempt_timeout(time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                keep = await _relay_response(ctx, down, head, rec, exchange, pump, retrying)
        except TimeoutError:
            _note_attempt(rec, target, 0, "UT", started)
            if not down.response_started and retrying.wants(Outcome.failure("UT"), down,
                                                            request_timed_out=not per_try):
                return _RETRY
            ctx.counters.upstream_failures += 1
            return await _upstream_failed(down, rec, UpstreamError("UT", "upstream request timeout"), "timeout",
                                          retrying.exhausted)
        if keep is _RETRY:
            _note_attempt(rec, target, rec.status, "-", started)
            return _RETRY
        _note_attempt(rec, target, rec.status, "-" if keep is not None else rec.flags, started)
        if keep is None:  # the downstream failed while its body was being pumped
            return False
        ok = True
        return bool(keep) and down.request_ended
    except UpstreamError as exc:
        if retry and not exchange.response_started and exc.flag == "UC" and not down.response_started:
            log.debug("retrying on a new upstream connection", upstream=rec.upstream, detail=exc.detail)
            return None
        _note_attempt(rec, target, 0, exc.flag, started)
        if not down.response_started and retrying.wants(Outcome.failure(exc.flag, refused=_refused(exc)), down):
            return _RETRY
        if exc.flag == "UPE":
            ctx.counters.upstream_protocol_errors += 1
        else:
            ctx.counters.upstream_failures += 1
        return await _upstream_failed(down, rec, exc, "connection termination", retrying.exhausted)
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        exchange.finish(ok and down.request_ended)


async def _relay_response(ctx: _Ctx, down: _Down, head: RequestHead, rec: _Rec, exchange: Exchange,
                          pump: asyncio.Task[Refusal | str | None] | None,
                          retrying: _Retrying) -> bool | _RetryMarker | None:
    while True:
        if pump is not None and not pump.done():
            getter = asyncio.ensure_future(exchange.next_event())
            await asyncio.wait((getter, pump), return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and pump.result() is not None:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                    await getter
                failure = pump.result()
                if isinstance(failure, Refusal):
                    await _refused_mid_request(ctx, down, rec, failure)
                else:
                    rec.flags, rec.detail = "DC", str(failure)
                    down.abort()
                return None
            event = await getter
        else:
            event = await exchange.next_event()
        if isinstance(event, Informational):
            continue  # 1xx are hop-by-hop: we answered 100-continue ourselves
        if isinstance(event, ResponseHead):
            rec.status = event.status
            if retrying.state is not None and retrying.wants(
                    Outcome.response(event.status, _grpc_code(event.headers)), down):
                return _RETRY  # nothing went downstream; the exchange is dropped, not reused
            if event.status == 101 and head.upgrade is not None and isinstance(down, _H1Down):
                await _tunnel(ctx, down, exchange, event)
                return False
            response_headers = prepare_response(event.headers)
            if rec.response_edits is not None:
                set_, add, remove = rec.response_edits
                response_headers = [*apply_edits(response_headers, set_, remove), *add]
            if event.end_stream:
                rec.grpc_status = _grpc_status(event.headers)
            close = head.upgrade is not None  # an upgrade the upstream declined: the client's bytes are opaque now
            await down.send_head(event.status, response_headers, content_length=event.content_length,
                                 end_stream=event.end_stream, close=close,
                                 more=not event.end_stream and not close and pump is None and exchange.ready())
            if close:
                return False
        elif isinstance(event, Body):
            rec.response_bytes += len(event.data)
            await down.send_data(event.data)
        elif isinstance(event, EndOfMessage):
            if event.trailers:
                rec.grpc_status = _grpc_status(event.trailers) or rec.grpc_status
            await down.send_end(prepare_response(event.trailers) if event.trailers else [])
            if pump is not None and not pump.done():
                # The upstream answered before reading the whole body: this connection cannot be reused.
                down.abort()
                return False
            return True


async def _tunnel(ctx: _Ctx, down: _H1Down, exchange: Exchange, response: ResponseHead) -> None:
    """After a 101: send it on and copy opaque bytes both ways until both directions ended."""
    ctx.counters.upgrades += 1
    await down.send_head(101, prepare_response(response.headers, keep_upgrade=True), content_length=None,
                         end_stream=True)
    down.request_ended = True

    async def downstream_to_upstream() -> None:
        pending = down.pending
        while True:
            if pending:
                event = pending.popleft()
                data = event.data if isinstance(event, Upgraded) else b""
                if not data:
                    continue
            else:
                try:
                    data = await down.stream.receive_some(ctx.limits.read_size)
                except (ConnectionError, OSError):
                    data = b""
            if not data:
                await exchange.send_raw_eof()
                return
            await exchange.send_raw(data)

    async def upstream_to_downstream() -> None:
        while True:
            data = await exchange.receive_raw()
            if not data:
                with contextlib.suppress(ConnectionError, OSError):
                    await down.stream.send_eof()
                return
            await down.stream.send_all(data)

    with contextlib.suppress(ConnectionError, OSError):
        async with asyncio.TaskGroup() as group:
            group.create_task(downstream_to_upstream())
            group.create_task(upstream_to_downstream())


# --- connections -----------------------------------------------------------------------------------


async def serve_http(
    downstream: ByteStream,
    *,
    first_bytes: bytes,
    handler: RequestHandler,
    upstreams: Upstreams,
    limits: HttpLimits = DEFAULT_LIMITS,
    connection: ConnectionFacts | None = None,
    on_complete: OnComplete | None = None,
    counters: HttpCounters | None = None,
    protocol: Detected | None = None,
    background: Spawn | None = None,
    rng: random.Random | None = None,
) -> None:
    """Serve HTTP on ``downstream`` until it closes (see the module docstring).

    ``first_bytes`` are what was already read from it (``sniff``); ``protocol`` is the detected protocol
    (detected from ``first_bytes`` when None; it must then be decisive). Closes ``downstream`` at the end.
    ``background`` owns mirror copies (None: mirrors are dropped and counted); ``rng`` jitters retry
    backoff (injectable for tests). Never raises for anything the peer or an upstream did.
    """
    facts = connection or ConnectionFacts()
    counters = counters if counters is not None else HttpCounters()
    if protocol is None:
        protocol = detect(first_bytes, limits.max_request_line)
    if protocol not in (Detected.HTTP1, Detected.HTTP2):
        raise ValueError(f"serve_http needs HTTP/1 or HTTP/2 first bytes, detected {protocol.value}")
    counters.connections += 1
    ctx = _Ctx(handler, upstreams, limits, facts, on_complete, counters,
               HttpProtocol.HTTP2 if protocol is Detected.HTTP2 else HttpProtocol.HTTP1,
               f"{facts.source_ip}:{facts.source_port}", background, rng or random.Random())
    try:
        if protocol is Detected.HTTP2:
            await _H2DownConn(ctx, downstream).run(first_bytes)
        else:
            await _serve_h1(ctx, downstream, first_bytes)
    except (ConnectionError, OSError) as exc:
        log.debug("downstream connection broke", peer=ctx.peer, error=repr(exc))
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await downstream.aclose()


async def _serve_h1(ctx: _Ctx, stream: ByteStream, first_bytes: bytes) -> None:
    limits = ctx.limits
    server = Http1Server(limits)
    down = _H1Down(stream, server, limits)
    if first_bytes:
        down.pending.extend(server.receive_data(first_bytes))
    while True:
        try:
            event = await down.next_event(limits.header_timeout if server.in_head else limits.idle_timeout)
        except TimeoutError:
            if server.in_head:
                await _refuse(ctx, down, Refusal(408, "http1.header_timeout",
                                                 f"request head not received within {limits.header_timeout:g}s"))
            return
        if isinstance(event, RequestHead):
            down.reset(event)
            keep = await _serve_request(ctx, down, event)
            if not keep or not server.keep_alive:
                return
        elif isinstance(event, Refusal):
            await _refuse(ctx, down, event)
            return
        elif isinstance(event, ConnectionEnded):
            return
        # Body/EndOfMessage of a request already answered cannot be here: _serve_request consumed them.


async def _refuse(ctx: _Ctx, down: _Down, refusal: Refusal) -> None:
    """A request refused before it had a head we could serve: answer, count, log once, record."""
    ctx.counters.refused_requests += 1
    log.warning("request refused", peer=ctx.peer, status=refusal.status, reason=refusal.reason,
                detail=refusal.detail)
    head = RequestHead(refusal.stream_id, "-", "http", "", "-", [], "2" if ctx.protocol is HttpProtocol.HTTP2
                       else "1.1", end_stream=True)
    rec = _Rec(head, ctx.facts.destination, status=refusal.status, flags="DPE", detail=refusal.reason)
    with contextlib.suppress(_DownstreamGone):
        await _send_local(down, refusal.status, f"{refusal.detail}\n".encode(), _TEXT, close=True)
    _emit(ctx, rec)


class _H2DownConn:
    """One downstream h2c connection: a reader loop dispatching to one task per stream."""

    def __init__(self, ctx: _Ctx, stream: ByteStream) -> None:
        self.ctx = ctx
        self.stream = stream
        self.conn = H2Server(ctx.limits, now=time.monotonic())
        self.streams: dict[int, _H2DownStream] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        async with self._lock:
            data = self.conn.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (ConnectionError, OSError) as exc:
                    raise _DownstreamGone(f"downstream connection broke: {exc!r}") from exc

    async def run(self, first_bytes: bytes) -> None:
        limits = self.ctx.limits
        try:
            async with asyncio.TaskGroup() as group:
                events = self.conn.receive_data(first_bytes, time.monotonic())
                while True:
                    for event in events:
                        await self._dispatch(group, event)
                    await self.flush()
                    if self.conn.closed:
                        break
                    timeout = None if self.streams else limits.idle_timeout
                    try:
                        async with asyncio.timeout(timeout):
                            data = await self.stream.receive_some(limits.read_size)
                    except TimeoutError:
                        self.conn.close(0, "idle timeout")
                        await self.flush()
                        break
                    events = self.conn.receive_data(data, time.monotonic())
                for task in self.tasks.values():
                    task.cancel()
        except _DownstreamGone:
            pass

    async def _dispatch(self, group: asyncio.TaskGroup, event: Event) -> None:
        if isinstance(event, RequestHead):
            state = _H2DownStream(self, event.stream_id, event)
            self.streams[event.stream_id] = state
            self.tasks[event.stream_id] = group.create_task(self._serve_stream(state, event))
        elif isinstance(event, Body | EndOfMessage):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.queue.put_nowait(event)
            elif isinstance(event, Body):
                self.conn.acknowledge(event.stream_id, len(event.data))
        elif isinstance(event, StreamReset):
            state = self.streams.get(event.stream_id)
            task = self.tasks.get(event.stream_id)
            if state is not None:
                state.queue.put_nowait(event)
            if task is not None:
                task.cancel("client reset the stream")
        elif isinstance(event, WindowOpened):
            targets = self.streams.values() if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for state in targets:
                if state is not None and state.window is not None and not state.window.done():
                    state.window.set_result(None)
        elif isinstance(event, Refusal):
            head = RequestHead(event.stream_id, "-", "http", "", "-", [], "2", end_stream=True)
            state = _H2DownStream(self, event.stream_id, head)
            await _refuse(self.ctx, state, event)
            self.conn.reset(event.stream_id, 0)
        elif isinstance(event, ConnectionEnded):
            counters = self.ctx.counters
            if event.error_code == ENHANCE_YOUR_CALM:
                counters.abusive_connections += 1
                log.warning("HTTP/2 connection ended for abuse", peer=self.ctx.peer, reason=event.reason)
            elif event.error_code and "peer sent GOAWAY" not in event.reason:
                counters.protocol_errors += 1
                log.warning("HTTP/2 connection ended by a protocol error", peer=self.ctx.peer, reason=event.reason)
            for state in self.streams.values():
                state.queue.put_nowait(event)

    async def _serve_stream(self, state: _H2DownStream, head: RequestHead) -> None:
        sid = head.stream_id
        try:
            await _serve_request(self.ctx, state, head)
            if not state.ended_response and not self.conn.closed:
                self.conn.reset(sid, 0x2)
            await self.flush()
        except asyncio.CancelledError:
            self.conn.reset(sid, 0x8)  # CANCEL (a no-op if the client reset it)
        except _DownstreamGone:
            pass
        except Exception:
            log.exception("HTTP/2 stream failed", peer=self.ctx.peer, stream_id=sid)
            self.conn.reset(sid, 0x2)
        finally:
            self.streams.pop(sid, None)
            self.tasks.pop(sid, None)
            self.conn.stream_done(sid)
