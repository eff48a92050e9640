"""Model <-> Istio proto conversion: round trips through wire bytes, and rejection of bad peer input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.model import (
    Action,
    AppProtocol,
    Authorization,
    Clause,
    GatewayAddress,
    HealthPolicy,
    IpNet,
    LoadBalancing,
    LoadBalancingMode,
    Locality,
    Match,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)
from meshcore.model.convert import (
    ConversionError,
    DecodeCache,
    address_from_proto,
    address_to_proto,
    authorization_from_proto,
    authorization_to_proto,
    resource_name,
    service_from_proto,
    workload_from_proto,
    workload_to_proto,
)
from meshcore.proto import authorization_pb2, workload_pb2
from meshcore.testing import builders

# ------------------------------------------------------------------------------------------ strategies

k8s_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9]\Z")
texts = st.text(max_size=12)
ipv4 = st.ip_addresses(v=4).map(str)
ips = st.ip_addresses().map(str)
ports = st.integers(min_value=0, max_value=65535)
port_models = st.builds(Port, service_port=ports, target_port=ports, app_protocol=st.sampled_from(AppProtocol))
network_addresses = st.builds(NetworkAddress, address=ips, network=texts)
gateways = st.one_of(
    st.builds(
        GatewayAddress,
        hostname=st.builds(NamespacedHostname, namespace=k8s_names, hostname=k8s_names),
        hbone_mtls_port=ports,
    ),
    st.builds(GatewayAddress, address=network_addresses, hbone_mtls_port=ports),
)
service_keys = st.tuples(k8s_names, k8s_names).map(lambda t: f"{t[0]}/{t[1]}.svc")

workloads = st.builds(
    Workload,
    uid=texts.filter(bool),
    name=texts.filter(bool),
    namespace=k8s_names,
    service_account=k8s_names,
    trust_domain=st.sampled_from(["cluster.local", "example.org"]),
    addresses=st.lists(ips, max_size=3).map(tuple),
    network=texts,
    tunnel_protocol=st.sampled_from([TunnelProtocol.NONE, TunnelProtocol.HBONE]),
    waypoint=st.none() | gateways,
    node=texts,
    canonical_name=texts,
    canonical_revision=texts,
    workload_type=st.sampled_from(WorkloadType),
    workload_name=texts,
    native_tunnel=st.booleans(),
    authorization_policies=st.lists(texts, max_size=3).map(tuple),
    status=st.sampled_from(WorkloadStatus),
    cluster_id=texts,
    hostname=texts,
    services=st.dictionaries(service_keys, st.lists(port_models, max_size=3).map(tuple), max_size=3),
    locality=st.none() | st.builds(Locality, region=texts, zone=texts, subzone=texts),
)

services = st.builds(
    Service,
    name=texts.filter(bool),
    namespace=texts.filter(bool),
    hostname=texts.filter(bool),
    addresses=st.lists(network_addresses, max_size=3).map(tuple),
    ports=st.lists(port_models, max_size=3).map(tuple),
    subject_alt_names=st.lists(texts, max_size=2).map(tuple),
    waypoint=st.none() | gateways,
    load_balancing=st.none()
    | st.builds(
        LoadBalancing,
        routing_preference=st.lists(st.integers(0, 6), max_size=3).map(tuple),
        mode=st.sampled_from(LoadBalancingMode),
        health_policy=st.sampled_from(HealthPolicy),
    ),
)

string_matches = st.one_of(
    st.builds(StringMatch, kind=st.sampled_from(["exact", "prefix", "suffix"]), value=texts),
    st.just(StringMatch(kind="presence")),
)
ip_nets = st.one_of(
    st.builds(IpNet, address=ipv4, length=st.integers(0, 32)),
    st.builds(IpNet, address=st.ip_addresses(v=6).map(str), length=st.integers(0, 128)),
)
sa_matches = st.builds(ServiceAccountMatch, namespace=k8s_names, service_account=k8s_names)


def _few(s: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(s, max_size=2).map(tuple)


matches = st.builds(
    Match,
    namespaces=_few(string_matches),
    not_namespaces=_few(string_matches),
    principals=_few(string_matches),
    not_principals=_few(string_matches),
    source_ips=_few(ip_nets),
    not_source_ips=_few(ip_nets),
    destination_ips=_few(ip_nets),
    not_destination_ips=_few(ip_nets),
    destination_ports=_few(ports),
    not_destination_ports=_few(ports),
    service_accounts=_few(sa_matches),
    not_service_accounts=_few(sa_matches),
)
authorizations = st.builds(
    Authorization,
    name=texts.filter(bool),
    namespace=texts,
    scope=st.sampled_from(Scope),
    action=st.sampled_from(Action),
    rules=_few(st.builds(Rule, clauses=_few(st.builds(Clause, matches=_few(matches))))),
    dry_run=st.booleans(),
)


# ------------------------------------------------------------------------------------------ round trips


@given(workloads)
def test_workload_round_trips_through_wire_bytes(w: Workload) -> None:
    wire = address_to_proto(w).SerializeToString()
    assert address_from_proto(workload_pb2.Address.FromString(wire)) == w


@given(services)
def test_service_round_trips_through_wire_bytes(s: Service) -> None:
    wire = address_to_proto(s).SerializeToString()
    assert address_from_proto(workload_pb2.Address.FromString(wire)) == s


@given(authorizations)
def test_authorization_round_trips_through_wire_bytes(a: Authorization) -> None:
    wire = authorization_to_proto(a).SerializeToString()
    assert authorization_from_proto(authorization_pb2.Authorization.FromString(wire)) == a


def test_workload_addresses_travel_as_raw_bytes_and_come_back_canonical() -> None:
    pb = workload_to_proto(builders.workload("a", "2001:db8:0:0::1"))
    assert list(pb.addresses) == [ipaddress.ip_address("2001:db8::1").packed]
    assert workload_from_proto(pb).addresses == ("2001:db8::1",)


def test_policy_rules_and_clauses_are_istio_groups_and_rules_on_the_wire() -> None:
    m = Match(destination_ports=(80,))
    pb = authorization_to_proto(builders.policy("p", m))
    assert len(pb.groups) == 1 and len(pb.groups[0].rules) == 1
    assert list(pb.groups[0].rules[0].matches[0].destination_ports) == [80]


def test_presence_string_match_is_encoded_as_the_empty_message() -> None:
    pb = authorization_to_proto(builders.policy("p", Match(not_principals=(StringMatch(kind="presence"),))))
    assert pb.groups[0].rules[0].matches[0].not_principals[0].WhichOneof("match_type") == "presence"


def test_empty_identity_parts_default_like_ztunnel() -> None:
    pb = workload_pb2.Workload(uid="u", name="n", namespace="ns")
    w = workload_from_proto(pb)
    assert (w.trust_domain, w.service_account) == ("cluster.local", "default")


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (builders.workload("a", "10.0.0.1"), "Kubernetes//Pod/default/a"),
        (builders.service("s", "10.96.0.1"), "default/s.default.svc.cluster.local"),
        (builders.policy("p", namespace="prod"), "prod/p"),
    ],
    ids=["a workload is named by its uid", "a service by ns/hostname", "a policy by ns/name"],
)
def test_resource_name(model: Workload | Service | Authorization, name: str) -> None:
    assert resource_name(model) == name


# ------------------------------------------------------------------------------------------- rejections


def _wl(**kw: object) -> workload_pb2.Workload:
    base: dict[str, object] = {"uid": "u", "name": "n", "namespace": "ns", "addresses": [bytes(4)]}
    base.update(kw)
    return workload_pb2.Workload(**base)  # type: ignore[arg-type]


def _svc(**kw: object) -> workload_pb2.Service:
    base: dict[str, object] = {"name": "s", "namespace": "ns", "hostname": "s.ns.svc"}
    base.update(kw)
    return workload_pb2.Service(**base)  # type: ignore[arg-type]


WORKLOAD_REJECTIONS = [
    (_wl(uid=""), "workload.uid"),
    (_wl(name=""), "workload.name"),
    (_wl(namespace=""), "workload.namespace"),
    (_wl(addresses=[b"\x0a\x00\x00"]), "workload.addresses[0]"),
    (_wl(addresses=[bytes(4), bytes(5)]), "workload.addresses[1]"),
    (_wl(tunnel_protocol=workload_pb2.LEGACY_ISTIO_MTLS), "unsupported tunnel protocol"),
    (_wl(tunnel_protocol=7), "workload.tunnel_protocol"),
    (_wl(service_account="Not_Valid"), "workload.identity"),
    (_wl(trust_domain="UPPER.case"), "workload.identity"),
    (_wl(services={"no-slash": workload_pb2.PortList()}), "no-slash"),
    (
        _wl(services={"ns/h": workload_pb2.PortList(ports=[workload_pb2.Port(service_port=70000)])}),
        "service_port",
    ),
    (_wl(waypoint=workload_pb2.GatewayAddress(hbone_mtls_port=15008)), "workload.waypoint"),
    (_wl(status=9), "workload.status"),
]


@pytest.mark.parametrize(
    ("pb", "field"),
    WORKLOAD_REJECTIONS,
    ids=[
        "a workload without uid is rejected",
        "a workload without name is rejected",
        "a workload without namespace is rejected",
        "a 3-byte address is rejected",
        "a 5-byte second address is rejected naming its index",
        "legacy istio mTLS is an unsupported tunnel protocol",
        "an unknown tunnel protocol number is rejected",
        "an invalid service account makes an invalid identity",
        "an upper-case trust domain makes an invalid identity",
        "a services key without a slash is rejected",
        "a service port above 65535 is rejected",
        "a waypoint with neither hostname nor address is rejected",
        "an unknown status number is rejected",
    ],
)
def test_bad_workload_is_rejected_naming_the_field(pb: workload_pb2.Workload, field: str) -> None:
    with pytest.raises(ConversionError, match=field.replace("[", r"\[").replace("]", r"\]")):
        workload_from_proto(pb)


@pytest.mark.parametrize(
    ("pb", "field"),
    [
        (_svc(hostname=""), "service.hostname"),
        (_svc(addresses=[workload_pb2.NetworkAddress(address=b"\x01")]), "service.addresses"),
        (_svc(ports=[workload_pb2.Port(service_port=80, target_port=65536)]), "service.ports"),
        (_svc(load_balancing=workload_pb2.LoadBalancing(routing_preference=[42])), "routing_preference"),
    ],
    ids=[
        "a service without hostname is rejected",
        "a one-byte VIP is rejected",
        "a target port above 65535 is rejected",
        "an unknown load-balancing scope is rejected",
    ],
)
def test_bad_service_is_rejected_naming_the_field(pb: workload_pb2.Service, field: str) -> None:
    with pytest.raises(ConversionError, match=field):
        service_from_proto(pb)


def _authz_with_match(m: authorization_pb2.Match) -> authorization_pb2.Authorization:
    return authorization_pb2.Authorization(
        name="p", namespace="ns", groups=[authorization_pb2.Group(rules=[authorization_pb2.Rules(matches=[m])])]
    )


@pytest.mark.parametrize(
    ("pb", "field"),
    [
        (authorization_pb2.Authorization(namespace="ns"), "authorization.name"),
        (authorization_pb2.Authorization(name="p", action=5), "authorization.action"),
        (_authz_with_match(authorization_pb2.Match(principals=[authorization_pb2.StringMatch()])), "principals"),
        (
            _authz_with_match(authorization_pb2.Match(source_ips=[authorization_pb2.Address(address=b"\x01\x02")])),
            "source_ips",
        ),
        (
            _authz_with_match(
                authorization_pb2.Match(destination_ips=[authorization_pb2.Address(address=bytes(4), length=33)])
            ),
            "destination_ips",
        ),
        (_authz_with_match(authorization_pb2.Match(destination_ports=[99999])), "destination_ports"),
        (
            _authz_with_match(
                authorization_pb2.Match(service_accounts=[authorization_pb2.ServiceAccountMatch(namespace="a")])
            ),
            "serviceAccount",
        ),
    ],
    ids=[
        "a policy without name is rejected",
        "an unknown action is rejected",
        "a string match with no kind is rejected",
        "a two-byte source ip is rejected",
        "a /33 IPv4 prefix is rejected",
        "a destination port above 65535 is rejected",
        "a service account match without service account is rejected",
    ],
)
def test_bad_authorization_is_rejected_naming_the_field(pb: authorization_pb2.Authorization, field: str) -> None:
    with pytest.raises(ConversionError, match=field):
        authorization_from_proto(pb)


def test_empty_address_is_rejected() -> None:
    with pytest.raises(ConversionError, match="neither a workload nor a service"):
        address_from_proto(workload_pb2.Address())


def test_model_with_a_non_ip_address_cannot_be_encoded() -> None:
    with pytest.raises(ConversionError, match=r"workload.addresses\[0\]"):
        workload_to_proto(builders.workload("a", "not-an-ip"))


# ------------------------------------------------------------------------------------------ decode cache


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
def test_raw_addresses_decode_to_the_same_text_as_ipaddress(raw: bytes) -> None:
    pb = workload_pb2.Workload(uid="u", name="n", namespace="ns", addresses=[raw])
    assert workload_from_proto(pb).addresses == (str(ipaddress.ip_address(raw)),)


@settings(max_examples=40)
@given(st.lists(workloads | services, min_size=1, max_size=5))
def test_a_batch_decoded_with_one_cache_equals_each_decoded_alone(models: list[Workload | Service]) -> None:
    wires = [workload_pb2.Address.FromString(address_to_proto(m).SerializeToString()) for m in models]
    cache = DecodeCache()
    assert [address_from_proto(pb, cache) for pb in wires] == [address_from_proto(pb) for pb in wires] == models


def test_a_batch_shares_equal_services_maps_and_keeps_different_ones_apart() -> None:
    ports = {"default/a.svc": (Port(80, 8080),)}
    a1, a2 = (builders.workload(n, ip, services=ports) for n, ip in (("a1", "10.0.0.1"), ("a2", "10.0.0.2")))
    b = builders.workload("b", "10.0.0.3", services={"default/a.svc": (Port(80, 9090),)})
    cache = DecodeCache()
    d1, d2, db = (workload_from_proto(workload_to_proto(w), cache) for w in (a1, a2, b))
    assert d1.services is d2.services and d1.services == ports
    assert db.services == b.services and db.services is not d1.services


@pytest.mark.parametrize(
    ("good", "bad", "field"),
    [
        (_wl(), _wl(service_account="Not_Valid"), "workload.identity"),
        (
            _wl(services={"ns/h": workload_pb2.PortList(ports=[workload_pb2.Port(service_port=80)])}),
            _wl(services={"ns/h": workload_pb2.PortList(ports=[workload_pb2.Port(service_port=70000)])}),
            r"workload.services\['ns/h'\].ports\[0\].service_port",
        ),
        (
            _wl(services={"ns/h": workload_pb2.PortList()}),
            _wl(services={"no-slash": workload_pb2.PortList()}),
            r"workload.services\['no-slash'\]",
        ),
        (_wl(), _wl(addresses=[bytes(4), bytes(3)]), r"workload.addresses\[1\]"),
    ],
    ids=[
        "a bad identity is rejected after good ones were cached",
        "a bad port is rejected after a good port list was cached",
        "a bad services key is rejected after a good map was cached",
        "a bad second address is rejected naming its index",
    ],
)
def test_a_shared_cache_never_lets_a_bad_workload_through(
    good: workload_pb2.Workload, bad: workload_pb2.Workload, field: str
) -> None:
    cache = DecodeCache()
    workload_from_proto(good, cache)
    with pytest.raises(ConversionError, match=field):
        workload_from_proto(bad, cache)
    with pytest.raises(ConversionError, match=field):
        workload_from_proto(bad, cache)  # a failure is not cached either
