"""HBONE request header values: the CONNECT ``:authority`` and the ``baggage``, ``forwarded`` and
``traceparent`` headers ztunnel sends (reference/istio-ambient-protocols.md §4).

Pure functions and frozen values; no I/O, no clock, no randomness (callers pass random bytes in).
The authority parser is strict because it decides where the server connects: an IP literal (IPv4
dotted quad or bracketed IPv6 without a zone) and a decimal port in 1..65535, nothing else. The
informational headers (baggage, forwarded, traceparent) are parsed leniently: garbage yields ``None``
or is skipped, never an exception, since a bad one must not fail an otherwise valid tunnel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import quote, unquote

from meshcore.hbone.errors import InvalidAuthority

_PORT_RE = re.compile(r"[0-9]{1,5}")
# RFC 9110 token: the characters allowed in a baggage key.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# W3C baggage-octet, minus '%' (which starts an escape): kept verbatim when encoding values.
_BAGGAGE_SAFE = "!#$&'()*+-./:<=>?@[]^_`{|}~"
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# W3C baggage limits: at most 64 list members; we stop reading after that many.
MAX_BAGGAGE_MEMBERS = 64


@dataclass(frozen=True, slots=True)
class Authority:
    """A CONNECT target: an IP literal and a port. ``str()`` gives the canonical wire form."""

    ip: IPv4Address | IPv6Address
    port: int

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    @property
    def host(self) -> str:
        """The IP as text, without brackets (what ``socket.connect`` wants)."""
        return str(self.ip)


def parse_authority(text: str) -> Authority:
    """Parse ``<ipv4>:<port>`` or ``[<ipv6>]:<port>``; raise ``InvalidAuthority`` saying what is wrong."""
    if not text:
        raise InvalidAuthority(text, "it is empty")
    if not text.isascii() or any(c.isspace() for c in text):
        raise InvalidAuthority(text, "it contains whitespace or non-ASCII characters")
    ip: IPv4Address | IPv6Address
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidAuthority(text, "the IPv6 address has no closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise InvalidAuthority(text, "the port is missing after ']'")
        port_text = rest[1:]
        if "%" in host:
            raise InvalidAuthority(text, "IPv6 zone identifiers are not allowed")
        try:
            ip = IPv6Address(host)
        except ValueError:
            raise InvalidAuthority(text, f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise InvalidAuthority(text, "the port is missing")
        if ":" in host:
            raise InvalidAuthority(text, "an IPv6 address must be written in brackets")
        try:
            ip = IPv4Address(host)
        except ValueError:
            raise InvalidAuthority(text, f"host {host!r} is not an IP address literal") from None
    if not _PORT_RE.fullmatch(port_text):
        raise InvalidAuthority(text, f"port {port_text!r} is not a decimal number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidAuthority(text, f"port {port} is outside 1..65535")
    return Authority(ip, port)


def build_authority(host: str, port: int) -> str:
    """The canonical ``:authority`` for an IP and port; ``InvalidAuthority`` if either is not valid."""
    try:
        ip = ip_address(host)
    except ValueError:
        raise InvalidAuthority(f"{host}:{port}", f"host {host!r} is not an IP address literal") from None
    if isinstance(ip, IPv6Address) and ip.scope_id:
        raise InvalidAuthority(f"{host}:{port}", "IPv6 zone identifiers are not allowed")
    if not 1 <= port <= 65535:
        raise InvalidAuthority(f"{host}:{port}", f"port {port} is outside 1..65535")
    return str(Authority(ip, port))


def find_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


# --- baggage (W3C Baggage; ztunnel src/baggage.rs) -------------------------------------------------


def build_baggage(members: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Join ``key=value`` members with ``,``; empty values are omitted, values are percent-encoded.

    Raises ``ValueError`` for a key that is not an RFC 9110 token (a caller bug).
    """
    items = members.items() if isinstance(members, Mapping) else members
    parts = []
    for key, value in items:
        if not _TOKEN_RE.fullmatch(key):
            raise ValueError(f"baggage key {key!r} is not an HTTP token")
        if value:
            parts.append(f"{key}={quote(value, safe=_BAGGAGE_SAFE)}")
    return ",".join(parts)


def parse_baggage(text: str) -> dict[str, str]:
    """The ``key -> value`` members of a baggage header; malformed members are skipped, properties
    (``;...``) dropped, later duplicates win. Never raises."""
    result: dict[str, str] = {}
    for member in text.split(",")[:MAX_BAGGAGE_MEMBERS]:
        key, sep, value = member.split(";", 1)[0].partition("=")
        key, value = key.strip(), value.strip()
        if sep and _TOKEN_RE.fullmatch(key):
            result[key] = unquote(value)
    return result


WORKLOAD_TYPES = ("deployment", "cronjob", "pod", "job")


@dataclass(frozen=True, slots=True)
class WorkloadBaggage:
    """What ztunnel says about a workload in ``baggage`` (source on requests, destination on 200s)."""

    cluster: str = ""
    namespace: str = ""
    workload_type: str = ""  # one of WORKLOAD_TYPES, or "" when unknown
    workload_name: str = ""
    service_name: str = ""  # the canonical service name
    service_version: str = ""  # the canonical revision
    region: str = ""
    zone: str = ""

    def to_header(self) -> str:
        """The header value, members in ztunnel's order, empty ones omitted."""
        workload_key = f"k8s.{self.workload_type}.name" if self.workload_type in WORKLOAD_TYPES else ""
        members = [
            ("k8s.cluster.name", self.cluster),
            ("k8s.namespace.name", self.namespace),
            (workload_key, self.workload_name if workload_key else ""),
            ("service.name", self.service_name),
            ("service.version", self.service_version),
            ("cloud.region", self.region),
            ("cloud.availability_zone", self.zone),
        ]
        return build_baggage((k, v) for k, v in members if k)

    @classmethod
    def parse(cls, text: str) -> WorkloadBaggage:
        """Read the known members; unknown or malformed ones are ignored."""
        members = parse_baggage(text)
        workload_type = next((t for t in WORKLOAD_TYPES if f"k8s.{t}.name" in members), "")
        return cls(
            cluster=members.get("k8s.cluster.name", ""),
            namespace=members.get("k8s.namespace.name", ""),
            workload_type=workload_type,
            workload_name=members.get(f"k8s.{workload_type}.name", "") if workload_type else "",
            service_name=members.get("service.name", ""),
            service_version=members.get("service.version", ""),
            region=members.get("cloud.region", ""),
            zone=members.get("cloud.availability_zone", ""),
        )


# --- forwarded (RFC 7239) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The first element of a ``forwarded`` header: who the original client was."""

    for_ip: IPv4Address | IPv6Address
    for_port: int | None = None
    host: str | None = None


def build_forwarded(for_ip: str, for_port: int | None = None, host: str | None = None) -> str:
    """``for="<ip>:<port>"`` (IPv6 bracketed, always quoted as ztunnel does), plus ``;host=<host>``."""
    ip = ip_address(for_ip)
    node = f"[{ip}]" if ip.version == 6 else str(ip)
    if for_port is not None:
        node = f"{node}:{for_port}"
    value = f'for="{node}"'
    if host:
        value += f";host={host}"
    return value


def parse_forwarded(text: str) -> Forwarded | None:
    """The ``for`` (and ``host``) of the first element, or None when absent or not an IP. Never raises."""
    params: dict[str, str] = {}
    for pair in text.split(",", 1)[0].split(";"):
        key, sep, value = pair.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    node = params.get("for")
    if not node:
        return None
    port: int | None = None
    if node.startswith("["):
        host_text, _, rest = node[1:].partition("]")
        if rest.startswith(":") and _PORT_RE.fullmatch(rest[1:]):
            port = int(rest[1:])
    elif node.count(":") == 1:
        host_text, _, port_text = node.partition(":")
        if _PORT_RE.fullmatch(port_text):
            port = int(port_text)
    else:
        host_text = node
    try:
        ip = ip_address(host_text)
    except ValueError:
        return None
    if port is not None and not 0 < port <= 65535:
        port = None
    return Forwarded(ip, port, params.get("host") or None)


# --- traceparent (W3C Trace Context) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C ``traceparent``: 16-byte trace id, 8-byte parent span id, flags."""

    trace_id: bytes
    parent_id: bytes
    flags: int = 0

    def __str__(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.parent_id.hex()}-{self.flags:02x}"


def build_traceparent(random_bytes: bytes) -> str:
    """A fresh ``traceparent`` from 24 random bytes (16 trace id + 8 span id), not sampled, like ztunnel.

    The caller supplies the randomness (``os.urandom(24)``) so this stays pure. All-zero ids are invalid
    in W3C, so a zero id gets its last bit set.
    """
    if len(random_bytes) != 24:
        raise ValueError(f"traceparent needs exactly 24 random bytes, got {len(random_bytes)}")
    trace_id, parent_id = random_bytes[:16], random_bytes[16:]
    if not any(trace_id):
        trace_id = trace_id[:-1] + b"\x01"
    if not any(parent_id):
        parent_id = parent_id[:-1] + b"\x01"
    return str(TraceParent(trace_id, parent_id, 0))


def parse_traceparent(text: str) -> TraceParent | None:
    """Parse a version-00 ``traceparent``; None if malformed or all-zero. Never raises."""
    match = _TRACEPARENT_RE.fullmatch(text.strip())
    if match is None or match.group(1) != "00":
        return None
    trace_id, parent_id = bytes.fromhex(match.group(2)), bytes.fromhex(match.group(3))
    if not any(trace_id) or not any(parent_id):
        return None
    return TraceParent(trace_id, parent_id, int(match.group(4), 16))
