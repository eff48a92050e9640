"""ztunnel.inpod.protocol: ZDS encoding (Istio's field numbers, byte for byte), fd-count validation,
garbage rejection, and the sequencing rules of both ends, as tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel.inpod.errors import (
    ZdsFdMismatch,
    ZdsMalformed,
    ZdsMissingField,
    ZdsOutOfOrder,
    ZdsProtocolError,
    ZdsUnsupportedVersion,
    ZdsUsageError,
)
from ztunnel.inpod.protocol import (
    MAX_PACKET,
    Ack,
    AddWorkload,
    DelWorkload,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    ZdsClientConnection,
    ZdsHello,
    ZdsServerConnection,
    ZdsState,
    decode_ack,
    decode_hello,
    decode_request,
    encode_ack,
    encode_hello,
    encode_request,
)

INFO = WorkloadInfo("web-0", "shop", "web")


def add(uid: str = "uid-a", fd: int = 7) -> AddWorkload:
    return AddWorkload(uid, INFO, fd)


# -- wire format ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "wire", "fds"),
    [
        (
            AddWorkload("u", WorkloadInfo("n", "s", "a"), 9),
            b"\x0a\x0e" + b"\x0a\x01u" + b"\x12\x09" + b"\x0a\x01n\x12\x01s\x1a\x01a",
            (9,),
        ),
        (KeepWorkload("u"), b"\x2a\x03\x0a\x01u", ()),
        (DelWorkload("u"), b"\x12\x03\x12\x01u", ()),
        (SnapshotSent(), b"\x1a\x00", ()),
    ],
    ids=[
        "add is field 1 with uid 1 and workload_info 2 and carries the netns fd",
        "keep is field 5 with uid 1",
        "del is field 2 and its uid is field 2",
        "snapshot_sent is an empty field 3",
    ],
)
def test_requests_encode_with_istios_field_numbers(msg: Any, wire: bytes, fds: tuple[int, ...]) -> None:
    assert encode_request(msg) == (wire, fds)
    assert decode_request(wire, list(fds)) == msg


def test_hello_and_acks_encode_with_istios_field_numbers() -> None:
    assert encode_hello() == b"\x08\x01"
    assert decode_hello(b"\x08\x01") == ZdsHello(1)
    assert encode_ack() == b"\x0a\x00"
    assert encode_ack("no") == b"\x0a\x04\x0a\x02no"
    assert decode_ack(b"\x0a\x00") == Ack("")
    assert decode_ack(b"\x0a\x04\x0a\x02no") == Ack("no")
    assert not Ack("no").ok


def test_a_nack_longer_than_a_packet_is_cut_to_fit() -> None:
    data = encode_ack("e" * 5000)
    assert len(data) <= MAX_PACKET
    assert decode_ack(data).error.endswith("...")


def test_encoding_an_add_without_an_fd_is_our_bug() -> None:
    with pytest.raises(ZdsUsageError):
        encode_request(AddWorkload("u", INFO, -1))


# -- bad input ----------------------------------------------------------------------------------------------

GOOD_ADD = encode_request(add())[0]
NO_INFO_ADD = b"\x0a\x03\x0a\x01u"
EMPTY_NAME_ADD = encode_request(AddWorkload("u", WorkloadInfo("", "s", "a"), 3))[0]


@pytest.mark.parametrize(
    ("data", "fds", "error"),
    [
        (b"\xff\xff\xff", [], ZdsMalformed),
        (b"", [], ZdsMalformed),
        (b"\x22\x00", [], ZdsMalformed),
        (b"\x0a" + b"\x00" * (MAX_PACKET + 1), [], ZdsMalformed),
        (GOOD_ADD, [], ZdsFdMismatch),
        (GOOD_ADD, [5, 6], ZdsFdMismatch),
        (encode_request(DelWorkload("u"))[0], [5], ZdsFdMismatch),
        (encode_request(SnapshotSent())[0], [5], ZdsFdMismatch),
        (encode_request(KeepWorkload("u"))[0], [5], ZdsFdMismatch),
        (NO_INFO_ADD, [5], ZdsMissingField),
        (EMPTY_NAME_ADD, [5], ZdsMissingField),
        (b"\x0a\x02\x12\x00", [5], ZdsMissingField),
        (b"\x12\x00", [], ZdsMissingField),
        (b"\x2a\x00", [], ZdsMissingField),
    ],
    ids=[
        "bytes that are not protobuf are malformed",
        "an empty packet has no payload",
        "the retired NoSnapshotPresent (field 4) is not understood",
        "a packet over 1024 bytes is refused",
        "an add without its netns fd is refused",
        "an add with two fds is refused",
        "a del with an fd is refused",
        "a snapshot_sent with an fd is refused",
        "a keep with an fd is refused",
        "an add without workload_info is refused",
        "an add with an empty pod name is refused",
        "an add without uid is refused",
        "a del without uid is refused",
        "a keep without uid is refused",
    ],
)
def test_bad_requests_raise_typed_protocol_errors(
    data: bytes, fds: list[int], error: type[Exception]
) -> None:
    with pytest.raises(error):
        decode_request(data, fds)


@given(data=st.binary(max_size=MAX_PACKET + 8), nfds=st.integers(min_value=0, max_value=3))
def test_any_packet_decodes_or_raises_a_protocol_error(data: bytes, nfds: int) -> None:
    try:
        msg = decode_request(data, list(range(100, 100 + nfds)))
    except ZdsProtocolError:
        return
    assert isinstance(msg, AddWorkload | KeepWorkload | DelWorkload | SnapshotSent)


@pytest.mark.parametrize(
    ("data", "fds", "error"),
    [
        (b"\x08\x02", [], ZdsUnsupportedVersion),
        (b"\x08\x00", [], ZdsUnsupportedVersion),
        (b"\x08\x01", [4], ZdsFdMismatch),
        (b"\xff", [], ZdsMalformed),
    ],
    ids=[
        "version 2 is refused",
        "an unset version is refused",
        "a hello with an fd is refused",
        "a garbage hello is malformed",
    ],
)
def test_bad_hellos_are_refused(data: bytes, fds: list[int], error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_hello(data, fds)


def test_a_response_without_ack_is_malformed() -> None:
    with pytest.raises(ZdsMalformed):
        decode_ack(b"")


# -- sequencing: ztunnel's end --------------------------------------------------------------------------------

Step = tuple[str, Any]


def run_client(steps: list[Step]) -> ZdsClientConnection:
    conn = ZdsClientConnection()
    for op, arg in steps:
        if op == "hello":
            conn.hello()
        elif op == "recv":
            data, fds = encode_request(arg)
            conn.receive_request(data, list(fds))
        elif op == "ack":
            conn.ack()
    return conn


HELLO: Step = ("hello", None)
ACK: Step = ("ack", None)


def recv(msg: Any) -> Step:
    return ("recv", msg)


@pytest.mark.parametrize(
    ("steps", "state", "snapshot"),
    [
        ([HELLO], ZdsState.SNAPSHOT, None),
        (
            [HELLO, recv(add("a")), ACK, recv(KeepWorkload("k")), ACK, recv(SnapshotSent()), ACK],
            ZdsState.READY,
            {"a", "k"},
        ),
        (
            [HELLO, recv(add("a")), ACK, recv(DelWorkload("a")), ACK, recv(SnapshotSent()), ACK],
            ZdsState.READY,
            set(),
        ),
        ([HELLO, recv(SnapshotSent()), ACK], ZdsState.READY, set()),
        (
            [HELLO, recv(SnapshotSent()), ACK, recv(add("b")), ACK, recv(DelWorkload("b")), ACK],
            ZdsState.READY,
            set(),
        ),
    ],
    ids=[
        "after hello ztunnel waits for the snapshot",
        "adds and keeps before snapshot_sent form the snapshot",
        "a pod deleted during the snapshot is not in it",
        "an empty snapshot is a complete snapshot",
        "adds and deletes after the snapshot do not change it",
    ],
)
def test_client_sequences_that_follow_the_protocol(
    steps: list[Step], state: ZdsState, snapshot: set[str] | None
) -> None:
    conn = run_client(steps)
    assert conn.state is state
    assert conn.snapshot_uids == (None if snapshot is None else frozenset(snapshot))
    assert conn.ready is (snapshot is not None)


@pytest.mark.parametrize(
    ("steps", "bad", "error"),
    [
        ([HELLO, recv(SnapshotSent()), ACK], KeepWorkload("k"), ZdsOutOfOrder),
        ([HELLO, recv(SnapshotSent()), ACK], SnapshotSent(), ZdsOutOfOrder),
        ([HELLO, recv(add("a"))], DelWorkload("a"), ZdsOutOfOrder),
    ],
    ids=[
        "a keep after the snapshot breaks the connection",
        "a second snapshot_sent breaks the connection",
        "a request before the previous ack breaks the connection",
    ],
)
def test_client_sequences_that_break_the_protocol(
    steps: list[Step], bad: Any, error: type[Exception]
) -> None:
    conn = run_client(steps)
    data, fds = encode_request(bad)
    with pytest.raises(error):
        conn.receive_request(data, list(fds))
    assert conn.state is ZdsState.FAILED
    assert not conn.ready
    assert decode_ack(conn.ack("protocol error")).error == "protocol error"  # the one nack it owes
    with pytest.raises(ZdsUsageError):
        conn.ack()
    with pytest.raises(ZdsUsageError):
        conn.receive_request(*encode_request(DelWorkload("x")))


def test_client_garbage_fails_the_connection_and_owes_a_nack() -> None:
    conn = run_client([HELLO])
    with pytest.raises(ZdsMalformed):
        conn.receive_request(b"\xff\xff")
    assert conn.state is ZdsState.FAILED
    assert not decode_ack(conn.ack("malformed")).ok


@pytest.mark.parametrize(
    "misuse",
    [
        lambda c: c.receive_request(*encode_request(SnapshotSent())),
        lambda c: c.ack(),
        lambda c: (c.hello(), c.hello()),
    ],
    ids=[
        "receiving before saying hello is our bug",
        "acking nothing is our bug",
        "saying hello twice is our bug",
    ],
)
def test_client_misuse_is_a_usage_error(misuse: Callable[[ZdsClientConnection], Any]) -> None:
    with pytest.raises(ZdsUsageError):
        misuse(ZdsClientConnection())


# -- sequencing: the node agent's end ---------------------------------------------------------------------


def greeted() -> ZdsServerConnection:
    server = ZdsServerConnection()
    server.receive_hello(encode_hello())
    return server


@pytest.mark.parametrize(
    "misuse",
    [
        lambda s: ZdsServerConnection().send(SnapshotSent()),
        lambda s: (s.send(add()), s.send(DelWorkload("a"))),
        lambda s: (s.send(SnapshotSent()), s.receive_ack(encode_ack()), s.send(KeepWorkload("k"))),
        lambda s: (s.send(SnapshotSent()), s.receive_ack(encode_ack()), s.send(SnapshotSent())),
    ],
    ids=[
        "sending before the hello arrived is our bug",
        "sending before the previous ack arrived is our bug",
        "sending a keep after the snapshot is our bug",
        "sending snapshot_sent twice is our bug",
    ],
)
def test_server_misuse_is_a_usage_error(misuse: Callable[[ZdsServerConnection], Any]) -> None:
    with pytest.raises(ZdsUsageError):
        misuse(greeted())


@pytest.mark.parametrize(
    ("act", "error"),
    [
        (lambda s: s.receive_ack(encode_ack()), ZdsOutOfOrder),
        (lambda s: s.receive_hello(encode_hello()), ZdsOutOfOrder),
        (lambda s: (s.send(DelWorkload("a")), s.receive_ack(b"\xff\xff")), ZdsMalformed),
        (lambda s: (s.send(DelWorkload("a")), s.receive_ack(encode_ack(), [3])), ZdsFdMismatch),
    ],
    ids=[
        "an ack nobody asked for fails the connection",
        "a second hello fails the connection",
        "a garbage ack fails the connection",
        "an ack carrying an fd fails the connection",
    ],
)
def test_server_peer_errors_fail_the_connection(
    act: Callable[[ZdsServerConnection], Any], error: type[Exception]
) -> None:
    server = greeted()
    with pytest.raises(error):
        act(server)
    assert server.state is ZdsState.FAILED


def test_a_whole_session_between_both_ends() -> None:
    """The node agent's snapshot after ztunnel (re)connects, then steady state, byte for byte."""
    client, server = ZdsClientConnection(), ZdsServerConnection()
    assert server.receive_hello(client.hello()) == ZdsHello(1)
    received = []
    for msg in [add("a", 11), KeepWorkload("k"), SnapshotSent(), add("b", 12), DelWorkload("a")]:
        data, fds = server.send(msg)
        assert server.awaiting_ack
        received.append(client.receive_request(data, list(fds)))
        assert server.receive_ack(client.ack()).ok
    assert received == [add("a", 11), KeepWorkload("k"), SnapshotSent(), add("b", 12), DelWorkload("a")]
    assert client.snapshot_uids == {"a", "k"}
    assert client.state is server.state is ZdsState.READY
