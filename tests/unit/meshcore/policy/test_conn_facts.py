"""ConnFacts: validated once at construction, with addresses and principal pre-computed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.policy import ConnFacts, InvalidConnFactsError
from meshcore.policy.facts import parse_ip


def test_facts_precompute_addresses_and_principal() -> None:
    facts = ConnFacts("10.0.0.1", 1234, "2001:db8::2", 80, SpiffeId("td", "ns1", "sa1"))
    assert facts.src_addr == (4, 0x0A000001)
    assert facts.dst_addr == (6, 0x20010DB8 << 96 | 2)
    assert facts.principal == "td/ns/ns1/sa/sa1"


def test_plaintext_facts_have_no_principal() -> None:
    assert ConnFacts("10.0.0.1", 1, "10.0.0.2", 2, None).principal is None


def test_ipv4_mapped_ipv6_peer_is_canonicalised_to_ipv4() -> None:
    assert ConnFacts("::ffff:10.0.0.1", 1, "10.0.0.2", 2, None).src_addr == (4, 0x0A000001)


def test_equal_facts_compare_equal_regardless_of_derived_fields() -> None:
    assert ConnFacts("10.0.0.1", 1, "10.0.0.2", 2, None) == ConnFacts("10.0.0.1", 1, "10.0.0.2", 2, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"src_ip": "10.0.0.256"}, "src_ip"),
        ({"dst_ip": "pod.default"}, "dst_ip"),
        ({"src_port": 70000}, "src_port"),
        ({"dst_port": -1}, "dst_port"),
        ({"dst_port": True}, "dst_port"),
    ],
    ids=[
        "a source that is not an IP is refused",
        "a destination hostname is refused",
        "a source port above 65535 is refused",
        "a negative destination port is refused",
        "a boolean is not a port",
    ],
)
def test_bad_facts_are_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "src_ip": "10.0.0.1",
        "src_port": 1,
        "dst_ip": "10.0.0.2",
        "dst_port": 2,
        "src_identity": None,
    }
    args.update(kwargs)
    with pytest.raises(InvalidConnFactsError) as info:
        ConnFacts(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


@given(st.ip_addresses())
def test_parse_ip_agrees_with_ipaddress_for_every_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    expected = (4, int(mapped)) if mapped is not None else (ip.version, int(ip))
    assert parse_ip(str(ip), "src_ip") == expected


@given(st.text(alphabet="0123456789.:abcdef%x²٣ ", max_size=20))
def test_parse_ip_accepts_exactly_what_ipaddress_accepts(text: str) -> None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        with pytest.raises(InvalidConnFactsError):
            parse_ip(text, "src_ip")
    else:
        assert parse_ip(text, "src_ip")[1] in (int(ip), int(getattr(ip, "ipv4_mapped", None) or ip))
