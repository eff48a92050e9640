"""HBONE header values: the strict :authority parser and the lenient baggage/forwarded/traceparent codecs."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.hbone import (
    Authority,
    InvalidAuthority,
    TraceParent,
    WorkloadBaggage,
    build_authority,
    build_baggage,
    build_forwarded,
    build_traceparent,
    parse_authority,
    parse_baggage,
    parse_forwarded,
    parse_traceparent,
)

ports = st.integers(min_value=1, max_value=65535)


@given(ip=st.ip_addresses(v=4), port=ports)
def test_any_ipv4_authority_round_trips(ip, port):
    assert parse_authority(f"{ip}:{port}") == Authority(ip, port)
    assert str(parse_authority(f"{ip}:{port}")) == f"{ip}:{port}"


@given(ip=st.ip_addresses(v=6), port=ports)
def test_any_ipv6_authority_round_trips_in_canonical_form(ip, port):
    parsed = parse_authority(f"[{ip.exploded}]:{port}")
    assert parsed == Authority(ip, port)
    assert str(parsed) == f"[{ip.compressed}]:{port}" == build_authority(str(ip), port)


@given(text=st.text(max_size=60))
def test_arbitrary_text_is_either_a_valid_authority_or_invalid_authority(text):
    try:
        parsed = parse_authority(text)
    except InvalidAuthority as exc:
        assert exc.status_hint == 400 and exc.authority == text
    else:
        assert 1 <= parsed.port <= 65535 and parse_authority(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("reviews.default.svc.cluster.local:9080", "not an IP address literal"),
        ("10.0.0.1", "port is missing"),
        ("10.0.0.1:", "not a decimal number"),
        ("10.0.0.1:0", "outside 1..65535"),
        ("10.0.0.1:65536", "outside 1..65535"),
        ("10.0.0.1:+80", "not a decimal number"),
        ("10.0.0.1:８０", "non-ASCII"),
        ("010.0.0.1:80", "not an IP address literal"),
        ("fd00::1:80", "in brackets"),
        ("[fd00::1]", "port is missing"),
        ("[fd00::1:80", "no closing"),
        ("[fe80::1%eth0]:80", "zone"),
        ("[10.0.0.1]:80", "not an IPv6 address"),
        ("10.0.0.1 :80", "whitespace"),
    ],
    ids=[
        "an empty authority is invalid",
        "a service hostname is invalid: HBONE targets IPs",
        "an IP without a port is invalid",
        "an empty port is invalid",
        "port 0 is invalid",
        "port 65536 is invalid",
        "a signed port is invalid",
        "full-width digits are invalid",
        "an IPv4 with leading zeros is invalid",
        "an unbracketed IPv6 is invalid",
        "a bracketed IPv6 without a port is invalid",
        "an unterminated bracket is invalid",
        "an IPv6 zone id is invalid",
        "an IPv4 in brackets is invalid",
        "whitespace is invalid",
    ],
)
def test_invalid_authorities_say_why(text, reason):
    with pytest.raises(InvalidAuthority, match=reason):
        parse_authority(text)


def test_build_authority_refuses_a_hostname():
    with pytest.raises(InvalidAuthority):
        build_authority("reviews", 9080)


def test_baggage_round_trips_and_omits_empty_values():
    header = WorkloadBaggage(
        cluster="Kubernetes", namespace="default", workload_type="deployment", workload_name="reviews-v1",
        service_name="reviews", service_version="v1",
    ).to_header()
    assert header == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=reviews-v1,"
        "service.name=reviews,service.version=v1"
    )
    parsed = WorkloadBaggage.parse(header)
    assert (parsed.workload_type, parsed.workload_name, parsed.region) == ("deployment", "reviews-v1", "")


def test_baggage_values_are_percent_encoded_and_garbage_members_skipped():
    header = build_baggage({"k": "a b,c;d", "empty": ""})
    assert header == "k=a%20b%2Cc%3Bd"
    assert parse_baggage(header + ", junk ,=x, ok = 1 ;prop=2") == {"k": "a b,c;d", "ok": "1"}


def test_baggage_refuses_a_key_that_is_not_a_token():
    with pytest.raises(ValueError, match="not an HTTP token"):
        build_baggage({"bad key": "v"})


@pytest.mark.parametrize(
    ("ip", "port", "host", "expected"),
    [
        ("10.0.0.1", 4711, None, 'for="10.0.0.1:4711"'),
        ("fd00::1", 4711, "reviews.default.svc.cluster.local", 'for="[fd00::1]:4711";host=reviews.default.svc.cluster.local'),
        ("10.0.0.1", None, None, 'for="10.0.0.1"'),
    ],
    ids=["IPv4 with port", "IPv6 with port and service host", "IPv4 without port"],
)
def test_forwarded_round_trips(ip, port, host, expected):
    header = build_forwarded(ip, port, host)
    assert header == expected
    parsed = parse_forwarded(header)
    assert parsed is not None and (str(parsed.for_ip), parsed.for_port, parsed.host) == (ip, port, host)


@pytest.mark.parametrize("text", ["", "by=10.0.0.1", "for=unknown", "for=_hidden", 'for="[zz]:1"'],
                         ids=["empty", "no for", "unknown node", "obfuscated node", "bad IPv6"])
def test_forwarded_garbage_parses_to_none(text):
    assert parse_forwarded(text) is None


def test_traceparent_is_built_from_the_given_random_bytes():
    header = build_traceparent(bytes(range(1, 25)))
    assert header == "00-0102030405060708090a0b0c0d0e0f10-1112131415161718-00"
    assert parse_traceparent(header) == TraceParent(bytes(range(1, 17)), bytes(range(17, 25)), 0)


def test_all_zero_random_bytes_still_give_a_valid_traceparent():
    assert parse_traceparent(build_traceparent(bytes(24))) is not None


@pytest.mark.parametrize(
    "text",
    ["", "00-" + "0" * 32 + "-" + "1" * 16 + "-00", "01-" + "1" * 32 + "-" + "1" * 16 + "-00", "00-xyz-abc-00"],
    ids=["empty", "all-zero trace id", "unknown version", "not hex"],
)
def test_traceparent_garbage_parses_to_none(text):
    assert parse_traceparent(text) is None


def test_authority_host_drops_brackets():
    assert Authority(IPv6Address("fd00::1"), 80).host == "fd00::1"
    assert str(Authority(IPv4Address("10.0.0.1"), 80)) == "10.0.0.1:80"
