"""The stand-in's pods/exec over WebSocket (v5.channel.k8s.io preferred, v4.channel.k8s.io): the command and
container reach the test's exec_handler with the client's stdin once the close signal ends it; stdout and
stderr come back on channels 1 and 2 and the Status on channel 3 (the exit code in details.causes); the
API's refusals (no command, no stream, an unknown pod or container) come before the upgrade as Status
objects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshcore.testing.kube_api import (
    EXEC_CLOSE,
    EXEC_ERROR,
    EXEC_PROTOCOLS,
    EXEC_STDIN,
    KubeApiServer,
    RecordedRequest,
)

EXEC = "/api/v1/namespaces/demo/pods/web/exec"
V5, V4 = EXEC_PROTOCOLS


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        server.put_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo"},
                           "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}})
        yield server


def params(*argv: str, **flags: str) -> list[tuple[str, str]]:
    return [*(("command", a) for a in argv), *flags.items()]


async def messages(ws: aiohttp.ClientWebSocketResponse) -> dict[int, bytes]:
    """Every channel's bytes until the server closes."""
    got: dict[int, bytes] = {}
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=5)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return got
        got[msg.data[0]] = got.get(msg.data[0], b"") + msg.data[1:]


async def test_the_command_gets_its_stdin_and_its_output_and_exit_code_come_back(api: KubeApiServer) -> None:
    calls: list[tuple[Any, ...]] = []

    def handler(namespace: str, pod: str, container: str, argv: list[str], stdin: bytes) -> tuple[bytes, bytes, int]:
        calls.append((namespace, pod, container, argv, stdin))
        return stdin.upper(), b"warned\n", 3

    api.exec_handler = handler
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{api.url}{EXEC}", params=params("sh", "-c", "tr a-z A-Z", container="app", stdin="true", stdout="true",
                                          stderr="true"), protocols=(V5, V4)) as ws:  # fmt: skip
        assert ws.protocol == V5
        await ws.send_bytes(bytes([EXEC_STDIN]) + b"hello ")
        await ws.send_bytes(bytes([EXEC_STDIN]) + b"world")
        await ws.send_bytes(bytes([EXEC_CLOSE, EXEC_STDIN]))
        got = await messages(ws)
    assert calls == [("demo", "web", "app", ["sh", "-c", "tr a-z A-Z"], b"hello world")]
    assert got[1] == b"HELLO WORLD" and got[2] == b"warned\n"
    status = json.loads(got[EXEC_ERROR])
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert {RecordedRequest(v, "", "pods", "exec", "demo", "web") for v in ("get", "create")} <= set(api.requests)


async def test_without_stdin_the_command_runs_at_once_on_v4_and_success_is_a_success_status(
    api: KubeApiServer,
) -> None:
    api.exec_handler = lambda *_a: (b"out", b"err", 0)
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{api.url}{EXEC}", params=params("true", container="app", stdout="true"), protocols=(V4,)) as ws:
        assert ws.protocol == V4
        got = await messages(ws)
    assert got[1] == b"out" and 2 not in got  # stderr not asked for
    assert json.loads(got[EXEC_ERROR]) == {"metadata": {}, "status": "Success"}


async def test_a_coroutine_handler_is_awaited_and_its_failure_is_the_error_channels_status(
    api: KubeApiServer,
) -> None:
    async def handler(*_a: Any) -> tuple[bytes, bytes, int]:
        raise RuntimeError('exec: "nope": executable file not found in $PATH')

    api.exec_handler = handler
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{api.url}{EXEC}", params=params("nope", container="app", stdout="true"), protocols=(V5,)) as ws:
        got = await messages(ws)
    status = json.loads(got[EXEC_ERROR])
    assert status["status"] == "Failure" and "executable file not found" in status["message"]


@pytest.mark.parametrize(
    ("path", "query", "code", "message"),
    [(EXEC, params(container="app", stdout="true"), 400, "at least 1 command"),
     (EXEC, params("ls", container="app"), 400, "at least 1 of stdin, stdout, stderr"),
     ("/api/v1/namespaces/demo/pods/gone/exec", params("ls", stdout="true"), 404, 'pods "gone" not found'),
     (EXEC, params("ls", container="nope", stdout="true"), 400, "container nope is not valid for pod web"),
     (EXEC, params("ls", stdout="true"), 400, "a container name must be specified for pod web"),
     (EXEC, params("ls", container="app", stdout="true", tty="true"), 400, "models no terminal")],
    ids=["no command is refused", "no stream asked for is refused", "an unknown pod is not found",
         "an unknown container is refused", "a pod of two containers needs one named", "a terminal is refused"],
)
async def test_refusals_come_before_the_upgrade_as_a_status(
    api: KubeApiServer, path: str, query: list[tuple[str, str]], code: int, message: str,
) -> None:
    api.exec_handler = lambda *_a: (b"", b"", 0)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}{path}", params=query, protocols=(V5,))
        assert refused.value.status == code
        async with http.get(f"{api.url}{path}", params=query, headers={
                "upgrade": "websocket", "connection": "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version": "13", "sec-websocket-protocol": V5}) as answer:  # fmt: skip
            body = await answer.json()
    assert answer.status == code and body["kind"] == "Status" and message in body["message"]


async def test_stdin_on_v4_is_refused_as_it_could_never_end(api: KubeApiServer) -> None:
    api.exec_handler = lambda *_a: (b"", b"", 0)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}{EXEC}", params=params("cat", container="app", stdin="true"),
                                  protocols=(V4,))  # fmt: skip
    assert refused.value.status == 400
