"""Sans-IO SOCKS5 server: the happy paths byte by byte, every refusal with its reply, and fuzzing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel.proxy.errors import (
    Socks5AddressTypeNotSupported,
    Socks5CommandNotSupported,
    Socks5ConnectionClosed,
    Socks5Error,
    Socks5NoAcceptableMethod,
    Socks5ProtocolError,
    Socks5Reply,
    Socks5UsageError,
)
from ztunnel.proxy.socks5 import AddressType, ConnectRequested, GreetingReceived, Socks5Server, State

GREETING = b"\x05\x01\x00"
METHOD_CHOSEN = b"\x05\x00"


def connect_ipv4(ip: str, port: int) -> bytes:
    return b"\x05\x01\x00\x01" + ipaddress.IPv4Address(ip).packed + port.to_bytes(2, "big")


def connect_ipv6(ip: str, port: int) -> bytes:
    return b"\x05\x01\x00\x04" + ipaddress.IPv6Address(ip).packed + port.to_bytes(2, "big")


def connect_name(name: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")


def failure_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


# --- accepted requests -----------------------------------------------------------------------------


ACCEPTED = [
    pytest.param(
        connect_ipv4("10.96.0.1", 80),
        ConnectRequested("10.96.0.1", 80, AddressType.IPV4),
        False,
        id="an IPv4 CONNECT asks for that address and port",
    ),
    pytest.param(
        connect_ipv6("fd00::1", 8080),
        ConnectRequested("fd00::1", 8080, AddressType.IPV6),
        False,
        id="an IPv6 CONNECT asks for the canonical IPv6 text",
    ),
    pytest.param(
        connect_name(b"10.0.0.7", 443),
        ConnectRequested("10.0.0.7", 443, AddressType.IPV4),
        False,
        id="a domain name that is an IPv4 literal is treated as that IP even without name support",
    ),
    pytest.param(
        connect_name(b"FD00:0::2", 443),
        ConnectRequested("fd00::2", 443, AddressType.IPV6),
        False,
        id="a domain name that is an IPv6 literal is canonicalised",
    ),
    pytest.param(
        connect_name(b"echo.default.svc.cluster.local.", 80),
        ConnectRequested("echo.default.svc.cluster.local", 80, AddressType.DOMAIN),
        True,
        id="with names enabled a host name is passed to the shell without its trailing dot",
    ),
]


@pytest.mark.parametrize(("request_bytes", "expected", "names"), ACCEPTED)
def test_connect_requests_are_parsed(request_bytes: bytes, expected: ConnectRequested, names: bool) -> None:
    server = Socks5Server(accept_domain_names=names)
    assert server.receive_data(GREETING) == [GreetingReceived((0,))]
    assert server.data_to_send() == METHOD_CHOSEN
    assert server.receive_data(request_bytes) == [expected]
    assert server.state is State.AWAITING_REPLY
    assert server.data_to_send() == b""


def test_success_reply_carries_the_bound_address_and_leftover_bytes_pass_through() -> None:
    server = Socks5Server()
    events = server.receive_data(b"\x05\x02\x02\x00" + connect_ipv4("10.0.1.1", 8080) + b"GET / HTTP/1.1\r\n")
    assert events == [GreetingReceived((2, 0)), ConnectRequested("10.0.1.1", 8080, AddressType.IPV4)]
    assert server.receive_data(b"Host: x\r\n\r\n") == []
    server.reply_success("127.0.0.1", 40000)
    assert server.data_to_send() == METHOD_CHOSEN + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40"
    assert server.state is State.ESTABLISHED
    assert server.take_leftover() == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert server.take_leftover() == b""


def test_success_reply_for_an_ipv6_bound_address() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + connect_ipv6("fd00::1", 80))
    server.data_to_send()
    server.reply_success("::1", 1)
    assert server.data_to_send() == b"\x05\x00\x00\x04" + ipaddress.IPv6Address("::1").packed + b"\x00\x01"


def test_failure_reply_uses_the_given_code_and_ends_the_handshake() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + connect_ipv4("10.0.1.1", 8080))
    server.data_to_send()
    server.reply_failure(Socks5Reply.CONNECTION_REFUSED)
    assert server.data_to_send() == failure_reply(0x05)
    assert server.state is State.FAILED


def test_a_request_split_into_single_bytes_is_reassembled() -> None:
    server = Socks5Server(accept_domain_names=True)
    events = []
    for b in GREETING + connect_name(b"echo", 80) + b"x":
        events += server.receive_data(bytes([b]))
    assert events == [GreetingReceived((0,)), ConnectRequested("echo", 80, AddressType.DOMAIN)]
    assert server.take_leftover() == b"x"


def test_client_half_close_after_its_request_is_recorded_not_an_error() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + connect_ipv4("10.0.1.1", 8080) + b"payload")
    assert server.receive_data(b"") == []
    assert server.client_eof
    server.reply_success("10.0.0.1", 1234)
    assert server.take_leftover() == b"payload"


# --- refusals --------------------------------------------------------------------------------------


REFUSED = [
    pytest.param(
        b"\x04\x01\x00\x50\x0a\x00\x00\x01\x00",
        Socks5ProtocolError,
        b"",
        "SOCKS4",
        id="a SOCKS4 client is refused with no reply and told what it sent",
    ),
    pytest.param(
        b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n",
        Socks5ProtocolError,
        b"",
        "looks like HTTP",
        id="an HTTP proxy request is refused and recognised as HTTP",
    ),
    pytest.param(
        b"\x05\x01\x02",
        Socks5NoAcceptableMethod,
        b"\x05\xff",
        "only accepts 0x00",
        id="a client offering only username/password gets 0xFF",
    ),
    pytest.param(
        b"\x05\x00",
        Socks5NoAcceptableMethod,
        b"\x05\xff",
        "[none]",
        id="a client offering no methods at all gets 0xFF",
    ),
    pytest.param(
        GREETING + b"\x05\x02\x00\x01\x0a\x00\x00\x01\x00\x50",
        Socks5CommandNotSupported,
        METHOD_CHOSEN + failure_reply(0x07),
        "BIND",
        id="BIND is refused with command not supported",
    ),
    pytest.param(
        GREETING + b"\x05\x03\x00\x01\x0a\x00\x00\x01\x00\x50",
        Socks5CommandNotSupported,
        METHOD_CHOSEN + failure_reply(0x07),
        "UDP ASSOCIATE",
        id="UDP ASSOCIATE is refused with command not supported",
    ),
    pytest.param(
        GREETING + b"\x05\x09\x00\x01",
        Socks5CommandNotSupported,
        METHOD_CHOSEN + failure_reply(0x07),
        "unknown command 0x09",
        id="an unknown command is refused with command not supported",
    ),
    pytest.param(
        GREETING + b"\x05\x01\x00\x05",
        Socks5AddressTypeNotSupported,
        METHOD_CHOSEN + failure_reply(0x08),
        "address type 0x05",
        id="an unknown address type is refused with address type not supported",
    ),
    pytest.param(
        GREETING + connect_name(b"echo.default", 80),
        Socks5AddressTypeNotSupported,
        METHOD_CHOSEN + failure_reply(0x08),
        "IP addresses only",
        id="a host name is refused with address type not supported unless names are enabled",
    ),
    pytest.param(
        GREETING + connect_name(b"bad name!", 80),
        Socks5ProtocolError,
        METHOD_CHOSEN + failure_reply(0x01),
        "not a host name",
        id="a name with characters no host name has is refused as a general failure",
    ),
    pytest.param(
        GREETING + connect_name(b"", 80),
        Socks5ProtocolError,
        METHOD_CHOSEN + failure_reply(0x01),
        "not a host name",
        id="an empty host name is refused",
    ),
    pytest.param(
        GREETING + b"\x04\x01\x00\x01",
        Socks5ProtocolError,
        METHOD_CHOSEN + failure_reply(0x01),
        "version byte 0x04",
        id="a request with the wrong version is refused as a general failure",
    ),
    pytest.param(
        GREETING + b"\x05\x01\x07\x01\x0a\x00\x00\x01\x00\x50",
        Socks5ProtocolError,
        METHOD_CHOSEN + failure_reply(0x01),
        "reserved byte 0x07",
        id="a request with the reserved byte set is refused",
    ),
]


@pytest.mark.parametrize(("data", "error", "reply", "fragment"), REFUSED)
def test_refusals_queue_the_right_reply(
    data: bytes, error: type[Socks5Error], reply: bytes, fragment: str
) -> None:
    server = Socks5Server()
    with pytest.raises(error) as info:
        server.receive_data(data)
    assert fragment in str(info.value)
    assert server.data_to_send() == reply
    assert server.state is State.FAILED
    if reply[len(METHOD_CHOSEN) :]:
        assert info.value.reply == reply[-9]  # the REP byte of the 10-byte reply
    with pytest.raises(Socks5UsageError):
        server.receive_data(b"more")


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x05", GREETING, GREETING + b"\x05\x01\x00\x01\x0a"],
    ids=["nothing", "half a greeting", "a greeting and no request", "part of a request"],
)
def test_closing_before_the_request_is_complete_is_an_error(sent: bytes) -> None:
    server = Socks5Server()
    if sent:
        server.receive_data(sent)
    with pytest.raises(Socks5ConnectionClosed, match="before finishing"):
        server.receive_data(b"")
    assert server.state is State.FAILED


def test_early_data_beyond_the_limit_is_refused() -> None:
    server = Socks5Server(max_early_data=10)
    server.receive_data(GREETING + connect_ipv4("10.0.1.1", 80) + b"0123456789")
    server.data_to_send()
    with pytest.raises(Socks5ProtocolError, match="more than 10 bytes"):
        server.receive_data(b"!")
    assert server.data_to_send() == failure_reply(0x01)
    assert server.take_leftover() == b""


def test_replying_out_of_order_is_a_usage_error() -> None:
    server = Socks5Server()
    with pytest.raises(Socks5UsageError):
        server.reply_success("10.0.0.1", 1)
    server.receive_data(GREETING + connect_ipv4("10.0.1.1", 80))
    with pytest.raises(Socks5UsageError):
        server.reply_failure(Socks5Reply.SUCCEEDED)
    with pytest.raises(Socks5UsageError):
        server.reply_success("not-an-ip", 1)
    server.reply_success("10.0.0.1", 1)
    with pytest.raises(Socks5UsageError):
        server.reply_failure(Socks5Reply.GENERAL_FAILURE)
    with pytest.raises(Socks5UsageError):
        server.receive_data(b"relay bytes belong to the shell now")


# --- fuzzing ---------------------------------------------------------------------------------------


def feed(server: Socks5Server, data: bytes, cuts: list[int]) -> list[object]:
    """Feed ``data`` split at ``cuts``; stop (and reply) at the first ConnectRequested."""
    events: list[object] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(bounds, bounds[1:], strict=False):
        new = server.receive_data(data[a:b])
        events += new
        if any(isinstance(e, ConnectRequested) for e in new):
            server.reply_success("127.0.0.1", 1)
            break
    return events


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=8), names=st.booleans())
def test_arbitrary_bytes_raise_only_socks5_errors(data: bytes, cuts: list[int], names: bool) -> None:
    server = Socks5Server(accept_domain_names=names, max_early_data=64)
    try:
        feed(server, data, cuts)
        if server.state in (State.GREETING, State.REQUEST):
            server.receive_data(b"")
    except Socks5Error:
        assert server.state is State.FAILED
    out = server.data_to_send()
    assert len(out) <= 2 + 22  # at most a method choice and one reply
    assert out == b"" or out[0] == 5


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, ConnectRequested]:
    port = draw(st.integers(0, 65535))
    kind = draw(st.sampled_from(["v4", "v6", "name"]))
    if kind == "v4":
        ip = draw(st.ip_addresses(v=4))
        return connect_ipv4(str(ip), port), ConnectRequested(str(ip), port, AddressType.IPV4)
    if kind == "v6":
        ip6 = draw(st.ip_addresses(v=6))
        return connect_ipv6(str(ip6), port), ConnectRequested(str(ip6), port, AddressType.IPV6)
    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
    name = ".".join(draw(st.lists(label, min_size=1, max_size=4)))
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return connect_name(name.encode(), port), ConnectRequested(name, port, AddressType.DOMAIN)
    return connect_ipv4("10.0.0.1", port), ConnectRequested("10.0.0.1", port, AddressType.IPV4)


@settings(max_examples=300, deadline=None)
@given(
    req=requests(),
    methods=st.lists(st.integers(1, 255), max_size=5),
    early=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_valid_handshakes_in_any_chunking_yield_the_request_and_keep_early_bytes(
    req: tuple[bytes, ConnectRequested], methods: list[int], early: bytes, cuts: list[int]
) -> None:
    raw, expected = req
    offered = (*methods, 0)
    data = bytes([5, len(offered), *offered]) + raw + early
    server = Socks5Server(accept_domain_names=True)
    events = feed(server, data, cuts)
    assert events == [GreetingReceived(offered), expected]
    assert server.data_to_send() == METHOD_CHOSEN + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x01"
    # Bytes after the request were either held as leftover or are still unsent by the test's feed.
    assert early.startswith(server.take_leftover())
