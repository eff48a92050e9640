"""Header rules of the proxy, as Envoy/Istio apply them. Pure.

``prepare_request`` turns the headers a client sent into the ones the handler sees and the upstream
gets: hop-by-hop headers dropped (``connection`` and every header it names, ``keep-alive``,
``proxy-connection``, ``transfer-encoding`` (framing is ours), ``te`` unless it is exactly
``trailers``, ``upgrade`` unless the request is an upgrade we pass through, ``http2-settings``), a
client's ``x-request-id`` kept or a uuid4 made, ``x-forwarded-proto`` kept if an edge proxy set it,
else set to the scheme the client used (Envoy's behaviour when it is not the edge). ``traceparent``, ``tracestate`` and ``baggage`` are end-to-end headers: never touched.
``prepare_response`` drops the same hop-by-hop set from a response.

Invariants: names are lowercase ``str`` in, lowercase ``str`` out; order of the kept headers is
preserved; nothing here ever adds a header twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "http2-settings"}
)


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lowercase header names listed in every ``Connection`` header."""
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def strip_hop_by_hop(headers: Iterable[tuple[str, str]], *, keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers (see the module docstring); ``keep_upgrade`` keeps ``upgrade`` and a
    ``connection: upgrade`` for an upgrade we pass through."""
    headers = list(headers)
    named = connection_tokens(headers)
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in named:
            if name == "te" and value.strip().lower() == "trailers":
                out.append((name, "trailers"))
            elif keep_upgrade and name == "upgrade":
                out.append((name, value))
            continue
        out.append((name, value))
    if keep_upgrade:
        out.append(("connection", "upgrade"))
    return out


def prepare_request(
    headers: Iterable[tuple[str, str]],
    *,
    scheme: str,
    keep_upgrade: bool = False,
    new_request_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> tuple[list[tuple[str, str]], str]:
    """The headers to forward (and show the handler), and the request id. See the module docstring."""
    out = strip_hop_by_hop(headers, keep_upgrade=keep_upgrade)
    request_id = ""
    forwarded_proto = ""
    kept: list[tuple[str, str]] = []
    for name, value in out:
        if name == "x-request-id":
            if request_id or not value:
                continue  # one x-request-id: the first non-empty one the client sent
            request_id = value
        elif name == "x-forwarded-proto":
            if forwarded_proto:
                continue
            forwarded_proto = value  # kept: set by an edge before us (Envoy keeps it when not the edge)
        kept.append((name, value))
    if not request_id:
        request_id = new_request_id()
        kept.append(("x-request-id", request_id))
    if not forwarded_proto:
        kept.append(("x-forwarded-proto", scheme))
    return kept, request_id


def prepare_response(headers: Iterable[tuple[str, str]], *, keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """A response's headers without the hop-by-hop set (``keep_upgrade`` for a 101 we pass through)."""
    return strip_hop_by_hop(headers, keep_upgrade=keep_upgrade)


def apply_edits(
    headers: list[tuple[str, str]], set_headers: Iterable[tuple[str, str]], remove: Iterable[str]
) -> list[tuple[str, str]]:
    """``headers`` with ``remove`` and every name of ``set_headers`` dropped, then ``set_headers`` added."""
    set_list = [(n.lower(), v) for n, v in set_headers]
    drop = {n.lower() for n in remove} | {n for n, _ in set_list}
    if not drop:
        return headers
    return [(n, v) for n, v in headers if n not in drop] + set_list
