"""SecretManager: the certificates of every local workload identity, fetched, cached and kept fresh.

Theory of operation (ztunnel ``src/identity/manager.rs``; reference §5 "TTL and rotation"):
- One worker task per identity owns all CA traffic for it: fetch, then sleep for half of the bundle's
  remaining life (``planned_refresh``: from ``max(not_before, received)``, so a CA that backdates
  ``not_before`` cannot make a short certificate due on arrival), then fetch again. Callers never talk to
  the CA themselves, so any number of concurrent ``fetch_certificate`` calls share the one request in flight.
- A failed fetch is retried after a per-identity capped exponential backoff (1 s doubling to 150 s,
  jittered). While it fails, the previous certificate is served until it expires; with none valid,
  callers fail fast with ``CertificateUnavailable`` instead of queueing behind the backoff.
- CA requests run at most ``max_concurrent_fetches`` at a time, by priority: a connection waiting for a
  certificate (REALTIME) before warm-up of a new workload (WARMUP) before renewals (BACKGROUND).
- ``forget`` (the identity's last local workload left) and ``close`` cancel the worker; every task is in
  ``self._tasks`` and ``close()`` awaits them all.
Time comes from ``clock`` (aware UTC) and ``sleep`` so tests drive it with ``meshcore.testing.clock``.
Private keys stay in memory inside ``CertBundle``s; ``snapshot()`` exposes only public material.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from meshcore.aio.ca_client import CertificateProvider
from meshcore.identity import SpiffeId
from meshcore.tls.certs import CertBundle
from meshcore.xds.backoff import Backoff

log = structlog.get_logger("meshcore.secrets")

RETRY_INITIAL = 1.0  # seconds before the first retry
RETRY_MAX = 150.0  # ztunnel's cap on the per-identity backoff
MAX_CONCURRENT_FETCHES = 8
# A certificate due for renewal sooner than this (CA clock skew, tiny TTL) is renewed on the backoff
# schedule instead, so a misbehaving CA is not asked again in a tight loop.
MIN_REFRESH_DELAY = 1.0


def planned_refresh(bundle: CertBundle, now: datetime) -> datetime:
    """When to renew ``bundle``, received at ``now``: half-way through the validity that is left from
    ``max(not_before, now)``. A CA backdates ``not_before`` for clock skew (a minute here); planning from it
    would make any certificate shorter than twice that due on arrival, and renewals would then drift onto
    the failure backoff past the certificate's expiry."""
    start = max(bundle.not_before, now)
    return start + (bundle.not_after - start) / 2


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Priority(enum.IntEnum):
    """Order of CA requests when more are due than may run at once (lower first)."""

    REALTIME = 0  # a connection is waiting for this certificate
    WARMUP = 1  # a new local workload: fetch before its first connection
    BACKGROUND = 2  # renewal of a certificate that is still valid


class CertState(enum.Enum):
    """The admin view of one identity (Istio's config_dump ``state``)."""

    INITIALIZING = "Initializing"  # first fetch not finished yet
    AVAILABLE = "Available"  # a valid certificate is held (a renewal may be failing; see ``error``)
    UNAVAILABLE = "Unavailable"  # no valid certificate: the last fetch failed, or the old one expired


# --------------------------------------------------------------------------------------------- errors


class SecretError(Exception):
    """Base class of SecretManager errors."""


class CertificateUnavailable(SecretError):
    """No valid certificate for ``identity``: the last attempt failed with ``cause``; next at ``retry_at``."""

    def __init__(self, identity: SpiffeId, cause: BaseException | None, retry_at: datetime | None) -> None:
        when = f"; retrying at {retry_at.isoformat()}" if retry_at is not None else ""
        why = (str(cause) or repr(cause)) if cause is not None else "the certificate expired"
        super().__init__(
            f"no valid certificate for {identity}: {why}{when} "
            "(check that the CA is reachable and authorizes this node for the identity)"
        )
        self.identity = identity
        self.cause = cause
        self.retry_at = retry_at


class CertificateRejected(SecretError):
    """The CA returned a certificate we must not use (another identity, or already expired)."""


class IdentityForgotten(SecretError):
    """The identity was forgotten (its last local workload left) while a caller waited for it."""

    def __init__(self, identity: SpiffeId) -> None:
        super().__init__(f"certificate for {identity} is no longer managed: its last local workload left")
        self.identity = identity


class SecretManagerClosed(SecretError):
    """The SecretManager is shut down."""

    def __init__(self) -> None:
        super().__init__("the SecretManager is closed (ztunnel is shutting down)")


# ------------------------------------------------------------------------------------------ snapshots


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """One identity's certificate state for admin endpoints (public material only)."""

    identity: SpiffeId
    state: CertState
    serial: int | None  # of the held certificate, if any
    not_before: datetime | None
    not_after: datetime | None
    refresh_at: datetime | None  # planned renewal of the held certificate
    error: str | None  # why the last attempt failed (None after a success)
    next_attempt_at: datetime | None  # when backing off after a failure
    failures: int  # consecutive failed attempts
    chain_pem: tuple[str, ...]  # leaf first, then intermediates
    roots_pem: str | None

    @property
    def state_text(self) -> str:
        """Istio's config_dump form: ``Available``, ``Initializing`` or ``Unavailable: <error>``."""
        if self.state is CertState.UNAVAILABLE:
            return f"Unavailable: {self.error or 'certificate expired'}"
        return str(self.state.value)


# ------------------------------------------------------------------------------------------- internals


class _Phase(enum.Enum):
    QUEUED = "queued"  # waiting for a CA request slot
    FETCHING = "fetching"  # CA request in flight
    WAITING = "waiting"  # holding a certificate, sleeping until its refresh time
    BACKOFF = "backoff"  # the last attempt failed, sleeping until the retry


class _Entry:
    """Mutable per-identity record; only its worker and the manager's methods touch it."""

    __slots__ = (
        "bundle",
        "error",
        "failures",
        "gone",
        "identity",
        "pause",
        "phase",
        "priority",
        "refresh_at",
        "retry_at",
        "settled",
        "task",
    )

    def __init__(self, identity: SpiffeId, priority: Priority) -> None:
        self.identity = identity
        self.priority = priority
        self.phase = _Phase.QUEUED
        self.bundle: CertBundle | None = None
        self.error: BaseException | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self.refresh_at: datetime | None = None  # planned renewal of ``bundle`` (see ``planned_refresh``)
        # Set (and replaced) whenever an attempt ends or the entry is dropped: wakes waiting callers.
        self.settled = asyncio.Event()
        self.gone: SecretError | None = None  # why the entry was dropped, for callers still waiting
        self.pause: asyncio.Future[None] | None = None  # the worker's current sleep (cancel to wake it)
        self.task: asyncio.Task[None] | None = None


class _Waiter:
    __slots__ = ("entry", "future", "seq")

    def __init__(self, entry: _Entry, seq: int, future: asyncio.Future[None]) -> None:
        self.entry = entry
        self.seq = seq
        self.future = future


class _PriorityGate:
    """A semaphore that hands free slots to the waiter with the best (lowest) current priority, FIFO
    within a priority. Priorities are read at hand-over time, so raising an entry's priority while it
    waits moves it up the queue."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_concurrent_fetches must be at least 1")
        self._free = limit
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self, entry: _Entry) -> AsyncIterator[None]:
        await self._acquire(entry)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, entry: _Entry) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = _Waiter(entry, next(self._seq), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self._release()  # we were handed a slot but will not use it: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            best = min(self._waiters, key=lambda w: (w.entry.priority, w.seq))
            self._waiters.remove(best)
            if not best.future.done():
                best.future.set_result(None)
                return
        self._free += 1


# ---------------------------------------------------------------------------------------------- manager


class SecretManager:
    """Certificates per local identity (see the module docstring). Create and use inside one event loop."""

    def __init__(
        self,
        provider: CertificateProvider,
        *,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_concurrent_fetches: int = MAX_CONCURRENT_FETCHES,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self._provider = provider
        self._clock = clock
        self._sleep = sleep
        self._gate = _PriorityGate(max_concurrent_fetches)
        Backoff(retry_initial, retry_max, 2.0, jitter)  # validate the settings now, not in a worker
        self._backoff_args = (retry_initial, retry_max, 2.0, jitter)
        self._rng = rng or random.Random()
        self._entries: dict[SpiffeId, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._version = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------------------------- public API

    async def fetch_certificate(self, identity: SpiffeId) -> CertBundle:
        """A valid certificate for ``identity``: the cached one, or the result of the fetch in flight
        (starting one at REALTIME priority if needed).

        Raises ``CertificateUnavailable`` when the last attempt failed and no valid certificate is held,
        ``IdentityForgotten`` or ``SecretManagerClosed`` if the identity is dropped while waiting.
        """
        entry = self._ensure(identity, Priority.REALTIME)
        while True:
            if entry.gone is not None:
                raise entry.gone
            bundle = entry.bundle
            if bundle is not None and self._clock() < bundle.not_after:
                return bundle
            if entry.phase is _Phase.BACKOFF:
                raise CertificateUnavailable(identity, entry.error, entry.retry_at)
            if entry.phase is _Phase.WAITING:
                self._wake(entry)  # it expired before its refresh time (a clock step): renew now
            await entry.settled.wait()

    def find_certificate(self, identity: SpiffeId) -> CertBundle | None:
        """The cached certificate for ``identity`` if it is valid now; never waits, never fetches."""
        entry = self._entries.get(identity)
        if entry is None or entry.bundle is None:
            return None
        return entry.bundle if self._clock() < entry.bundle.not_after else None

    def prefetch(self, identity: SpiffeId) -> None:
        """Start fetching ``identity``'s certificate in the background (WARMUP priority) if not managed yet."""
        self._ensure(identity, Priority.WARMUP)

    def forget(self, identity: SpiffeId) -> bool:
        """Stop managing ``identity`` (its last local workload left): cancels its fetches and renewals and
        drops its certificate. Callers waiting for it get ``IdentityForgotten``. False if it was unknown."""
        entry = self._entries.pop(identity, None)
        if entry is None:
            return False
        self._drop(entry, IdentityForgotten(identity))
        log.info("certificate forgotten", identity=str(identity))
        return True

    def track(self, identities: Iterable[SpiffeId]) -> tuple[set[SpiffeId], set[SpiffeId]]:
        """Reconcile with the full set of local identities: prefetch the new ones, forget every managed
        identity not in the set. Returns ``(added, removed)``."""
        wanted = set(identities)
        added = wanted - self._entries.keys()
        removed = self._entries.keys() - wanted
        for identity in removed:
            self.forget(identity)
        for identity in sorted(added):
            self.prefetch(identity)
        return added, removed

    def snapshot(self) -> list[CertificateStatus]:
        """Every managed identity's state, sorted by identity (for ``/config_dump`` and readiness)."""
        now = self._clock()
        return [self._status(self._entries[i], now) for i in sorted(self._entries)]

    @property
    def identities(self) -> frozenset[SpiffeId]:
        return frozenset(self._entries)

    @property
    def queued_fetches(self) -> int:
        """CA requests waiting for a free slot (``max_concurrent_fetches`` are in flight)."""
        return self._gate.waiting

    @property
    def version(self) -> int:
        """Increases whenever any identity's state changes (attempt finished, forgotten, closed)."""
        return self._version

    async def changed(self, since_version: int) -> int:
        """Wait until ``version`` is above ``since_version``; returns the new version."""
        while self._version <= since_version:
            await self._changed.wait()
        return self._version

    async def close(self) -> None:
        """Cancel every fetch and renewal and wait for the workers to end. Idempotent."""
        self._closed = True
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            self._drop(entry, SecretManagerClosed())
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ----------------------------------------------------------------------------------------- internals

    def _ensure(self, identity: SpiffeId, priority: Priority) -> _Entry:
        if self._closed:
            raise SecretManagerClosed()
        entry = self._entries.get(identity)
        if entry is None:
            entry = _Entry(identity, priority)
            self._entries[identity] = entry
            task = asyncio.get_running_loop().create_task(self._run(entry), name=f"secrets {identity}")
            entry.task = task
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        elif priority < entry.priority:
            entry.priority = priority
        return entry

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("certificate worker crashed", task=task.get_name(), error=repr(task.exception()))

    def _drop(self, entry: _Entry, why: SecretError) -> None:
        entry.gone = why
        if entry.task is not None:
            entry.task.cancel()
        entry.settled.set()
        self._bump()

    def _bump(self) -> None:
        self._version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _settle(self, entry: _Entry) -> None:
        event, entry.settled = entry.settled, asyncio.Event()
        event.set()
        self._bump()

    def _wake(self, entry: _Entry) -> None:
        if entry.pause is not None:
            entry.pause.cancel()

    async def _pause(self, entry: _Entry, seconds: float) -> bool:
        """Sleep ``seconds`` unless woken early; True if woken (``_wake``)."""
        pause = asyncio.ensure_future(self._sleep(seconds))
        entry.pause = pause
        try:
            await asyncio.wait({pause})
        finally:
            entry.pause = None
            pause.cancel()
        return pause.cancelled()

    async def _run(self, entry: _Entry) -> None:
        """The identity's worker: fetch, wait for the refresh time or the retry, repeat until cancelled."""
        backoff = Backoff(*self._backoff_args)
        while True:
            entry.phase = _Phase.QUEUED
            try:
                bundle = await self._fetch_once(entry)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any provider failure is retried; the error is kept for callers
                delay = backoff.next_delay(self._rng.random())
                self._record_failure(entry, e, delay)
                await self._pause(entry, delay)
                continue
            refresh_at = planned_refresh(bundle, self._clock())
            entry.refresh_at = refresh_at
            delay = (refresh_at - self._clock()).total_seconds()
            if delay >= MIN_REFRESH_DELAY:
                backoff.reset()
            else:
                delay = backoff.next_delay(self._rng.random())
                log.warning(
                    "certificate is due for renewal already; check the CA's clock and certificate TTL",
                    identity=str(entry.identity),
                    lifetime_s=bundle.lifetime.total_seconds(),
                    retry_in_s=round(delay, 3),
                )
            self._record_success(entry, bundle)
            if not await self._pause(entry, delay):
                # Slept the full time; sleep on if the wall clock says it is not time yet.
                while (remaining := (refresh_at - self._clock()).total_seconds()) > 0:
                    if await self._pause(entry, remaining):
                        break

    async def _fetch_once(self, entry: _Entry) -> CertBundle:
        async with self._gate.slot(entry):
            entry.phase = _Phase.FETCHING
            bundle = await self._provider.fetch(entry.identity)
        if bundle.identity != entry.identity:
            raise CertificateRejected(
                f"the CA issued a certificate for {bundle.identity} when asked for {entry.identity}"
            )
        now = self._clock()
        if bundle.not_after <= now:
            raise CertificateRejected(
                f"the CA issued a certificate for {entry.identity} that expired at {bundle.not_after.isoformat()}"
            )
        return bundle

    def _record_success(self, entry: _Entry, bundle: CertBundle) -> None:
        entry.bundle = bundle
        entry.error = None
        entry.failures = 0
        entry.retry_at = None
        entry.phase = _Phase.WAITING
        entry.priority = Priority.BACKGROUND
        self._settle(entry)
        log.info(
            "certificate issued",
            identity=str(entry.identity),
            serial=f"{bundle.serial:x}",
            not_after=bundle.not_after.isoformat(),
            refresh_at=(entry.refresh_at or bundle.refresh_at).isoformat(),
        )

    def _record_failure(self, entry: _Entry, error: Exception, delay: float) -> None:
        now = self._clock()
        entry.error = error
        entry.failures += 1
        entry.retry_at = now + timedelta(seconds=delay)
        entry.phase = _Phase.BACKOFF
        self._settle(entry)
        serving = entry.bundle is not None and now < entry.bundle.not_after
        log.warning(
            "certificate fetch failed",
            identity=str(entry.identity),
            error=str(error) or repr(error),
            failures=entry.failures,
            retry_in_s=round(delay, 3),
            serving_previous=serving,
        )

    def _status(self, entry: _Entry, now: datetime) -> CertificateStatus:
        bundle = entry.bundle
        valid = bundle is not None and now < bundle.not_after
        if valid:
            state = CertState.AVAILABLE
        elif entry.error is not None or bundle is not None:
            state = CertState.UNAVAILABLE
        else:
            state = CertState.INITIALIZING
        return CertificateStatus(
            identity=entry.identity,
            state=state,
            serial=bundle.serial if bundle is not None else None,
            not_before=bundle.not_before if bundle is not None else None,
            not_after=bundle.not_after if bundle is not None else None,
            refresh_at=(entry.refresh_at or bundle.refresh_at) if bundle is not None else None,
            error=(str(entry.error) or repr(entry.error)) if entry.error is not None else None,
            next_attempt_at=entry.retry_at,
            failures=entry.failures,
            chain_pem=bundle.chain_pem if bundle is not None else (),
            roots_pem=bundle.roots_pem if bundle is not None else None,
        )
