"""ConnectionManager and PolicyWatcher with real tasks: registration, closing, metrics flushing, re-checks."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from meshcore.aio.state_cell import StateCell
from meshcore.identity import SpiffeId
from meshcore.model import Action, Match, StringMatch
from meshcore.policy import POLICY_CHANGE_MESSAGE, ConnFacts
from meshcore.state import ProxyState
from meshcore.telemetry import Reporter, TcpMetrics, build_connection_labels
from meshcore.testing import builders as b
from ztunnel.proxy.connections import ConnectionManager, Direction, PolicyWatcher

SERVER = b.workload("server", "10.0.0.2")
OTHER = b.workload("other", "10.0.0.3", namespace="other")
CLIENT_ID = SpiffeId("cluster.local", "default", "client")
DENY_CLIENT = b.policy(
    "deny-client", Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/client"),)), action=Action.DENY
)


class Held:
    """A task holding one tracked connection open until closed; records how it ended."""

    def __init__(self, manager: ConnectionManager, workload, direction=Direction.INBOUND, metrics=None) -> None:
        self.manager = manager
        self.workload = workload
        self.direction = direction
        self.metrics = metrics
        self.tracked = asyncio.Event()
        self.ended_with: str | None = None
        self.conn = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        facts = ConnFacts("10.0.0.1", 40000, self.workload.addresses[0], 8080, CLIENT_ID)
        with self.manager.track(
            workload=self.workload, direction=self.direction, local="10.0.0.2:15008", remote="10.0.0.1:40000",
            target=f"{self.workload.addresses[0]}:8080", protocol="HBONE", identity=CLIENT_ID,
            facts=facts if self.direction is Direction.INBOUND else None, metrics=self.metrics,
        ) as conn:
            self.conn = conn
            self.tracked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if not conn.closed_by_us():
                    raise
                self.ended_with = conn.close_reason


async def test_tracked_connections_are_listed_and_forgotten_when_they_end():
    manager = ConnectionManager()
    held = Held(manager, SERVER)
    await held.tracked.wait()
    [entry] = manager.to_json()
    assert (entry["workloadUid"], entry["direction"], entry["target"], entry["identity"]) == (
        SERVER.uid, "inbound", "10.0.0.2:8080", str(CLIENT_ID)
    )
    assert held.conn.close("maintenance") and not held.conn.close("again")
    await held.task
    assert held.ended_with == "maintenance" and len(manager) == 0
    await asyncio.wait_for(manager.wait_empty(), 1)


async def test_a_cancellation_we_did_not_ask_for_propagates():
    manager = ConnectionManager()
    held = Held(manager, SERVER)
    await held.tracked.wait()
    held.task.cancel()
    await asyncio.wait([held.task])
    assert held.task.cancelled() and held.ended_with is None and len(manager) == 0


async def test_close_all_can_target_one_workload():
    manager = ConnectionManager()
    a, c = Held(manager, SERVER), Held(manager, OTHER)
    await a.tracked.wait()
    await c.tracked.wait()
    assert manager.close_all("drained", workload_uid=SERVER.uid) == 1
    await a.task
    assert a.ended_with == "drained" and not c.task.done()
    c.task.cancel()
    await asyncio.wait([c.task])


async def test_flushing_moves_relayed_bytes_into_the_counters_once():
    metrics = TcpMetrics(CollectorRegistry())
    bound = metrics.bind(build_connection_labels(
        Reporter.DESTINATION, source=None, destination=SERVER, destination_service=None,
        source_identity=CLIENT_ID, mtls=True,
    ))
    manager = ConnectionManager()
    held = Held(manager, SERVER, metrics=bound)
    await held.tracked.wait()
    held.conn.counters.a_to_b, held.conn.counters.b_to_a = 100, 7
    manager.flush_metrics()
    manager.flush_metrics()
    assert (bound.received, bound.sent) == (100, 7)
    held.conn.counters.a_to_b = 150
    held.conn.close("done")
    await held.task
    assert (bound.received, bound.sent) == (150, 7)  # the final flush happens on release


async def test_the_policy_watcher_closes_only_inbound_connections_a_new_policy_denies():
    cell = StateCell(ProxyState.of(SERVER, OTHER))
    manager = ConnectionManager()
    watcher = PolicyWatcher(cell, manager)
    denied, other_ns, outbound = Held(manager, SERVER), Held(manager, OTHER), Held(manager, SERVER, Direction.OUTBOUND)
    for h in (denied, other_ns, outbound):
        await h.tracked.wait()
    run = asyncio.create_task(watcher.run())
    try:
        cell.publish(cell.current().updated(put=[DENY_CLIENT]))
        await asyncio.wait_for(denied.task, 2)
        assert denied.ended_with == POLICY_CHANGE_MESSAGE and denied.conn.close_policy == "default/deny-client"
        assert watcher.closed_total == 1
        assert not other_ns.task.done() and not outbound.task.done()
    finally:
        run.cancel()
        for h in (other_ns, outbound):
            h.task.cancel()
        await asyncio.wait([run, other_ns.task, outbound.task])


async def test_a_change_that_touches_neither_policies_nor_the_workload_is_not_re_evaluated():
    before = ProxyState.of(SERVER, b.policy("unrelated", namespace="elsewhere"))
    manager = ConnectionManager()
    watcher = PolicyWatcher(StateCell(before), manager)
    held = Held(manager, SERVER)
    await held.tracked.wait()
    # The connection would be denied if evaluated; an unrelated workload arriving must not trigger that.
    denying = before.updated(put=[DENY_CLIENT])
    assert watcher.check(denying, denying.updated(put=[b.workload("new", "10.0.0.9")])) == []
    assert [c.id for c in watcher.check(before, denying)] == [held.conn.id]
    await held.task
