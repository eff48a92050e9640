"""Which workloads a dedicated-mode ztunnel serves (pure selection)."""

from __future__ import annotations

import msgspec
import pytest

from meshcore.state import ProxyState
from meshcore.testing import builders as b
from ztunnel.dedicated import select_local_workloads


@pytest.mark.parametrize(
    ("workload", "served"),
    [
        (b.workload("a", "10.0.0.1", node="node-1"), True),
        (b.workload("b", "10.0.0.2", node="node-2"), False),
        (b.workload("c", "10.0.0.3", node="node-1", hbone=False), False),
        (b.workload("d", "10.0.0.4", node="node-1", hbone=False, native_tunnel=True), False),
        (msgspec.structs.replace(b.workload("e", "10.0.0.5", node="node-1"), addresses=()), False),
    ],
    ids=[
        "a mesh workload on this node is served",
        "a workload on another node is not",
        "a workload outside the mesh is not",
        "a native-tunnel workload (a waypoint) is not: it terminates HBONE itself",
        "a workload without an address is not",
    ],
)
def test_select_local_workloads(workload, served):
    assert (workload.uid in select_local_workloads(ProxyState.of(workload), "node-1")) is served
