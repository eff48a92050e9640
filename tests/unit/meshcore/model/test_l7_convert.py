"""L7Authorization <-> ambientmesh.waypoint.v1: round trips and the validation a NACK relies on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.model import (
    IpNet,
    L7Action,
    L7Authorization,
    L7Condition,
    L7ConditionKey,
    L7Operation,
    L7Rule,
    L7Source,
    L7Target,
    PathMatch,
    ServiceAccountMatch,
    StringMatch,
)
from meshcore.model.convert import ConversionError
from meshcore.model.convert_l7 import (
    L7_AUTHORIZATION_TYPE_URL,
    l7_authorization_from_proto,
    l7_authorization_to_proto,
)
from meshcore.proto import waypoint_pb2


def test_the_type_url_names_our_message() -> None:
    assert (
        L7_AUTHORIZATION_TYPE_URL
        == "type.googleapis.com/" + waypoint_pb2.L7Authorization.DESCRIPTOR.full_name
    )


NAMES = st.text("abcxyz-", min_size=1, max_size=6)
STRINGS = st.builds(
    StringMatch,
    st.sampled_from(["exact", "prefix", "suffix"]),
    st.text("abc/.*", max_size=5),
) | st.just(StringMatch("presence"))
HOSTS = st.builds(StringMatch, st.sampled_from(["exact", "prefix", "suffix"]), st.text("ab.:", max_size=5))
PATHS = st.builds(
    PathMatch, st.sampled_from(["exact", "prefix", "suffix"]), st.text("/ab", max_size=5)
) | st.sampled_from(
    [PathMatch("presence"), PathMatch("template", "/a/{*}"), PathMatch("template", "/a/{**}")]
)
NETS = st.sampled_from([IpNet("10.0.0.0", 8), IpNet("192.0.2.1", 32), IpNet("fd00::", 64), IpNet("::", 0)])
PORTS = st.integers(0, 65535)
SAS = st.builds(ServiceAccountMatch, NAMES, NAMES)


def tup(s: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(s, max_size=2).map(tuple)


SOURCES = st.builds(
    L7Source,
    principals=tup(STRINGS),
    not_namespaces=tup(STRINGS),
    ip_blocks=tup(NETS),
    not_remote_ip_blocks=tup(NETS),
    service_accounts=tup(SAS),
)
OPERATIONS = st.builds(
    L7Operation,
    hosts=tup(HOSTS),
    not_ports=tup(PORTS),
    methods=tup(STRINGS),
    paths=tup(PATHS),
    not_paths=tup(PATHS),
)
CONDITIONS = st.one_of(
    st.builds(lambda v: L7Condition(L7ConditionKey.REQUEST_HEADER, header="x-a", values=(v,)), STRINGS),
    st.builds(lambda v: L7Condition(L7ConditionKey.SOURCE_IP, not_ip_values=(v,)), NETS),
    st.builds(lambda v: L7Condition(L7ConditionKey.DESTINATION_PORT, port_values=(v,)), PORTS),
    st.builds(lambda v: L7Condition(L7ConditionKey.SOURCE_SERVICE_ACCOUNT, service_account_values=(v,)), SAS),
    st.builds(lambda v: L7Condition(L7ConditionKey.SOURCE_NAMESPACE, not_values=(v,)), STRINGS),
)
POLICIES = st.builds(
    L7Authorization,
    name=NAMES,
    namespace=NAMES,
    action=st.sampled_from(list(L7Action)),
    dry_run=st.booleans(),
    targets=st.lists(
        st.sampled_from(
            [L7Target("gateway", "demo/waypoint"), L7Target("service", "web.demo.svc.cluster.local")]
        ),
        min_size=1,
        max_size=2,
    ).map(tuple),
    rules=tup(st.builds(L7Rule, tup(SOURCES), tup(OPERATIONS), tup(CONDITIONS))),
)


@given(POLICIES)
def test_round_trip(policy: L7Authorization) -> None:
    wire = l7_authorization_to_proto(policy).SerializeToString()
    assert l7_authorization_from_proto(waypoint_pb2.L7Authorization.FromString(wire)) == policy


def good() -> waypoint_pb2.L7Authorization:
    return l7_authorization_to_proto(
        L7Authorization("p", "demo", targets=(L7Target("gateway", "demo/waypoint"),), rules=(L7Rule(),))
    )


def mutate(change: Callable[[waypoint_pb2.L7Authorization], object]) -> waypoint_pb2.L7Authorization:
    pb = good()
    change(pb)
    return pb


def add_condition(**kw: object) -> Callable[[waypoint_pb2.L7Authorization], object]:
    return lambda pb: pb.rules[0].conditions.add(**kw)


EXACT = waypoint_pb2.StringMatch(exact="v")

REJECTED = [
    pytest.param(
        mutate(lambda pb: pb.ClearField("name")), "l7_authorization.name", id="a policy without a name"
    ),
    pytest.param(
        mutate(lambda pb: pb.ClearField("namespace")),
        "l7_authorization.namespace",
        id="a policy without a namespace",
    ),
    pytest.param(
        mutate(lambda pb: pb.ClearField("targets")), "l7_authorization.targets", id="a policy without targets"
    ),
    pytest.param(
        mutate(lambda pb: setattr(pb, "action", 7)), "l7_authorization.action", id="an unknown action"
    ),
    pytest.param(
        mutate(lambda pb: pb.targets.add(gateway="waypoint")),
        "l7_authorization.targets[1].gateway",
        id="a gateway target that is not namespace slash name",
    ),
    pytest.param(
        mutate(lambda pb: pb.targets.add()),
        "l7_authorization.targets[1]",
        id="a target with neither kind set",
    ),
    pytest.param(
        mutate(lambda pb: pb.rules[0].operations.add(hosts=[waypoint_pb2.StringMatch(exact="Web")])),
        "l7_authorization.rules[0].operations[0].hosts[0]",
        id="an upper-case host pattern",
    ),
    pytest.param(
        mutate(lambda pb: pb.rules[0].operations.add(paths=[waypoint_pb2.PathMatch(template="/{**}/{*}")])),
        "l7_authorization.rules[0].operations[0].paths[0]",
        id="an invalid path template",
    ),
    pytest.param(
        mutate(lambda pb: pb.rules[0].operations.add(methods=[waypoint_pb2.StringMatch()])),
        "l7_authorization.rules[0].operations[0].methods[0]",
        id="a string match with no kind",
    ),
    pytest.param(
        mutate(
            lambda pb: pb.rules[0].sources.add(
                ip_blocks=[waypoint_pb2.IpBlock(address=b"\x0a\x00\x00", length=8)]
            )
        ),
        "l7_authorization.rules[0].sources[0].ip_blocks[0].address",
        id="an IP block of three bytes",
    ),
    pytest.param(
        mutate(
            lambda pb: pb.rules[0].sources.add(
                ip_blocks=[waypoint_pb2.IpBlock(address=b"\x0a\0\0\0", length=33)]
            )
        ),
        "l7_authorization.rules[0].sources[0].ip_blocks[0].length",
        id="a prefix longer than the address",
    ),
    pytest.param(
        mutate(lambda pb: pb.rules[0].operations.add(ports=[70000])),
        "l7_authorization.rules[0].operations[0].ports[0]",
        id="a port above 65535",
    ),
    pytest.param(
        mutate(lambda pb: pb.rules[0].sources.add(service_accounts=[waypoint_pb2.ServiceAccount(name="sa")])),
        "l7_authorization.rules[0].sources[0].service_accounts[0].namespace",
        id="a service account without namespace",
    ),
    pytest.param(
        mutate(add_condition(values=[EXACT])),
        "l7_authorization.rules[0].conditions[0].key",
        id="a condition without a key",
    ),
    pytest.param(
        mutate(add_condition(key=waypoint_pb2.SOURCE_IP, values=[EXACT])),
        "l7_authorization.rules[0].conditions[0].values",
        id="a condition with values of another type than its key",
    ),
    pytest.param(
        mutate(add_condition(key=waypoint_pb2.DESTINATION_PORT)),
        "l7_authorization.rules[0].conditions[0]",
        id="a condition without values",
    ),
    pytest.param(
        mutate(add_condition(key=waypoint_pb2.REQUEST_HEADER, values=[EXACT])),
        "l7_authorization.rules[0].conditions[0].header",
        id="a header condition without a header name",
    ),
    pytest.param(
        mutate(add_condition(key=waypoint_pb2.REQUEST_HEADER, header="X-A", values=[EXACT])),
        "l7_authorization.rules[0].conditions[0].header",
        id="a header name in upper case",
    ),
    pytest.param(
        mutate(add_condition(key=waypoint_pb2.SOURCE_PRINCIPAL, header="x", values=[EXACT])),
        "l7_authorization.rules[0].conditions[0].header",
        id="a header name on a non-header key",
    ),
]


@pytest.mark.parametrize(("pb", "field"), REJECTED)
def test_rejected(pb: waypoint_pb2.L7Authorization, field: str) -> None:
    with pytest.raises(ConversionError) as e:
        l7_authorization_from_proto(pb)
    assert e.value.field == field


def test_pseudo_header_names_are_accepted() -> None:
    pb = mutate(add_condition(key=waypoint_pb2.REQUEST_HEADER, header=":authority", values=[EXACT]))
    assert l7_authorization_from_proto(pb).rules[0].conditions[0].header == ":authority"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_with_a_conversion_error(data: bytes) -> None:
    try:
        pb = waypoint_pb2.L7Authorization.FromString(data)
    except Exception:  # the protobuf runtime's own DecodeError
        return
    try:
        l7_authorization_from_proto(pb)
    except ConversionError:
        pass


def test_unencodable_values_are_refused() -> None:
    bad = L7Authorization(
        "p",
        "demo",
        targets=(L7Target("gateway", "demo/w"),),
        rules=(L7Rule((L7Source(ip_blocks=(IpNet("x", 8),)),)),),
    )
    with pytest.raises(ConversionError, match=r"rules\[0\]\.sources\[0\]\.ip_blocks\[0\]\.address"):
        l7_authorization_to_proto(bad)
