"""``ambientctl demo traffic``: every step passes (a canary shifted 100/0 -> 90/10 -> 50/50 with its counts,
a flaky pod's failures absorbed by a retry), it exits 0 and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ambientctl.demos.traffic import DEMO_PREFIX, traffic_demo_state_dir

pytestmark = pytest.mark.timeout(240)

STEPS = [
    "cluster and mesh up",
    "workloads running",
    "waypoint for the server's account",
    "canary 100/0",
    "canary 90/10",
    "canary 50/50",
    "flaky pod, no retry: errors",
    "retry absorbs the failures",
]


def demo_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(DEMO_PREFIX)]


def test_the_traffic_demo_shifts_a_canary_and_absorbs_failures_with_a_retry() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ambientctl", "demo", "traffic"], capture_output=True, text=True, timeout=230
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for step in STEPS:
        assert f"│ {step}" in out, out
    assert "FAILED" not in out
    assert "100 requests: v1 100, v2 0" in out  # 100/0 is exact
    split = re.search(r"at 50/50 in force .*100 requests: v1 (\d+), v2 (\d+)", out)
    assert split and int(split[1]) + int(split[2]) == 100 and 30 <= int(split[2]) <= 70, out
    failed = re.search(r"errors (\d+) -> 0 of 20", out)
    assert failed and int(failed[1]) >= 5, out  # without the retry the flaky pod's failures reached the client
    assert "cluster removed" in out
    assert demo_netns() == [] and not traffic_demo_state_dir().exists()
