"""The plugin <-> agent event socket: round trips, a private socket, and bad input answered without
stopping the server."""

from __future__ import annotations

import asyncio
import socket
import stat
from pathlib import Path

import pytest

from ztunnel.cni.errors import AgentUnreachable, EventMalformed
from ztunnel.cni.events import EventReply, EventServer, PluginEvent, decode_event, send_event

EVENT = PluginEvent(
    cmd="add", pod_namespace="demo", pod_name="web", container_id="c1", netns="/var/run/netns/x"
)


async def _started(path: Path, handler, **kw) -> EventServer:
    server = EventServer(path, handler, **kw)
    await server.start()
    return server


async def test_an_event_gets_the_handlers_reply_over_a_private_socket(tmp_path: Path) -> None:
    seen: list[PluginEvent] = []

    async def handler(event: PluginEvent) -> EventReply:
        seen.append(event)
        return EventReply(ok=True, captured=True)

    path = tmp_path / "run" / "plugin.sock"
    server = await _started(path, handler)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reply = await asyncio.to_thread(send_event, str(path), EVENT, 5.0)
        assert reply == EventReply(ok=True, captured=True)
        assert seen == [EVENT]
    finally:
        await server.close()
    assert not path.exists()


async def test_bad_input_is_answered_and_the_server_keeps_serving(tmp_path: Path) -> None:
    bad: list[str] = []

    async def handler(event: PluginEvent) -> EventReply:
        if event.pod_name == "broken":
            raise RuntimeError("handler bug")
        if event.pod_name == "slow":
            await asyncio.Event().wait()
        return EventReply(ok=True)

    path = tmp_path / "plugin.sock"
    server = await _started(path, handler, handler_timeout=0.2, on_bad_event=bad.append)

    def raw(line: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(line)
            s.shutdown(socket.SHUT_WR)
            return s.makefile("rb").readline()

    try:
        assert b"malformed" in await asyncio.to_thread(raw, b"not json\n")
        assert b"malformed" in await asyncio.to_thread(raw, b'{"cmd": "add"}\n')
        assert b"malformed" in await asyncio.to_thread(raw, b'{"cmd": "add", "pod_na')  # cut short
        assert len(bad) == 3
        broken = PluginEvent(cmd="del", pod_namespace="demo", pod_name="broken", container_id="c")
        reply = await asyncio.to_thread(send_event, str(path), broken, 5.0)
        assert not reply.ok and "handler bug" in reply.error
        slow = PluginEvent(cmd="del", pod_namespace="demo", pod_name="slow", container_id="c")
        reply = await asyncio.to_thread(send_event, str(path), slow, 5.0)
        assert not reply.ok and "did not finish" in reply.error
        assert (await asyncio.to_thread(send_event, str(path), EVENT, 5.0)).ok
    finally:
        await server.close()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "plugin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    async def handler(event: PluginEvent) -> EventReply:
        return EventReply(ok=True)

    server = await _started(path, handler)
    try:
        assert (await asyncio.to_thread(send_event, str(path), EVENT, 5.0)).ok
    finally:
        await server.close()


def test_an_absent_agent_is_reported_as_unreachable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnreachable, match="no such socket"):
        send_event(str(tmp_path / "absent.sock"), EVENT, 1.0)


def test_an_agent_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)
        with pytest.raises(AgentUnreachable, match="no reply within"):
            send_event(str(path), EVENT, 0.2)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'{"cmd": "add", "pod_namespace": "demo", "pod_name": "web", "container_id": "c"}', "netns"),
        (b'{"cmd": "update", "pod_namespace": "demo", "pod_name": "web", "container_id": "c"}', "cmd"),
        (b'{"cmd": "del", "pod_namespace": "", "pod_name": "web", "container_id": "c"}', "required"),
    ],
    ids=["an add without a netns path", "an unknown command", "an empty namespace"],
)
def test_malformed_events_are_refused(line: bytes, words: str) -> None:
    with pytest.raises(EventMalformed, match=words):
        decode_event(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"ok": true, "captured": true}', EventReply(ok=True, captured=True, enrolled=False)),
        (b'{"ok": false, "error": "boom"}', EventReply(ok=False, error="boom")),
    ],
    ids=["an older agent's ok reply decodes with enrolled false", "an older agent's error reply decodes too"],
)
def test_an_older_agents_reply_still_decodes(tmp_path: Path, line: bytes, expected: EventReply) -> None:
    path = tmp_path / "old-agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(line + b"\n")

        import threading

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            assert send_event(str(path), EVENT, 5.0) == expected
        finally:
            thread.join(5)


def test_an_older_plugins_event_decodes_as_one_that_decided_itself() -> None:
    line = b'{"cmd": "add", "pod_namespace": "demo", "pod_name": "web", "container_id": "c1", "netns": "/n", "wait": true}'
    event = decode_event(line)
    assert (event.wait, event.agent_decides) == (True, False)
