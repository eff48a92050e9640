"""Sans-IO delta-ADS client protocol: initial requests, ACK/NACK shape, versions across reconnects, errors."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from meshcore.proto import discovery_pb2
from meshcore.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    AckMismatch,
    Backoff,
    DeltaXdsClientProtocol,
    MalformedResponse,
    ResponseOutOfOrder,
    UnknownTypeUrl,
    nack_message,
)

NODE_ID = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"


def proto() -> DeltaXdsClientProtocol:
    return DeltaXdsClientProtocol(
        NODE_ID, {"NAME": "ztunnel-abc", "NODE_NAME": "node-1"}, (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
    )


def res(name: str, version: str = "1", body: bytes = b"x", type_url: str = ADDRESS_TYPE_URL) -> discovery_pb2.Resource:
    return discovery_pb2.Resource(name=name, version=version, resource=any_pb2.Any(type_url=type_url, value=body))


def response(
    nonce: str, *resources: discovery_pb2.Resource, removed: tuple[str, ...] = (), type_url: str = ADDRESS_TYPE_URL
) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, resources=list(resources), removed_resources=list(removed)
    )


def test_start_sends_one_wildcard_request_per_type_each_carrying_the_node() -> None:
    reqs = proto().start(now=0.0)
    assert [r.type_url for r in reqs] == [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]
    for r in reqs:
        assert r.node.id == NODE_ID
        assert r.node.metadata.fields["NODE_NAME"].string_value == "node-1"
        assert list(r.resource_names_subscribe) == []
        assert dict(r.initial_resource_versions) == {}
        assert r.response_nonce == ""


def test_receive_returns_updates_with_versions_and_removals() -> None:
    p = proto()
    p.start(0.0)
    got = p.receive(response("n1", res("a", "v1", b"A"), res("b", "v2", b"B"), removed=("gone",)))
    assert got.type_url == ADDRESS_TYPE_URL and got.nonce == "n1"
    assert dict(got.updates) == {"a": ("v1", b"A"), "b": ("v2", b"B")}
    assert got.bodies == {"a": b"A", "b": b"B"}
    assert got.removals == ("gone",) and dict(got.malformed) == {}


def test_a_response_is_unanswered_from_receive_until_its_ack() -> None:
    p = proto()
    p.start(0.0)
    assert p.unanswered == frozenset()
    p.receive(response("n1", res("a", "v1")))
    p.receive(response("p1", type_url=AUTHORIZATION_TYPE_URL))
    assert p.unanswered == {ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL}
    p.ack(ADDRESS_TYPE_URL, "n1")
    p.nack(AUTHORIZATION_TYPE_URL, "p1", "bad")
    assert p.unanswered == frozenset()


def test_an_empty_type_url_cannot_be_subscribed() -> None:
    with pytest.raises(ValueError, match="no empty one"):
        DeltaXdsClientProtocol(NODE_ID, {}, (ADDRESS_TYPE_URL, ""))


def test_ack_echoes_type_and_nonce_with_no_error() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1", res("a")))
    ack = p.ack(ADDRESS_TYPE_URL, "n1")
    assert (ack.type_url, ack.response_nonce, ack.HasField("error_detail"), ack.HasField("node")) == (
        ADDRESS_TYPE_URL,
        "n1",
        False,
        False,
    )


def test_nack_carries_the_message_in_error_detail() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1", res("a")))
    nack = p.nack(ADDRESS_TYPE_URL, "n1", nack_message([("a", "bad ip")]))
    assert nack.response_nonce == "n1" and nack.error_detail.code != 0
    assert nack.error_detail.message == "rejected 1 resource: a: bad ip"


def test_reconnect_reports_acked_versions_and_skips_nacked_ones() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1", res("a", "v1"), res("b", "v1")))
    p.ack(ADDRESS_TYPE_URL, "n1")
    p.receive(response("n2", res("a", "v2"), res("c", "v1"), removed=("b",)))
    p.nack(ADDRESS_TYPE_URL, "n2", "rejected", rejected=["a"])  # a keeps v1; c applied; b removed
    reqs = p.start(now=5.0)
    assert dict(reqs[0].initial_resource_versions) == {"a": "v1", "c": "v1"}
    assert dict(reqs[1].initial_resource_versions) == {}
    assert reqs[0].node.id == NODE_ID


def test_unanswered_response_is_forgotten_on_reconnect() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1", res("a", "v1")))
    assert p.unanswered == {ADDRESS_TYPE_URL}
    reqs = p.start(1.0)  # stream died before we ACKed
    assert p.unanswered == frozenset()
    assert dict(reqs[0].initial_resource_versions) == {}
    p.receive(response("n9", res("a", "v1")))  # no ResponseOutOfOrder: the old pending is gone


def test_ready_once_every_type_was_answered_and_it_survives_reconnect() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1"))
    p.ack(ADDRESS_TYPE_URL, "n1")
    assert not p.ready and p.acked_types == {ADDRESS_TYPE_URL}
    p.receive(response("n2", type_url=AUTHORIZATION_TYPE_URL))
    p.nack(AUTHORIZATION_TYPE_URL, "n2", "all bad")
    assert p.ready
    p.start(1.0)
    assert p.ready


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        (discovery_pb2.Resource(version="1", resource=any_pb2.Any(type_url=ADDRESS_TYPE_URL)), "no name"),
        (discovery_pb2.Resource(name="a", version="1"), "no body"),
        (res("a", type_url=AUTHORIZATION_TYPE_URL), "expected"),
    ],
    ids=["a resource without a name is malformed", "a resource without a body is malformed", "a body of another type is malformed"],
)
def test_malformed_resources_are_reported_by_name_and_not_versioned(
    resource: discovery_pb2.Resource, reason: str
) -> None:
    p = proto()
    p.start(0.0)
    got = p.receive(response("n1", resource, res("good")))
    assert list(got.updates) == ["good"]
    [(name, why)] = got.malformed.items()
    assert reason in why
    p.nack(ADDRESS_TYPE_URL, "n1", nack_message(got.malformed.items()), rejected=got.malformed)
    assert dict(p.versions(ADDRESS_TYPE_URL)) == {"good": "1"}


def test_a_name_repeated_in_one_response_is_malformed() -> None:
    p = proto()
    p.start(0.0)
    got = p.receive(response("n1", res("a", "1"), res("a", "2"), res("a", "3")))
    assert dict(got.updates) == {} and list(got.malformed) == ["a"]


@pytest.mark.parametrize(
    ("setup", "resp", "error"),
    [
        ("none", response("n1"), ResponseOutOfOrder),
        ("started", response("n1", type_url="type.googleapis.com/istio.workload.Workload"), UnknownTypeUrl),
        ("started", response(""), MalformedResponse),
        ("pending", response("n2"), ResponseOutOfOrder),
    ],
    ids=[
        "a response before start is out of order",
        "a response of an unsubscribed type is an unknown type url",
        "a response without a nonce is malformed",
        "a second response before the first is answered is out of order",
    ],
)
def test_protocol_violations_raise_typed_errors(
    setup: str, resp: discovery_pb2.DeltaDiscoveryResponse, error: type[Exception]
) -> None:
    p = proto()
    if setup != "none":
        p.start(0.0)
    if setup == "pending":
        p.receive(response("n1"))
    with pytest.raises(error):
        p.receive(resp)


def test_acking_a_nonce_that_is_not_pending_is_a_caller_bug() -> None:
    p = proto()
    p.start(0.0)
    p.receive(response("n1"))
    with pytest.raises(AckMismatch, match="n0"):
        p.ack(ADDRESS_TYPE_URL, "n0")
    with pytest.raises(AckMismatch):
        p.ack(AUTHORIZATION_TYPE_URL, "n1")


def test_nack_message_names_every_rejection_and_is_bounded() -> None:
    msg = nack_message([(f"r{i}", "bad") for i in range(60)])
    assert msg.startswith("rejected 60 resources: r0: bad; r1: bad")
    assert "r49: bad" in msg and "r50" not in msg and msg.endswith("and 10 more")


@pytest.mark.parametrize(
    ("sample", "expected"),
    [(0.0, [0.005, 0.01, 0.02, 0.04]), (1.0, [0.01, 0.02, 0.04, 0.08])],
    ids=["the lowest jitter halves each delay", "the highest jitter gives the full doubling delay"],
)
def test_backoff_doubles_from_ten_ms(sample: float, expected: list[float]) -> None:
    b = Backoff()
    assert [round(b.next_delay(sample), 6) for _ in expected] == expected


def test_backoff_is_capped_at_fifteen_seconds_and_resets() -> None:
    b = Backoff()
    delays = [b.next_delay(1.0) for _ in range(30)]
    assert max(delays) == 15.0 and delays[-1] == 15.0
    b.reset()
    assert b.next_delay(1.0) == 0.01
