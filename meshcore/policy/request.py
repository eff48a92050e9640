"""``RequestFacts``: what L7 authorization knows about one HTTP request at a waypoint.

Built once per request by the waypoint and handed to ``evaluate_l7``; everything matching needs is
parsed here, once, and construction validates (``InvalidRequestFactsError``), so a value that exists
is well formed. What the caller passes, and must have done before:
- ``source_ip``/``source_principal``: the original client (the HBONE peer's verified identity and the
  client address ztunnel reported), not the waypoint's or ztunnel's own;
- ``destination_ip``/``destination_port``: the HBONE CONNECT target (service VIP:port or pod IP:port);
- ``path``: the request target exactly as it will be forwarded upstream, *after* the waypoint's path
  normalisation (Istio's default, BASE: RFC 3986 dot segments resolved, so ``/a/../b`` is ``/b``);
  matching then drops the query string and fragment, as Envoy's path matcher does;
- ``remote_ip``: ``source_ip`` unless the caller trusts a proxy's X-Forwarded-For (Istio's
  numTrustedProxies, default 0); it is never read from request headers here.
Istio matches hosts against the authority as sent, port included, case-insensitively: ``host`` is the
lower-cased authority, ``hostname`` the same without its port (for logs and routing, not matching).
Header names are lower-cased and repeated headers keep every value; a ``host`` header is folded into
the authority (HTTP/1's Host is HTTP/2's ``:authority``). Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcore.identity import SpiffeId
from meshcore.policy.errors import InvalidConnFactsError, PolicyError
from meshcore.policy.facts import parse_ip

# RFC 9110 token characters (method and header names).
# HTTP tokens (method, header names) and what a header value may not hold; checked in C, one call each.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
_EMPTY_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType({})


class InvalidRequestFactsError(PolicyError):
    """Request facts that do not describe an HTTP request (bad address, port, method, path or header)."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"request {field}={value!r}: {problem}")


@functools.lru_cache(maxsize=4096)  # the same few addresses repeat on every request
def _ip(value: str, name: str) -> tuple[int, int]:
    try:
        return parse_ip(value, name)
    except InvalidConnFactsError:
        raise InvalidRequestFactsError(name, value, "not an IPv4 or IPv6 address") from None


_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")


def _has_control(value: str) -> bool:
    return _CONTROL_RE.search(value) is not None


def _strip_port(authority: str) -> str:
    """``host:port`` -> ``host``; ``[v6]:port`` -> ``[v6]``; anything else unchanged."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    head, sep, port = authority.rpartition(":")
    if sep and ":" not in head and port.isdigit():
        return head
    return authority


class TrustedHeaders(dict[str, tuple[str, ...]]):
    """Headers a validating HTTP parser already checked (names lower-case tokens, values without CR, LF,
    NUL): ``RequestFacts`` takes them without checking every character again. Build with
    ``trusted_headers``; only code that received the headers from such a parser may do so."""


def trusted_headers(pairs: Iterable[tuple[str, str]]) -> TrustedHeaders:
    """``(name, value)`` pairs from a validating parser, names already lower-case, in order."""
    out = TrustedHeaders()
    get = out.get
    for name, value in pairs:
        seen = get(name)
        out[name] = (value,) if seen is None else (*seen, value)
    return out


def _headers(raw: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    if type(raw) is TrustedHeaders:
        return dict(raw)
    out: dict[str, tuple[str, ...]] = {}
    token, bad_value = _TOKEN_RE.fullmatch, _BAD_VALUE_RE.search
    for name, values in raw.items():
        if not isinstance(name, str) or token(name) is None:
            raise InvalidRequestFactsError("headers", name, "header name is not an HTTP token")
        vals = (values,) if isinstance(values, str) else tuple(values)
        for v in vals:
            if not isinstance(v, str) or bad_value(v) is not None:
                raise InvalidRequestFactsError(
                    f"headers[{name!r}]", v, "header value is not a string without CR, LF, NUL"
                )
        key = name.lower()
        out[key] = out.get(key, ()) + vals
    return out


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One HTTP request as L7 policy sees it."""

    # Original client address (the source workload), as the HBONE tunnel reported it.
    source_ip: str
    # The CONNECT target the request travels to: service VIP or pod IP, and its port.
    destination_ip: str
    destination_port: int
    # Request method, case-sensitive (Istio matches methods exactly as sent).
    method: str
    # Normalised request target: "/..." (query allowed), "*" (OPTIONS *) or "" (none, e.g. CONNECT).
    path: str
    # Host / :authority as sent ("" when the request had none).
    authority: str
    # Header name (any case) -> its values in order (a bare string is one value); after construction
    # a read-only mapping of lower-case names to tuples.
    headers: Mapping[str, Sequence[str]] = field(default_factory=lambda: _EMPTY_HEADERS)
    # Verified peer identity of the client; None when the request did not come over mTLS.
    source_principal: SpiffeId | None = None
    # remote.ip; None means source_ip (no trusted proxy hops).
    remote_ip: str | None = None

    # Derived once at construction; not part of equality.
    # ``td/ns/<ns>/sa/<sa>``: the identity as principals are written (no ``spiffe://``).
    principal: str | None = field(init=False, repr=False, compare=False)
    # The namespace of source_principal (source.namespace); None without identity.
    source_namespace: str | None = field(init=False, repr=False, compare=False)
    # Lower-cased authority, port included: what ``hosts`` match.
    host: str = field(init=False, repr=False, compare=False)
    # ``host`` without its port.
    hostname: str = field(init=False, repr=False, compare=False)
    # ``path`` without query string and fragment: what ``paths`` match.
    match_path: str = field(init=False, repr=False, compare=False)
    src_addr: tuple[int, int] = field(init=False, repr=False, compare=False)
    remote_addr: tuple[int, int] = field(init=False, repr=False, compare=False)
    dst_addr: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        port = self.destination_port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise InvalidRequestFactsError("destination_port", port, "not a TCP port (0..65535)")
        if not isinstance(self.method, str) or _TOKEN_RE.fullmatch(self.method) is None:
            raise InvalidRequestFactsError("method", self.method, "not an HTTP method token")
        path = self.path
        if not isinstance(path, str) or _has_control(path):
            raise InvalidRequestFactsError(
                "path", path, "must be a string without spaces or control characters"
            )
        if path and path != "*" and not path.startswith("/"):
            raise InvalidRequestFactsError(
                "path", path, "must be origin-form ('/...'), '*' or empty; convert absolute-form first"
            )
        authority = self.authority
        if not isinstance(authority, str) or _has_control(authority) or "/" in authority:
            raise InvalidRequestFactsError("authority", authority, "not a host[:port] without spaces or '/'")
        ident = self.source_principal
        if ident is not None and not isinstance(ident, SpiffeId):
            raise InvalidRequestFactsError("source_principal", ident, "must be a SpiffeId or None")
        headers = _headers(self.headers) if self.headers else {}
        # HTTP/1's Host is the authority (Envoy keeps it only as :authority); never a header of its own.
        headers.pop("host", None)
        src = _ip(self.source_ip, "source_ip")
        remote = src if self.remote_ip is None else _ip(self.remote_ip, "remote_ip")
        host = authority.lower()
        cut = len(path)
        for sep in ("?", "#"):
            i = path.find(sep)
            if i != -1 and i < cut:
                cut = i
        setattr_ = object.__setattr__
        setattr_(self, "headers", MappingProxyType(headers) if headers else _EMPTY_HEADERS)
        setattr_(self, "principal", ident.principal if ident is not None else None)
        setattr_(self, "source_namespace", ident.namespace if ident is not None else None)
        setattr_(self, "host", host)
        setattr_(self, "hostname", _strip_port(host))
        setattr_(self, "match_path", path[:cut])
        setattr_(self, "src_addr", src)
        setattr_(self, "remote_addr", remote)
        setattr_(self, "dst_addr", _ip(self.destination_ip, "destination_ip"))

    def header_values(self, name: str) -> Sequence[str] | None:
        """The values of header ``name`` (lower-case), or None when absent. Pseudo-headers
        ``:method``, ``:path`` (query included) and ``:authority`` read the request line."""
        if name.startswith(":"):
            if name == ":method":
                return (self.method,)
            if name == ":path":
                return (self.path,) if self.path else None
            if name == ":authority":
                return (self.authority,) if self.authority else None
        return self.headers.get(name)
