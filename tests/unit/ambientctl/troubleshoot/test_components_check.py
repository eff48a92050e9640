"""``check``'s "mesh components running" line from the cluster supervisor's view of each component:
one not running fails with the fix, one restarted within the hour warns with its last exit."""

from __future__ import annotations

import pytest

from ambientctl.cluster.cluster import ProcessStatus
from ambientctl.cluster.supervision import LastExit
from ambientctl.troubleshoot.checks import components_check

NOW = 1_800_000_000.0


def proc(name: str, *, running: bool = True, **fields: object) -> ProcessStatus:
    return ProcessStatus(name=name, netns="", pid=100, running=running, log="", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("processes", "verdict", "words"),
    [
        pytest.param(
            [proc("istiod"), proc("ztunnel-node-1")], "pass", ["2 running"], id="all running, none restarted"
        ),
        pytest.param(
            [
                proc("istiod"),
                proc("ztunnel-node-1", restarts=2, last_exit=LastExit(at=NOW - 300, signal="SIGKILL")),
            ],
            "warn",
            ["ztunnel-node-1 restarted 2 times, last killed by SIGKILL 5m ago"],
            id="a component restarted five minutes ago warns with its last exit",
        ),
        pytest.param(
            [proc("node-agent-node-1", restarts=1, last_exit=LastExit(at=NOW - 20, code=3))],
            "warn",
            ["node-agent-node-1 restarted 1 time, last exited with code 3 20s ago"],
            id="one restart reads in the singular",
        ),
        pytest.param(
            [proc("istiod", restarts=4, last_exit=LastExit(at=NOW - 7200, code=1))],
            "pass",
            [],
            id="a restart more than an hour ago passes",
        ),
        pytest.param(
            [
                proc("istiod"),
                proc(
                    "ztunnel-node-2",
                    running=False,
                    state="BackOff",
                    restarts=3,
                    last_exit=LastExit(at=NOW - 4, code=1),
                    restart_at=NOW + 8,
                ),
            ],
            "fail",
            ["ztunnel-node-2 not running (BackOff, exited with code 1 4s ago, restart due in 8s)"],
            id="a component in back-off fails naming its state, last exit and next restart",
        ),
        pytest.param(
            [proc("kubelet", running=False, state="Stopped")],
            "fail",
            ["kubelet not running (Stopped)"],
            id="a stopped component without a known exit fails",
        ),
    ],
)
def test_components_check(processes: list[ProcessStatus], verdict: str, words: list[str]) -> None:
    result = components_check(processes, NOW)
    assert result.description == "mesh components running"
    got = "fail" if not result.ok else "warn" if result.warning else "pass"
    assert got == verdict, result
    for w in words:
        assert w in result.detail
    if verdict == "fail":
        assert "ambientctl cluster logs" in result.remediation and "cluster up" in result.remediation
    if verdict == "warn":
        assert result.remediation.startswith("read why it exited: ambientctl cluster logs ")
