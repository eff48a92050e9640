"""`ambientctl demo --control-plane` (no root needed) runs with real processes and passes every check.

The cluster demo (the README's main job) is tested in tests/netns/test_e2e_demo.py."""

from __future__ import annotations

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_runs_every_step_and_passes():
    result = subprocess.run(
        [sys.executable, "-m", "ambientctl", "demo", "--control-plane", "--xds-port", str(free_port()),
         "--monitoring-port", str(free_port())],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAIL" not in result.stdout
    assert result.stdout.count("PASS") >= 5
    assert "PERMISSION_DENIED" in result.stdout
