"""The cluster's supervisor through the real CLI: a ztunnel killed with SIGKILL is started again (same
command), serves its readiness endpoint again, and ``cluster status`` shows one restart and the signal;
stopping the mesh stops the supervisor first, so nothing comes back; ``down`` leaves no process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ambientctl.cluster import Cluster
from ambientctl.cluster.mesh import Mesh
from ambientctl.cluster.testing import alive, random_prefix, run_ambientctl, wait_for

pytestmark = pytest.mark.timeout(120)


def ctl(state_dir: Path, *args: str) -> str:
    return run_ambientctl(state_dir, *args).stdout


def components(state_dir: Path) -> dict[str, dict[str, Any]]:
    status = json.loads(ctl(state_dir, "cluster", "status", "-o", "json"))
    return {p["name"]: p for p in status["processes"]}


def test_a_killed_ztunnel_is_restarted_serving_and_shown_in_status(state_dir: Path) -> None:
    prefix = random_prefix()
    spec = state_dir / "cluster.yaml"
    spec.write_text(f"nodes: 1\nprefix: {prefix}\n")
    pids: list[int] = []
    try:
        ctl(state_dir, "cluster", "up", "-f", str(spec))
        before = components(state_dir)
        assert before["supervisor"]["running"] and before["ztunnel-node-1"]["restarts"] == 0
        pids = [p["pid"] for p in before.values()]
        killed = before["ztunnel-node-1"]["pid"]
        os.kill(killed, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            zt = components(state_dir)["ztunnel-node-1"]
            return zt if zt["running"] and zt["pid"] != killed else None

        zt = wait_for("the ztunnel started again", restarted, timeout=30, poll=0.2)
        pids.append(zt["pid"])
        assert zt["restarts"] == 1 and zt["last_exit"]["signal"] == "SIGKILL"
        assert not alive(killed)
        cluster = Cluster(state_dir, prefix=prefix)
        Mesh(cluster).wait_ztunnel_ready("node-1")  # bounded by the mesh's ready timeout
        with open(f"/proc/{zt['pid']}/environ", "rb") as fh:
            env = dict(e.split(b"=", 1) for e in fh.read().split(b"\0") if b"=" in e)
        assert env[b"NODE_NAME"] == b"node-1" and env[b"PROXY_MODE"] == b"shared"  # the same config
        table = ctl(state_dir, "cluster", "status")
        row = next(line for line in table.splitlines() if line.startswith("ztunnel-node-1 "))
        assert "Running" in row and " 1 " in row and "killed by SIGKILL" in row, table

        # The mesh stopped on purpose: the supervisor goes first, so nothing is started again.
        Mesh(cluster).stop()
        assert [p.name for p in cluster.status().processes if p.running] == []
    finally:
        done = run_ambientctl(state_dir, "cluster", "down", check=False)
    assert done.returncode == 0, done.stderr
    assert [pid for pid in pids if alive(pid)] == []
