"""SecretManager: shared first fetch, renewal at half-life, capped backoff, serving the old certificate,
forget/track, priorities, admin snapshot and shutdown. Time is a FakeClock: no real sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from meshcore.aio.ca_client import CaRefused, CaUnavailable
from meshcore.aio.secrets import (
    CertificateRejected,
    CertificateUnavailable,
    CertState,
    IdentityForgotten,
    SecretManager,
    SecretManagerClosed,
)
from meshcore.identity import SpiffeId
from meshcore.testing.clock import FakeClock
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls.certs import CertBundle

A = SpiffeId("cluster.local", "default", "alpha")
B = SpiffeId("cluster.local", "default", "beta")
C = SpiffeId("cluster.local", "default", "gamma")
TIMEOUT = 5.0


class GatedProvider:
    """A CertificateProvider in front of a FakeCa whose fetches wait until the test opens ``gate``."""

    def __init__(self, ca: FakeCa) -> None:
        self.ca = ca
        self.gate = asyncio.Event()
        self.calls: list[SpiffeId] = []
        self.cancelled = 0
        self._arrived = asyncio.Event()

    async def fetch(self, identity: SpiffeId) -> CertBundle:
        self.calls.append(identity)
        self._arrived.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await self.ca.fetch(identity)

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.calls) < n:
                self._arrived.clear()
                await self._arrived.wait()


class FixedProvider:
    """Returns whatever ``make(identity)`` builds (certificates the manager must refuse)."""

    def __init__(self, make: Callable[[SpiffeId], CertBundle]) -> None:
        self._make = make

    async def fetch(self, identity: SpiffeId) -> CertBundle:
        return self._make(identity)


async def wait_until(mgr: SecretManager, predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` to hold, re-checking on every state change of the manager."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            version = mgr.version
            if predicate():
                return
            await mgr.changed(version)


async def poll_until(predicate: Callable[[], bool]) -> None:
    """For conditions with no event: yield to the loop until ``predicate`` holds (bounded)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(clock: FakeClock) -> FakeCa:
    return FakeCa(clock=clock.now)


@pytest.fixture
async def mgr(ca: FakeCa, clock: FakeClock) -> AsyncIterator[SecretManager]:
    manager = SecretManager(ca, clock=clock.now, sleep=clock.sleep, jitter=0)
    try:
        yield manager
    finally:
        await manager.close()


# --- fetching and caching --------------------------------------------------------------------------


async def test_first_fetch_asks_the_ca_once_and_later_calls_use_the_cache(
    mgr: SecretManager, ca: FakeCa
) -> None:
    first = await mgr.fetch_certificate(A)
    assert first.identity == A
    assert await mgr.fetch_certificate(A) is first
    assert mgr.find_certificate(A) is first
    assert ca.fetches[A] == 1


async def test_concurrent_first_fetches_share_one_ca_request(ca: FakeCa, clock: FakeClock) -> None:
    provider = GatedProvider(ca)
    mgr = SecretManager(provider, clock=clock.now, sleep=clock.sleep)
    try:
        callers = [asyncio.create_task(mgr.fetch_certificate(A)) for _ in range(10)]
        await provider.wait_calls(1)
        assert mgr.snapshot()[0].state is CertState.INITIALIZING
        assert mgr.find_certificate(A) is None
        provider.gate.set()
        bundles = await asyncio.gather(*callers)
        assert all(b is bundles[0] for b in bundles)
        assert provider.calls == [A]
    finally:
        await mgr.close()


async def test_prefetch_holds_the_certificate_before_first_use(mgr: SecretManager, ca: FakeCa) -> None:
    mgr.prefetch(A)
    mgr.prefetch(A)
    await wait_until(mgr, lambda: mgr.find_certificate(A) is not None)
    assert await mgr.fetch_certificate(A) is mgr.find_certificate(A)
    assert ca.fetches[A] == 1


# --- renewal ---------------------------------------------------------------------------------------


async def test_certificate_is_renewed_at_half_life(mgr: SecretManager, ca: FakeCa, clock: FakeClock) -> None:
    first = await mgr.fetch_certificate(A)
    await clock.wait_for_sleepers(1)
    assert clock.next_deadline() == first.refresh_at == first.not_before + timedelta(hours=12)
    clock.advance(first.refresh_at - clock.now() - timedelta(seconds=1))
    assert ca.fetches[A] == 1 and clock.sleepers == 1  # one second early: nothing is due
    clock.advance(1)
    await wait_until(mgr, lambda: ca.fetches[A] == 2 and mgr.find_certificate(A) is not first)
    second = mgr.find_certificate(A)
    assert second is not None and second.serial != first.serial
    assert second.not_before == first.refresh_at


async def test_a_certificate_that_expired_while_waiting_is_renewed_on_demand(
    mgr: SecretManager, ca: FakeCa, clock: FakeClock
) -> None:
    first = await mgr.fetch_certificate(A)
    await clock.wait_for_sleepers(1)
    clock.jump(timedelta(hours=25))  # wall clock stepped; the refresh timer did not fire
    assert mgr.find_certificate(A) is None
    second = await asyncio.wait_for(mgr.fetch_certificate(A), TIMEOUT)
    assert second.serial != first.serial and second.not_before == clock.now()
    assert ca.fetches[A] == 2


async def test_a_certificate_due_for_renewal_at_once_is_renewed_on_the_backoff_schedule(
    clock: FakeClock,
) -> None:
    ca = FakeCa(clock=clock.now, ttl=timedelta(seconds=1))  # half-life 0.5 s: below the 1 s floor
    mgr = SecretManager(ca, clock=clock.now, sleep=clock.sleep, jitter=0)
    try:
        await mgr.fetch_certificate(A)
        delays = []
        for _ in range(3):
            await clock.wait_for_sleepers(1)
            delays.append(clock.advance_to_next().total_seconds())
        await clock.wait_for_sleepers(1)
        assert delays == [1.0, 2.0, 4.0]
        assert ca.fetches[A] == 4
    finally:
        await mgr.close()


# --- failures and backoff --------------------------------------------------------------------------


async def test_retries_back_off_exponentially_capped_at_150_seconds_then_reset(
    mgr: SecretManager, ca: FakeCa, clock: FakeClock
) -> None:
    ca.fail_next(CaUnavailable("CA at istiod:15012 unavailable"), times=11)
    mgr.prefetch(A)
    delays = []
    for _ in range(11):
        await clock.wait_for_sleepers(1)
        if not delays:
            snap = mgr.snapshot()[0]
            assert snap.state is CertState.UNAVAILABLE and snap.failures == 1
            assert snap.state_text == "Unavailable: CA at istiod:15012 unavailable"
            assert snap.next_attempt_at == clock.now() + timedelta(seconds=1)
        delays.append(clock.advance_to_next().total_seconds())
    await wait_until(mgr, lambda: mgr.find_certificate(A) is not None)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 150, 150, 150]
    assert ca.fetches[A] == 12
    snap = mgr.snapshot()[0]
    assert (snap.state, snap.failures, snap.error, snap.next_attempt_at) == (
        CertState.AVAILABLE,
        0,
        None,
        None,
    )

    # A success resets the backoff: a failed renewal is retried after 1 s again.
    ca.fail_next(CaUnavailable("down again"))
    await clock.wait_for_sleepers(1)
    clock.advance_to_next()
    await clock.wait_for_sleepers(1)
    assert clock.advance_to_next() == timedelta(seconds=1)


async def test_jittered_retries_stay_within_the_cap(ca: FakeCa, clock: FakeClock) -> None:
    mgr = SecretManager(ca, clock=clock.now, sleep=clock.sleep, jitter=0.2, rng=random.Random(7))
    try:
        ca.fail_next(CaUnavailable("down"), times=12)
        mgr.prefetch(A)
        for attempt in range(12):
            await clock.wait_for_sleepers(1)
            base = min(150.0, 2.0**attempt)
            assert 0.8 * base <= clock.advance_to_next().total_seconds() <= base
    finally:
        await mgr.close()


async def test_first_fetch_failure_fails_fast_then_a_retry_recovers(
    mgr: SecretManager, ca: FakeCa, clock: FakeClock
) -> None:
    refusal = CaRefused(grpc.StatusCode.UNAUTHENTICATED, "node-1 does not run a pod with identity alpha")
    ca.fail_next(refusal)
    with pytest.raises(CertificateUnavailable) as info:
        await mgr.fetch_certificate(A)
    assert info.value.cause is refusal
    assert "does not run a pod with identity alpha" in str(info.value)
    with pytest.raises(CertificateUnavailable):  # still backing off: fail fast, no new CA request
        await mgr.fetch_certificate(A)
    assert ca.fetches[A] == 1
    await clock.wait_for_sleepers(1)
    clock.advance_to_next()
    await wait_until(mgr, lambda: mgr.find_certificate(A) is not None)
    assert (await mgr.fetch_certificate(A)).identity == A


async def test_failed_renewals_keep_serving_the_old_certificate_until_it_expires(clock: FakeClock) -> None:
    ca = FakeCa(clock=clock.now, ttl=timedelta(minutes=10))
    mgr = SecretManager(ca, clock=clock.now, sleep=clock.sleep, jitter=0)
    try:
        old = await mgr.fetch_certificate(A)
        ca.fail_next(CaUnavailable("CA unreachable"), times=100)
        for _ in range(20):  # bounded: renewal at 5 min, retries 1..150 s pass the 10 min expiry in 9
            await clock.wait_for_sleepers(1)
            if clock.now() >= old.not_after:
                break
            assert await mgr.fetch_certificate(A) is old
            if ca.fetches[A] > 1:
                snap = mgr.snapshot()[0]
                assert snap.state is CertState.AVAILABLE and snap.error == "CA unreachable"
            clock.advance_to_next()
        assert clock.now() >= old.not_after
        assert mgr.find_certificate(A) is None
        with pytest.raises(CertificateUnavailable) as info:
            await mgr.fetch_certificate(A)
        assert isinstance(info.value.cause, CaUnavailable)
        snap = mgr.snapshot()[0]
        assert snap.state is CertState.UNAVAILABLE and snap.serial == old.serial
    finally:
        await mgr.close()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda ca, clock: lambda _: ca.issue(B),
            "issued a certificate for spiffe://cluster.local/ns/default/sa/beta",
        ),
        (
            lambda ca, clock: (
                lambda i: ca.issue(i, timedelta(hours=1), not_before=clock.now() - timedelta(hours=2))
            ),
            "that expired at",
        ),
    ],
    ids=["a certificate for another identity is refused", "an already expired certificate is refused"],
)
async def test_unusable_certificates_from_the_ca_are_refused(
    ca: FakeCa, clock: FakeClock, make: Callable[..., Callable[[SpiffeId], CertBundle]], fragment: str
) -> None:
    mgr = SecretManager(FixedProvider(make(ca, clock)), clock=clock.now, sleep=clock.sleep)
    try:
        with pytest.raises(CertificateUnavailable) as info:
            await mgr.fetch_certificate(A)
        assert isinstance(info.value.cause, CertificateRejected)
        assert fragment in str(info.value)
        assert mgr.find_certificate(A) is None
    finally:
        await mgr.close()


# --- forget, track, priorities ---------------------------------------------------------------------


async def test_forget_stops_renewal_while_other_identities_renew(
    mgr: SecretManager, ca: FakeCa, clock: FakeClock
) -> None:
    await mgr.fetch_certificate(A)
    await mgr.fetch_certificate(B)
    await clock.wait_for_sleepers(2)
    assert mgr.forget(A)
    assert not mgr.forget(A)
    clock.advance(timedelta(hours=12))
    await wait_until(mgr, lambda: ca.fetches[B] == 2)
    await clock.wait_for_sleepers(1)
    assert ca.fetches[A] == 1 and clock.sleepers == 1
    assert mgr.find_certificate(A) is None
    assert [s.identity for s in mgr.snapshot()] == [B]


async def test_a_caller_waiting_for_a_forgotten_identity_is_told_so(ca: FakeCa, clock: FakeClock) -> None:
    provider = GatedProvider(ca)
    mgr = SecretManager(provider, clock=clock.now, sleep=clock.sleep)
    try:
        caller = asyncio.create_task(mgr.fetch_certificate(A))
        await provider.wait_calls(1)
        mgr.forget(A)
        with pytest.raises(IdentityForgotten, match="last local workload left"):
            await caller
        await poll_until(lambda: provider.cancelled == 1)  # the CA request itself was cancelled
    finally:
        await mgr.close()


async def test_track_prefetches_new_identities_and_forgets_gone_ones(mgr: SecretManager, ca: FakeCa) -> None:
    assert mgr.track([A, B]) == ({A, B}, set())
    await wait_until(mgr, lambda: all(mgr.find_certificate(i) for i in (A, B)))
    assert mgr.track({B, C}) == ({C}, {A})
    await wait_until(mgr, lambda: mgr.find_certificate(C) is not None)
    assert mgr.identities == {B, C}
    assert mgr.find_certificate(A) is None
    assert dict(ca.fetches) == {A: 1, B: 1, C: 1}


async def test_connections_waiting_for_a_certificate_go_before_warmup(ca: FakeCa, clock: FakeClock) -> None:
    provider = GatedProvider(ca)
    mgr = SecretManager(provider, clock=clock.now, sleep=clock.sleep, max_concurrent_fetches=1)
    try:
        mgr.prefetch(A)
        await provider.wait_calls(1)  # A holds the only CA slot
        mgr.prefetch(B)
        mgr.prefetch(C)
        caller = asyncio.create_task(mgr.fetch_certificate(C))  # a connection needs C: REALTIME now
        # The two warm-up workers queue, then the caller raises C's priority (tasks start in order).
        await poll_until(lambda: mgr.queued_fetches == 2)
        provider.gate.set()
        await caller
        await wait_until(mgr, lambda: mgr.find_certificate(B) is not None)
        assert provider.calls == [A, C, B]
    finally:
        await mgr.close()


# --- admin view and shutdown -----------------------------------------------------------------------


async def test_snapshot_reports_public_material_only(mgr: SecretManager) -> None:
    bundle = await mgr.fetch_certificate(A)
    (snap,) = mgr.snapshot()
    assert snap.state is CertState.AVAILABLE and snap.state_text == "Available"
    assert (snap.serial, snap.not_before, snap.not_after) == (
        bundle.serial,
        bundle.not_before,
        bundle.not_after,
    )
    assert snap.refresh_at == bundle.refresh_at
    assert snap.chain_pem == bundle.chain_pem and snap.roots_pem == bundle.roots_pem
    assert "PRIVATE KEY" not in repr(snap)


async def test_close_cancels_everything_and_refuses_new_work(ca: FakeCa, clock: FakeClock) -> None:
    provider = GatedProvider(ca)
    mgr = SecretManager(provider, clock=clock.now, sleep=clock.sleep)
    mgr.prefetch(B)
    caller = asyncio.create_task(mgr.fetch_certificate(A))
    await provider.wait_calls(2)
    await mgr.close()
    with pytest.raises(SecretManagerClosed):
        await caller
    assert provider.cancelled == 2
    assert mgr.snapshot() == [] and clock.sleepers == 0
    with pytest.raises(SecretManagerClosed):
        await mgr.fetch_certificate(A)
    with pytest.raises(SecretManagerClosed):
        mgr.prefetch(A)
    await mgr.close()  # idempotent


def test_renewal_is_planned_from_arrival_when_the_ca_backdated_the_certificate():
    from types import SimpleNamespace

    from meshcore.aio.secrets import planned_refresh

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    # A 30 s certificate whose not_before the CA backdated by a minute for clock skew.
    short = SimpleNamespace(not_before=now - timedelta(seconds=60), not_after=now + timedelta(seconds=30))
    assert planned_refresh(short, now) == now + timedelta(seconds=15)  # not "due 15 s ago"
    # An ordinary certificate received at its start: half-life, as before.
    day = SimpleNamespace(not_before=now, not_after=now + timedelta(hours=24))
    assert planned_refresh(day, now) == now + timedelta(hours=12)
