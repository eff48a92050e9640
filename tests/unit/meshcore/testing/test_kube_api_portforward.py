"""The stand-in's pods/portforward over WebSocket (v4.channel.k8s.io): the port prefix on each channel, bytes
relayed both ways to the loopback listener that stands for the pod's port, errors on the error channel,
the socket closed when the forwarded connection ends; refusals before the upgrade as Status objects. The
WebSocket frame codec round-trips and refuses what RFC 6455 makes a protocol error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.testing.kube_api import (
    PORTFORWARD_PROTOCOL,
    WS_BINARY,
    WS_CLOSE,
    WS_PING,
    KubeApiServer,
    RecordedRequest,
    parse_ws_frame,
    ws_frame,
)

FORWARD = "/api/v1/namespaces/demo/pods/web/portforward"


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        server.put_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo"},
                           "spec": {"nodeName": "node-1"}})
        yield server


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    """A loopback listener standing for the pod's port: echoes each chunk, closes on b'bye'."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
            if data.endswith(b"bye"):
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def next_binary(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    msg = await asyncio.wait_for(ws.receive(), timeout=5)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    data: bytes = msg.data
    return data


async def test_bytes_go_both_ways_after_the_port_prefix_and_the_socket_closes_with_the_connection(
    api: KubeApiServer, echo: tuple[str, int]
) -> None:
    api.forward_port("demo", "web", 15000, echo)
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{api.url}{FORWARD}", params={"ports": "15000"}, protocols=(PORTFORWARD_PROTOCOL,)
    ) as ws:
        assert ws.protocol == PORTFORWARD_PROTOCOL
        port = (15000).to_bytes(2, "little")
        assert [await next_binary(ws), await next_binary(ws)] == [b"\x00" + port, b"\x01" + port]
        await ws.send_bytes(b"\x00hello")
        assert await next_binary(ws) == b"\x00hello"
        await ws.send_bytes(b"\x00bye")
        assert await next_binary(ws) == b"\x00bye"
        closing = await asyncio.wait_for(ws.receive(), timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert RecordedRequest("create", "", "pods", "portforward", "demo", "web") in api.requests


async def test_a_port_nothing_listens_on_is_reported_on_the_error_channel(api: KubeApiServer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{api.url}{FORWARD}", params={"ports": "15000"}, protocols=(PORTFORWARD_PROTOCOL,)
    ) as ws:
        messages = [await next_binary(ws) for _ in range(3)]
        assert messages[2][:1] == b"\x01" and b"nothing listens on port 15000" in messages[2]


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [(FORWARD.replace("web", "gone"), {"ports": "15000"}, 404), (FORWARD, {"ports": "0"}, 400),
     (FORWARD, {}, 400)],
    ids=["a missing pod is NotFound", "port 0 is refused", "no port is refused"],
)
async def test_refusals_come_before_the_upgrade(api: KubeApiServer, path: str, params: dict[str, str], code: int) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}{path}", params=params, protocols=(PORTFORWARD_PROTOCOL,))
        assert refused.value.status == code


async def test_a_plain_get_or_another_subprotocol_is_a_bad_request(api: KubeApiServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.url}{FORWARD}", params={"ports": "15000"}) as plain:
            assert plain.status == 400 and json.loads(await plain.read())["kind"] == "Status"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}{FORWARD}", params={"ports": "15000"}, protocols=("base64.channel.k8s.io",))
        assert refused.value.status == 400


@given(st.sampled_from([WS_BINARY, WS_PING, WS_CLOSE]), st.binary(max_size=300), st.binary(min_size=4, max_size=4),
       st.booleans())
def test_a_client_frame_round_trips_and_every_prefix_of_it_is_incomplete(
    opcode: int, payload: bytes, mask: bytes, masked: bool
) -> None:
    if opcode != WS_BINARY:
        payload = payload[:125]
    frame = ws_frame(opcode, payload, mask=mask if masked else None)
    assert parse_ws_frame(frame + b"next") == (True, opcode, payload, len(frame))
    assert all(parse_ws_frame(frame[:n]) is None for n in range(len(frame)))


@given(st.binary(max_size=64))
def test_any_bytes_parse_as_a_frame_or_as_incomplete_or_are_refused_with_value_error(data: bytes) -> None:
    try:
        parse_ws_frame(data, require_mask=True)
    except ValueError:
        pass


@pytest.mark.parametrize(
    ("frame", "why"),
    [(ws_frame(WS_BINARY, b"x"), "unmasked"), (bytes([0x82 | 0x40, 0x80]) + b"mask", "reserved bits"),
     (bytes([0x83, 0x80]) + b"mask", "reserved opcode"), (bytes([0x09, 0x80]) + b"mask", "fragmented ping")],
    ids=["an unmasked client frame is refused", "reserved bits are refused", "a reserved opcode is refused",
         "a fragmented control frame is refused"],
)
def test_protocol_errors_are_refused(frame: bytes, why: str) -> None:
    with pytest.raises(ValueError):
        parse_ws_frame(frame, require_mask=True)
