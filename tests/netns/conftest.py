"""Fixtures for the netns tier: throwaway network namespaces and veth pairs, always cleaned up.

``make_netns(prefix)`` creates a named namespace (``/var/run/netns/<prefix>-<pid>-<random>``) with ``lo``
up; ``make_veth(a, b, addr_a, addr_b)`` joins two namespaces (or one and the host, ``None``). Everything
made is removed at teardown even when the test failed, and teardown errors are collected and raised after
all cleanup ran (a leak must fail loudly, not hide). Names are unique per process and call, so tests and
helpers running in parallel never collide.

For the local cluster's tests: ``state_dir`` is a fresh short directory under /tmp (unix socket paths
must fit), removed at teardown; ``cluster`` is a one-node local cluster (no mesh) in its own state
directory, brought down at teardown; ``mc`` is a module's two-node ``MeshCluster`` (the mesh on it, no
workloads), closed after the module. A module that needs another shape defines its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as pyroute2_netns

from ambientctl.cluster import Cluster, ClusterSpec
from ambientctl.cluster.testing import MeshCluster, random_prefix

NETNS_RUN_DIR = "/var/run/netns"
T = TypeVar("T")


@dataclass(frozen=True)
class TestNetns:
    """A namespace a test created: ``name`` for ``ip netns``/pyroute2, ``path`` for ``NetnsHandle.open``."""

    __test__ = False  # not a test class, despite the name

    name: str
    path: str


@dataclass(frozen=True)
class VethPair:
    """Two ends of a veth: ``a`` in ``ns_a`` (None = host) and ``b`` in ``ns_b``."""

    a: str
    b: str
    ns_a: TestNetns | None
    ns_b: TestNetns | None


def _set_link_up(ipr: IPRoute | NetNS, ifname: str, address: str | None = None) -> None:
    index = ipr.link_lookup(ifname=ifname)[0]
    if address is not None:
        ip, prefix = address.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
    ipr.link("set", index=index, state="up")


def _in(ns: TestNetns | None) -> IPRoute | NetNS:
    return IPRoute() if ns is None else NetNS(ns.name)


def _off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread: pyroute2's sync API refuses a thread whose event loop is running
    (an async test calling the factory)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def _create(ns: TestNetns) -> None:
    pyroute2_netns.create(ns.name)
    with NetNS(ns.name) as ipr:
        _set_link_up(ipr, "lo")


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], TestNetns]]:
    """Factory: ``make_netns("redir")`` -> a fresh namespace with ``lo`` up, deleted at teardown."""
    created: list[TestNetns] = []

    def make(name_prefix: str = "t") -> TestNetns:
        name = f"{name_prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        ns = TestNetns(name=name, path=os.path.join(NETNS_RUN_DIR, name))
        created.append(ns)
        _off_loop(lambda: _create(ns))
        return ns

    yield make

    errors: list[str] = []
    for ns in reversed(created):
        try:
            if os.path.exists(ns.path):
                pyroute2_netns.remove(ns.name)
        except OSError as e:
            errors.append(f"{ns.name}: {e}")
    if errors:
        pytest.fail("could not remove test namespaces: " + "; ".join(errors))


@pytest.fixture
def make_veth() -> Iterator[Callable[..., VethPair]]:
    """Factory: ``make_veth(ns_a, ns_b, "10.9.0.1/24", "10.9.0.2/24")`` -> an up veth pair with the
    addresses set (either namespace may be None for the host). Host-side ends are deleted at teardown;
    ends inside test namespaces go away with the namespace."""
    host_ends: list[str] = []

    def make(
        ns_a: TestNetns | None, ns_b: TestNetns | None, addr_a: str | None = None, addr_b: str | None = None
    ) -> VethPair:
        tag = uuid.uuid4().hex[:8]
        a, b = f"va{tag}", f"vb{tag}"
        _off_loop(lambda: _make_veth(a, b, ns_a, ns_b, addr_a, addr_b, host_ends))
        return VethPair(a=a, b=b, ns_a=ns_a, ns_b=ns_b)

    yield make

    def cleanup() -> None:
        with IPRoute() as ipr:
            for end in host_ends:
                found = ipr.link_lookup(ifname=end)
                if found:  # deleting one end of a veth deletes its peer too
                    ipr.link("del", index=found[0])

    _off_loop(cleanup)


def _make_veth(
    a: str,
    b: str,
    ns_a: TestNetns | None,
    ns_b: TestNetns | None,
    addr_a: str | None,
    addr_b: str | None,
    host_ends: list[str],
) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=a, kind="veth", peer=b)
        # Recorded before moving: an end that failed to move must still be deleted at teardown.
        host_ends.extend((a, b))
        for end, ns in ((a, ns_a), (b, ns_b)):
            if ns is not None:
                ipr.link("set", index=ipr.link_lookup(ifname=end)[0], net_ns_fd=ns.name)
    for end, ns, addr in ((a, ns_a, addr_a), (b, ns_b, addr_b)):
        with _in(ns) as ipr:
            _set_link_up(ipr, end, addr)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(state_dir: Path) -> Iterator[Cluster]:
    prefix = random_prefix()
    made = Cluster(state_dir, prefix=prefix)
    try:
        made.up(ClusterSpec(nodes=1, prefix=prefix))
        yield made
    finally:
        Cluster(state_dir, prefix=prefix).down()


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    cluster = MeshCluster.create(nodes=2)
    try:
        yield cluster
    finally:
        cluster.close()
