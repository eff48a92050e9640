"""The pod apps on loopback: the echo server answers with who it is and what it got; the client reports
each request (and a held connection's end) as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(30)


def start_echo(*flags: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "ambientctl.apps.echo", "--host", "127.0.0.1", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"POD_NAME": "echo-1", "POD_NAMESPACE": "shop", "PATH": "/usr/bin"},
    )
    line = server.stdout.readline() if server.stdout else ""
    if not line.startswith("echo listening on 127.0.0.1:"):
        server.kill()
        server.wait(10)
        raise AssertionError(f"echo did not start: {line!r}")
    return server, int(line.rsplit(":", 1)[1])


@pytest.fixture
def echo() -> Iterator[tuple[subprocess.Popen[str], int]]:
    server, port = start_echo()
    try:
        yield server, port
    finally:
        server.terminate()
        server.wait(10)


def client(*args: str) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run(
        [sys.executable, "-m", "ambientctl.apps.client", *args], capture_output=True, text=True, timeout=20
    )
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_each_request_is_answered_by_the_pod_with_the_body_echoed(
    echo: tuple[subprocess.Popen[str], int],
) -> None:
    _, port = echo
    code, (result,) = client("get", f"http://127.0.0.1:{port}/x?y=1", "--count", "3", "--data", "marker-9")
    assert code == 0 and (result["ok"], result["failed"]) == (3, 0)
    for r in result["results"]:  # type: ignore[union-attr]
        assert (r["pod"], r["echo"], r["peer"], r["status"]) == ("echo-1", "marker-9", "127.0.0.1", 200)
    assert [r["count"] for r in result["results"]] == [1, 2, 3]  # type: ignore[index,union-attr]
    assert result["results"][0]["host"] == f"127.0.0.1:{port}"  # type: ignore[index]
    assert result["results"][2]["hosts"] == {f"127.0.0.1:{port}": 3}  # type: ignore[index]


@pytest.mark.parametrize(
    ("flags", "statuses"),
    [
        pytest.param((), [200] * 6, id="without flags every request succeeds"),
        pytest.param(("--fail-every", "2"), [200, 503] * 3, id="fail every 2 answers every other request 503"),
        pytest.param(("--fail-every", "1", "--fail-status", "500"), [500] * 6, id="fail every 1 fails all"),
        pytest.param(("--fail-every", "3", "--delay", "0.01"), [200, 200, 503] * 2, id="a delay changes no answer"),
    ],
)
def test_the_echo_server_fails_the_requests_its_flags_say(flags: tuple[str, ...], statuses: list[int]) -> None:
    server, port = start_echo(*flags)
    try:
        _, (result,) = client("get", f"http://127.0.0.1:{port}/", "--count", "6")
    finally:
        server.terminate()
        server.wait(10)
    results = result["results"]
    assert [r["status"] for r in results] == statuses  # type: ignore[index,union-attr]
    assert all(r["pod"] == "echo-1" for r in results)  # type: ignore[union-attr]  # failures say who failed


def test_bad_echo_flags_are_refused_with_the_reason() -> None:
    done = subprocess.run([sys.executable, "-m", "ambientctl.apps.echo", "--fail-every", "-1"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "--fail-every and --delay must not be negative" in done.stderr


def test_a_refused_connection_is_a_failed_result_and_exit_code_1() -> None:
    code, (result,) = client("get", "http://127.0.0.1:9/", "--timeout", "2")
    assert code == 1 and result["failed"] == 1
    assert "ConnectionRefusedError" in str(result["results"][0]["error"])  # type: ignore[index]


def test_a_held_connection_reports_when_the_server_goes_away(echo: tuple[subprocess.Popen[str], int]) -> None:
    server, port = echo
    held = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ambientctl.apps.client",
            "hold",
            f"http://127.0.0.1:{port}/",
            "--duration",
            "15",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout is not None
        assert json.loads(held.stdout.readline()) == {"event": "connected"}
        server.terminate()
        end = json.loads(held.stdout.readline())
        assert end["event"] == "closed" and end["requests"] >= 1
        assert held.wait(10) == 0
    finally:
        held.kill()
        held.wait()
