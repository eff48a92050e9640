"""Retry state machine: conditions, attempt counting, backoff bounds, the replay buffer, timeouts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.resilience.retry import (
    GiveUp,
    Outcome,
    ReplayBuffer,
    Retry,
    RetryPolicy,
    RetryState,
    is_retriable,
    parse_retry_on,
)
from waypoint.resilience.timeouts import Deadline

S = Outcome.response
F = Outcome.failure


@pytest.mark.parametrize(("retry_on", "codes", "outcome", "expected"), [
    pytest.param({"5xx"}, set(), S(500), True, id="5xx retries a 500"),
    pytest.param({"5xx"}, set(), S(404), False, id="5xx does not retry a 404"),
    pytest.param({"5xx"}, set(), F("UC"), True, id="5xx retries a reset before any response"),
    pytest.param({"5xx"}, set(), F("UT"), True, id="5xx retries a per-try timeout"),
    pytest.param({"gateway-error"}, set(), S(503), True, id="gateway-error retries a 503"),
    pytest.param({"gateway-error"}, set(), S(500), False, id="gateway-error does not retry a 500"),
    pytest.param({"gateway-error"}, set(), F("UPE"), True, id="gateway-error retries a protocol error (502)"),
    pytest.param({"connect-failure"}, set(), F("UF"), True, id="connect-failure retries a failed connect"),
    pytest.param({"connect-failure"}, set(), F("UC"), False, id="connect-failure does not retry a reset"),
    pytest.param({"connect-failure"}, set(), S(503), False, id="connect-failure does not retry a 503 response"),
    pytest.param({"reset"}, set(), F("UC"), True, id="reset retries a reset"),
    pytest.param({"reset"}, set(), S(503), False, id="reset does not retry a 503 response"),
    pytest.param({"retriable-status-codes"}, {409}, S(409), True, id="a listed status code is retried"),
    pytest.param({"retriable-status-codes"}, {409}, S(500), False, id="an unlisted status code is not retried"),
    pytest.param(set(), set(), S(503), False, id="no condition retries nothing"),
    pytest.param({"retriable-4xx"}, set(), S(409), True, id="retriable-4xx retries a 409"),
    pytest.param({"retriable-4xx"}, set(), S(404), False, id="retriable-4xx does not retry a 404"),
    pytest.param({"refused-stream"}, set(), Outcome.failure("UC", refused=True), True,
                 id="refused-stream retries a stream the upstream refused"),
    pytest.param({"refused-stream"}, set(), F("UC"), False, id="refused-stream does not retry another reset"),
    pytest.param({"unavailable"}, set(), S(200, 14), True, id="unavailable retries grpc-status 14"),
    pytest.param({"unavailable"}, set(), S(200, 13), False, id="unavailable does not retry grpc-status 13"),
    pytest.param({"cancelled", "internal"}, set(), S(200, 13), True, id="internal retries grpc-status 13"),
])
def test_retry_conditions(retry_on, codes, outcome, expected):
    policy = RetryPolicy(2, frozenset(retry_on), frozenset(codes))
    assert is_retriable(policy, outcome) is expected


@pytest.mark.parametrize(("text", "conditions", "codes"), [
    pytest.param("5xx,reset", {"5xx", "reset"}, set(), id="named conditions are read"),
    pytest.param("gateway-error, 409", {"gateway-error", "retriable-status-codes"}, {409},
                 id="a bare status code implies retriable-status-codes"),
    pytest.param("", set(), set(), id="empty text retries nothing"),
])
def test_retry_on_text_is_read(text, conditions, codes):
    assert parse_retry_on(text) == (frozenset(conditions), frozenset(codes))


def test_an_unknown_retry_on_condition_is_refused_with_its_name():
    with pytest.raises(ValueError, match="unsupported condition.*retriable-headers"):
        parse_retry_on("5xx,retriable-headers")
    with pytest.raises(ValueError, match="unsupported condition.*bogus"):
        RetryPolicy(1, frozenset({"bogus"}))


def test_attempts_counts_retries_after_the_first_try():
    state = RetryState(RetryPolicy(2), random.Random(1))
    verdicts = [state.after(S(503)) for _ in range(3)]
    assert [type(v) for v in verdicts] == [Retry, Retry, GiveUp]
    assert state.tries == 3
    assert "exhausted" in verdicts[-1].reason


@pytest.mark.parametrize(("kwargs", "reason"), [
    pytest.param({"body_replayable": False}, "replay buffer", id="a body over the replay buffer is never resent"),
    pytest.param({"response_started": True}, "response already started",
                 id="a response already sent downstream is never retried"),
    pytest.param({"request_timed_out": True}, "request timeout", id="the request timeout is final"),
])
def test_a_retriable_outcome_is_final_when(kwargs, reason):
    state = RetryState(RetryPolicy(3), random.Random(1))
    verdict = state.after(S(503), **kwargs)
    assert isinstance(verdict, GiveUp) and reason in verdict.reason


@given(seed=st.integers(0, 2**32), base=st.floats(0.001, 1.0), retries=st.integers(1, 12))
def test_backoff_is_jittered_within_the_exponential_ceiling_and_the_maximum(seed, base, retries):
    policy = RetryPolicy(retries, backoff_base=base, backoff_max=base * 4)
    state = RetryState(policy, random.Random(seed))
    for n in range(1, retries + 1):
        verdict = state.after(S(500))
        assert isinstance(verdict, Retry)
        assert 0.0 <= verdict.delay <= min(base * 2 ** (n - 1), base * 4) + 1e-12


def test_backoff_is_reproducible_with_a_fixed_seed():
    a = RetryState(RetryPolicy(3), random.Random(7))
    b = RetryState(RetryPolicy(3), random.Random(7))
    assert [a.after(S(500)) for _ in range(3)] == [b.after(S(500)) for _ in range(3)]


@pytest.mark.parametrize(("chunks", "replayable"), [
    pytest.param([b"a" * 1024] * 64, True, id="exactly the limit is kept"),
    pytest.param([b"a" * 1024] * 64 + [b"b"], False, id="one byte past the limit is not replayable"),
    pytest.param([b"a" * 70_000, b"tiny"], False, id="once over, later chunks do not make it replayable"),
])
def test_the_replay_buffer_is_bounded(chunks, replayable):
    buf = ReplayBuffer(64 * 1024)
    for c in chunks:
        buf.add(c)
    assert buf.replayable is replayable
    assert (b"".join(buf.chunks) == b"".join(chunks)) if replayable else buf.chunks == []


@pytest.mark.parametrize(("request_timeout", "per_try", "now", "expected"), [
    pytest.param(None, None, 0.0, (None, False), id="no timeouts: none"),
    pytest.param(10.0, None, 0.0, (10.0, False), id="only a request timeout: the whole of it, final"),
    pytest.param(None, 2.0, 5.0, (2.0, True), id="only a per-try timeout: that, retriable"),
    pytest.param(10.0, 2.0, 1.0, (2.0, True), id="a per-try timeout shorter than what is left wins"),
    pytest.param(10.0, 2.0, 9.0, (1.0, False), id="what is left of the request wins when shorter"),
    pytest.param(10.0, 2.0, 12.0, (0.0, False), id="past the request deadline nothing is left"),
])
def test_attempt_timeouts(request_timeout, per_try, now, expected):
    assert Deadline.start(0.0, request_timeout, per_try).attempt_timeout(now) == expected


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(-1)
    with pytest.raises(ValueError, match="per-try"):
        RetryPolicy(1, per_try_timeout=0)
    with pytest.raises(ValueError, match="request timeout"):
        Deadline.start(0.0, -1.0, None)
