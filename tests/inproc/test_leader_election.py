"""Two istiod-lite replicas elect one leader through a Lease on the API stand-in, and hand over when the
leader stops (at once when it releases the Lease, after the lease duration when it just dies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from istiod_lite.leader import LeaderElector, LeaseSettings
from meshcore.store.kubernetes import load_configuration
from meshcore.testing.kube_api import KubeApiServer

# Short, but with room for a loaded CI machine: a renew late by more than 1.5 s would change leaders.
FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.1}


class Replica:
    def __init__(self, api: ApiClient, name: str) -> None:
        self.changes: list[bool] = []
        self.elector = LeaderElector(api, LeaseSettings(identity=name, **FAST), on_change=self.changes.append)
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self, *, release: bool) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if release:
            await self.elector.release()


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[KubeApiServer, ApiClient]]:
    async with KubeApiServer() as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
        api = ApiClient(load_configuration(host=server.url))
        try:
            yield server, api
        finally:
            await api.close()


async def first_leader(a: Replica, b: Replica) -> tuple[Replica, Replica]:
    async with asyncio.timeout(10):
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(a.elector.wait_for(True)), asyncio.ensure_future(b.elector.wait_for(True))],
            return_when=asyncio.FIRST_COMPLETED,
        )
    return (a, b) if a.elector.is_leader else (b, a)


async def test_two_replicas_elect_exactly_one_leader(cluster: tuple[KubeApiServer, ApiClient]) -> None:
    server, api = cluster
    a, b = Replica(api, "istiod-a"), Replica(api, "istiod-b")
    try:
        leader, follower = await first_leader(a, b)
        # The follower tries for longer than the lease duration and never takes a lease that is renewed.
        start = follower.elector.attempts
        for _ in range(1000):  # bounded: 10 s
            if follower.elector.attempts >= start + 30:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the follower stopped trying")
        assert leader.elector.is_leader and not follower.elector.is_leader
        assert follower.changes == []
        lease = server.get_object("Lease", "istio-system", "istiod-lite-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == leader.elector.settings.identity
    finally:
        await a.stop(release=False)
        await b.stop(release=False)


@pytest.mark.parametrize("release", [True, False], ids=["a leader that releases the lease hands over",
                                                        "a leader that dies is replaced after the lease expires"])
async def test_the_follower_takes_over_when_the_leader_stops(
    cluster: tuple[KubeApiServer, ApiClient], release: bool
) -> None:
    server, api = cluster
    a, b = Replica(api, "istiod-a"), Replica(api, "istiod-b")
    try:
        leader, follower = await first_leader(a, b)
        await leader.stop(release=release)
        async with asyncio.timeout(10):
            await follower.elector.wait_for(True)
        assert follower.changes == [True]
        lease = server.get_object("Lease", "istio-system", "istiod-lite-leader")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == follower.elector.settings.identity
        assert lease["spec"]["leaseTransitions"] == (0 if release else 1)  # a released lease had no holder
    finally:
        await a.stop(release=False)
        await b.stop(release=False)


async def test_a_leader_that_cannot_renew_steps_down(cluster: tuple[KubeApiServer, ApiClient]) -> None:
    server, api = cluster
    a = Replica(api, "istiod-a")
    try:
        async with asyncio.timeout(10):
            await a.elector.wait_for(True)
        server.fail_next(503, count=1000)
        async with asyncio.timeout(10):
            await a.elector.wait_for(False)
        assert a.changes == [True, False]
    finally:
        await a.stop(release=False)


@pytest.mark.parametrize(
    "settings",
    [dict(identity="", **FAST), dict(identity="x", lease_duration=1, renew_deadline=2, retry_period=0.1)],
    ids=["an empty identity is refused", "a renew deadline longer than the lease is refused"],
)
def test_settings_that_could_make_two_leaders_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="leader election needs"):
        LeaseSettings(**settings)  # type: ignore[arg-type]
