"""Istio's AuthorizationPolicy text forms, as people write them, read into model values (pure).

Every place that accepts policies as text reads them here (istiod_lite's AuthorizationPolicy registry,
ztunnel's local config file), so a policy means the same wherever it was written. Strings: ``*`` is
presence, ``*x`` a suffix, ``x*`` a prefix, anything else exact. Addresses: a CIDR (host bits dropped)
or a single IP, which is a /32 (/128). Text that is no address raises ``ValueError``; the caller says
where it was. No I/O, no logging.
"""

from __future__ import annotations

import ipaddress

from meshcore.model.authorization import IpNet, StringMatch


def string_match(value: str) -> StringMatch:
    """Istio's AuthorizationPolicy string syntax: ``*``, ``*suffix``, ``prefix*`` or exact."""
    if value == "*":
        return StringMatch("presence")
    if value.startswith("*"):
        return StringMatch("suffix", value[1:])
    if value.endswith("*"):
        return StringMatch("prefix", value[:-1])
    return StringMatch("exact", value)


def parse_ip_net(value: str) -> IpNet:
    """``10.0.0.0/8`` or a single address (a /32 or /128); raises ValueError otherwise."""
    if "/" in value:
        net = ipaddress.ip_network(value, strict=False)
        return IpNet(str(net.network_address), net.prefixlen)
    ip = ipaddress.ip_address(value)
    return IpNet(str(ip), ip.max_prefixlen)


_HEADER_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header name as carried (a lower-case HTTP token), or None."""
    if not name:
        return "the header name is empty"
    if not set(name) <= _HEADER_TOKEN:
        return f"header name {name!r} is not a lower-case HTTP token"
    return None
