"""``ConnFacts``: what L4 authorization knows about one connection (ztunnel's ``rbac::Connection``).

Built once per inbound connection at the destination ztunnel and re-used every time the policy set
changes, so the parsing happens here, once: IP literals are parsed (and IPv4-mapped IPv6 addresses
canonicalised to IPv4, as ztunnel's ``socket::to_canonical`` does) into integers, and the peer
identity's principal string is rendered. Construction validates and raises ``InvalidConnFactsError``;
a value that exists is always well formed. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshcore.identity import SpiffeId
from meshcore.policy.errors import InvalidConnFactsError


def _fast_ipv4(value: str) -> int | None:
    """A plain dotted quad as an integer, or None to let ``ipaddress`` decide (it is ~5x slower)."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    result = 0
    for part in parts:
        # ipaddress refuses leading zeros and non-ASCII digits; leave those to it.
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        result = result << 8 | octet
    return result


def parse_ip(value: str, field_name: str) -> tuple[int, int]:
    """Parse an IP literal to ``(version, integer)``; IPv4-mapped IPv6 becomes IPv4."""
    fast = _fast_ipv4(value) if isinstance(value, str) else None
    if fast is not None:
        return 4, fast
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as e:
        raise InvalidConnFactsError(field_name, value, "not an IPv4 or IPv6 address") from e
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


@dataclass(frozen=True, slots=True)
class ConnFacts:
    """One connection as L4 policy sees it. ``dst`` is the real upstream pod ip:port (after port
    resolution), never a service VIP or the HBONE port."""

    # Peer address as seen on the socket (or, on HBONE, the outer TLS connection's peer).
    src_ip: str
    src_port: int
    # The pod address and port the connection is delivered to.
    dst_ip: str
    dst_port: int
    # Peer identity from the verified mTLS certificate; None on the plaintext 15006 path.
    src_identity: SpiffeId | None
    # Network of the destination; carried for logs, not matched (policy applies on every network).
    dst_network: str = ""

    # Derived once at construction; not part of equality.
    src_addr: tuple[int, int] = field(init=False, repr=False, compare=False)
    dst_addr: tuple[int, int] = field(init=False, repr=False, compare=False)
    # ``td/ns/<ns>/sa/<sa>``: the identity without ``spiffe://``, the form principals compare to.
    principal: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("src_port", "dst_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                raise InvalidConnFactsError(name, port, "not a TCP port (0..65535)")
        object.__setattr__(self, "src_addr", parse_ip(self.src_ip, "src_ip"))
        object.__setattr__(self, "dst_addr", parse_ip(self.dst_ip, "dst_ip"))
        ident = self.src_identity
        object.__setattr__(self, "principal", ident.principal if ident is not None else None)
