"""The README's first command: ``ambientctl demo`` passes every step, exits 0, and cleans up, even when a
previous run crashed and left a namespace behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ambientctl.demos.cluster import DEMO_PREFIX, demo_state_dir

pytestmark = pytest.mark.timeout(300)

STEPS = [
    "cluster and mesh up",
    "workloads running",
    "plaintext before the mesh",
    "namespace enable demo",
    "requests across nodes",
    "node link carries only TLS",
    "DENY policy refuses",
    "policy removed: allowed",
    "waypoint for the server's account",
    "L7 policy: GET 200, POST 403",
    "waypoint metrics count both",
    "with the waypoint: only TLS",
    "waypoint removed: L4 only",
]


def demo_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(DEMO_PREFIX)]


def test_the_demo_passes_every_step_and_leaves_nothing_even_after_a_crashed_run() -> None:
    stale = f"{DEMO_PREFIX}node-1"
    subprocess.run(["ip", "netns", "add", stale], check=True)  # what a killed earlier run could leave
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ambientctl", "demo"], capture_output=True, text=True, timeout=290
        )
    finally:
        if stale in demo_netns():
            subprocess.run(["ip", "netns", "del", stale], check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    out = done.stdout
    assert "removed a previous demo's leftovers" in out
    for step in STEPS:
        assert f"│ {step}" in out and "FAILED" not in out, out
    assert "all TLS records" in out and "absent from the wire" in out
    assert "POST -> 403" in out and 'reporter="waypoint"' in out
    assert "cluster removed" in out
    assert demo_netns() == [] and not demo_state_dir().exists()
