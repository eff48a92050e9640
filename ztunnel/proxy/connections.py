"""Live connections: the ``ConnectionManager`` that tracks them and the ``PolicyWatcher`` that re-checks them.

Every proxied connection (inbound and outbound) is registered while it relays, with what an operator
wants to see (workload, direction, local, remote, target, peer identity, protocol, bytes so far) and a
close handle. ``close(reason)`` records why and cancels the connection's task, or once the connection
is relaying, the relay's future (relays run on callbacks, with no task per connection). Whoever ends it
(the task catching the cancellation with ``closed_by_us``, or the relay's done callback) logs its
access line with the reason, so a closed connection is always accounted for exactly once.
``close_now`` closes a relayed stream from such a callback.

``PolicyWatcher`` follows the StateCell: on every new snapshot whose policies (or a tracked workload)
changed, it re-evaluates each inbound connection's ``ConnFacts`` with ``evaluate_l4`` and closes those
now denied with ztunnel's ``POLICY_CHANGE_MESSAGE`` (reference §6 "Re-evaluation"). Outbound
connections are never re-checked: authorization is the destination's job. Single event loop; no locks.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog

from meshcore.aio.hbone_conn import HboneStream
from meshcore.aio.relay import RelayCounters
from meshcore.aio.state_cell import StateCell
from meshcore.aio.streams import ByteStream, TcpStream
from meshcore.identity import SpiffeId
from meshcore.model import Workload
from meshcore.policy import POLICY_CHANGE_MESSAGE, ConnFacts, Decision, evaluate_l4
from meshcore.state import ProxyState
from meshcore.telemetry import BoundTcpMetrics

log = structlog.get_logger("ztunnel.connections")


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(eq=False, slots=True)
class TrackedConnection:
    """One live proxied connection. ``a_to_b`` of ``counters`` is downstream -> upstream (request bytes)."""

    id: int
    # The local workload the connection belongs to: the destination inbound, the source outbound.
    workload: Workload
    direction: Direction
    # Addresses as istioctl shows them: ``local`` is ztunnel's side facing the client, ``remote`` the
    # client, ``target`` where the bytes finally go (the app inbound; the next hop outbound).
    local: str
    remote: str
    target: str
    # The address the client asked for: the service hostname or VIP as dialled ("" when unknown).
    original_dst: str
    protocol: str  # "HBONE" or "TCP"
    # The verified peer identity: the client's inbound over mTLS, the server's outbound over HBONE.
    identity: SpiffeId | None
    # Inbound only: what authorization saw, re-evaluated when policies change.
    facts: ConnFacts | None
    metrics: BoundTcpMetrics | None
    started: float  # event loop time
    counters: RelayCounters = field(default_factory=RelayCounters)
    # Why we closed it (set by ``close``); None while it runs or when it ended on its own.
    close_reason: str | None = None
    # The policy (``namespace/name``) that caused the close, when one did.
    close_policy: str | None = None
    # What ``close`` cancels: the task serving the connection, or once a relay carries it on its own,
    # the relay's future.
    task: asyncio.Future[Any] | None = None
    _flushed_received: int = 0
    _flushed_sent: int = 0
    _manager: ConnectionManager | None = None  # registered with (a ``with`` block), until the block ends

    def __enter__(self) -> TrackedConnection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager._release(self)

    def close(self, reason: str, *, policy: str | None = None) -> bool:
        """Close the connection (cancel its task or relay) for ``reason``; False if already closing."""
        if self.close_reason is not None:
            return False
        self.close_reason = reason
        self.close_policy = policy
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return True

    def closed_by_us(self) -> bool:
        """Call in ``except CancelledError``: True (and the cancellation absorbed) when ``close`` caused it,
        False when the task is being cancelled for another reason (then re-raise)."""
        task = asyncio.current_task()
        if self.close_reason is None or task is None:
            return False
        if task.cancelling() > 1:  # cancelled by someone else too (shutdown): let it propagate
            return False
        task.uncancel()
        return True

    def flush_metrics(self) -> None:
        """Move the bytes relayed since the last flush into the Prometheus counters."""
        if self.metrics is None:
            return
        received, sent = self.counters.a_to_b, self.counters.b_to_a
        if received > self._flushed_received:
            self.metrics.add_received(received - self._flushed_received)
            self._flushed_received = received
        if sent > self._flushed_sent:
            self.metrics.add_sent(sent - self._flushed_sent)
            self._flushed_sent = sent

    def to_json(self, now: float) -> dict[str, object]:
        """The admin view (``/connections``)."""
        return {
            "workload": f"{self.workload.name}.{self.workload.namespace}",
            "workloadUid": self.workload.uid,
            "direction": self.direction.value,
            "local": self.local,
            "remote": self.remote,
            "target": self.target,
            "originalDst": self.original_dst,
            "protocol": self.protocol,
            "identity": str(self.identity) if self.identity is not None else None,
            "bytesReceived": self.counters.a_to_b,
            "bytesSent": self.counters.b_to_a,
            "durationMs": int(max(0.0, now - self.started) * 1000),
        }

    def to_istio_json(self) -> dict[str, str]:
        """The entry istioctl reads from ``workloadState[*].connections`` (src, originalDst, actualDst)."""
        return {"src": self.remote, "originalDst": self.original_dst, "actualDst": self.target,
                "protocol": self.protocol}


def close_now(stream: ByteStream, *, reset: bool) -> None:
    """Close one side of a finished relay without waiting (relays end in callbacks): gracefully, or
    reset after an error. A TCP connection that does not finish closing in time is aborted later."""
    if isinstance(stream, TcpStream):
        if reset:
            stream.abort()
        else:
            stream.close()
    elif isinstance(stream, HboneStream):
        stream.close()  # a finished tunnel is left as it is; one still open is reset (CANCEL)
    else:  # pragma: no cover - the data path only relays TCP connections and HBONE tunnels
        raise TypeError(f"cannot close a {type(stream).__name__} without awaiting it")


class ConnectionManager:
    """The live connections of one ztunnel (all its proxies)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self._live: dict[int, TrackedConnection] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._released = asyncio.Event()  # replaced after every release: wakes ``wait_none``

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def track(
        self,
        *,
        workload: Workload,
        direction: Direction,
        local: str,
        remote: str,
        target: str,
        original_dst: str = "",
        protocol: str,
        identity: SpiffeId | None,
        facts: ConnFacts | None = None,
        metrics: BoundTcpMetrics | None = None,
    ) -> TrackedConnection:
        """Register the current task's connection; use as ``with manager.track(...) as conn:``. It stays
        registered while the block runs; metrics are flushed on exit. (A plain object rather than a
        generator-based context manager: it lives as long as the connection, so it is kept small.)"""
        conn = TrackedConnection(
            id=next(self._ids), workload=workload, direction=direction, local=local, remote=remote,
            target=target, original_dst=original_dst, protocol=protocol, identity=identity, facts=facts,
            metrics=metrics, started=self.now(), task=asyncio.current_task(), _manager=self,
        )
        self._live[conn.id] = conn
        self._empty.clear()
        return conn

    def _release(self, conn: TrackedConnection) -> None:
        del self._live[conn.id]
        conn.flush_metrics()
        if not self._live:
            self._empty.set()
        event, self._released = self._released, asyncio.Event()
        event.set()

    def __len__(self) -> int:
        return len(self._live)

    def connections(self) -> list[TrackedConnection]:
        return list(self._live.values())

    def inbound(self) -> list[TrackedConnection]:
        return [c for c in self._live.values() if c.direction is Direction.INBOUND]

    def of_workload(self, uid: str, direction: Direction | None = None) -> list[TrackedConnection]:
        return [
            c for c in self._live.values()
            if c.workload.uid == uid and (direction is None or c.direction is direction)
        ]

    def flush_metrics(self) -> None:
        """Bring the byte counters of live connections up to date (before a metrics scrape)."""
        for conn in self._live.values():
            conn.flush_metrics()

    def close_all(
        self, reason: str, *, workload_uid: str | None = None, direction: Direction | None = None
    ) -> int:
        """Close every live connection (of ``workload_uid`` / ``direction`` only, when given); returns
        how many."""
        if workload_uid is not None:
            targets = self.of_workload(workload_uid, direction)
        else:
            targets = [c for c in self._live.values() if direction is None or c.direction is direction]
        return sum(1 for conn in targets if conn.close(reason))

    async def wait_empty(self) -> None:
        """Return once no connection is live."""
        await self._empty.wait()

    async def wait_none(self, workload_uid: str, direction: Direction | None = None) -> None:
        """Return once ``workload_uid`` has no live connection (in ``direction``, when given)."""
        while self.of_workload(workload_uid, direction):
            await self._released.wait()

    def to_json(self) -> list[dict[str, object]]:
        now = self.now()
        return [c.to_json(now) for c in sorted(self._live.values(), key=lambda c: c.id)]


def reevaluate(state: ProxyState, conn: TrackedConnection) -> Decision:
    """The L4 decision for a live inbound connection under ``state`` (its workload as ``state`` has it)."""
    assert conn.facts is not None, "only inbound connections carry facts"
    workload = state.find_workload(conn.workload.uid) or conn.workload
    return evaluate_l4(state.policies_for(workload), conn.facts)


class PolicyWatcher:
    """Closes live inbound connections that a policy change now denies (see the module docstring)."""

    def __init__(self, cell: StateCell[ProxyState], connections: ConnectionManager) -> None:
        self._cell = cell
        self._connections = connections
        self.closed_total = 0  # connections closed because of a policy change, for metrics and tests
        # The snapshot connections were last checked against: changes published after construction are
        # never missed, even before ``run`` gets scheduled.
        self._version = cell.version
        self._previous = cell.current()

    async def run(self) -> None:
        """Watch the cell until cancelled."""
        version, previous = self._version, self._previous
        while True:
            version, state = await self._cell.changed(version)
            self.check(previous, state)
            previous = state
            self._version, self._previous = version, state

    def check(self, previous: ProxyState, state: ProxyState) -> list[TrackedConnection]:
        """Re-evaluate the inbound connections affected by going from ``previous`` to ``state``; close
        the denied ones and return them."""
        policies_changed = dict(previous.policies) != dict(state.policies)
        closed = []
        for conn in self._connections.inbound():
            if conn.facts is None or conn.close_reason is not None:
                continue
            if not policies_changed and state.find_workload(conn.workload.uid) == conn.workload:
                continue  # nothing that decides this connection changed
            decision = reevaluate(state, conn)
            if decision.allowed:
                continue
            if conn.close(POLICY_CHANGE_MESSAGE, policy=decision.policy):
                closed.append(conn)
                self.closed_total += 1
                log.info(
                    "connection closed because a policy update no longer allows it",
                    workload=conn.workload.uid, src=conn.remote, dst=conn.target,
                    identity=str(conn.identity) if conn.identity else None, policy=decision.policy,
                    reason=decision.message,
                )
        return closed
