"""``python -m ztunnel.cni.agent`` as a process: it serves, stops cleanly on SIGTERM (exit 0, sockets
removed), and a bad setting exits 2 with one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ztunnel.cni.events import EventReply, PluginEvent, send_event

REPO = Path(__file__).resolve().parents[4]


def test_the_agent_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_NAME": "node-1",
        "AMBIENT_STATE_DIR": str(tmp_path),
        "INPOD_UDS": str(tmp_path / "ztunnel.sock"),
        "CNI_EVENT_ADDRESS": str(tmp_path / "pluginevent.sock"),
        "NETNS_MAP_PATH": str(tmp_path / "pods.json"),
        "MONITORING_ADDR": "",
        "ADMIN_ADDR": "",  # no fixed loopback port: tests run side by side
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ztunnel.cni.agent"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        event = PluginEvent(cmd="del", pod_namespace="demo", pod_name="web", container_id="c1")
        while True:
            try:
                reply = send_event(str(tmp_path / "pluginevent.sock"), event, 2.0)
                break
            except Exception:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the agent did not start listening"
                time.sleep(0.05)
        assert reply == EventReply(ok=True)
        assert (tmp_path / "ztunnel.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not (tmp_path / "ztunnel.sock").exists() and not (tmp_path / "pluginevent.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ztunnel.cni.agent", "--zds-ack-timeout", "soon"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NODE_NAME": "n",
            "AMBIENT_STATE_DIR": str(tmp_path),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ztunnel-node-agent: ZDS_ACK_TIMEOUT: 'soon' is not a duration; write e.g. 5s, 500ms, 10m or 24h"
    ]
