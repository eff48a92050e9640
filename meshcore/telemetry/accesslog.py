"""ztunnel-compatible access log: one structlog line per finished connection.

``access_log_fields`` (pure) builds the fields with ztunnel's keys (``src.addr``, ``dst.hbone_addr``,
``bytes_sent``, ``duration="12ms"``, ...), leaving out absent values rather than writing "unknown",
so existing log queries keep working. ``bytes_sent``/``bytes_recv`` are from the *application's* point
of view (ztunnel un-flips Istio's metric direction for logs). Identities appear only over mTLS.
Levels as ztunnel: "connection complete" at info, or at error with an ``error`` field; an early deny
(before labels exist) is "connection failed" at warning. Called once per connection, never per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping

from structlog.typing import FilteringBoundLogger

from meshcore.telemetry.metrics import UNKNOWN, ConnectionLabels, Reporter, SecurityPolicy

# ztunnel logs under the tracing target "access"; its JSON output names that "scope".
ACCESS_SCOPE = "access"

Addr = str | tuple[str, int]


def format_addr(addr: Addr) -> str:
    """``ip:port``, with IPv6 in brackets; a string is taken as already formatted."""
    if isinstance(addr, str):
        return addr
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def direction(reporter: str) -> str:
    """``outbound`` for the source reporter, ``inbound`` otherwise (as ztunnel)."""
    return "outbound" if reporter == Reporter.SOURCE.value else "inbound"


def _known(value: str) -> str | None:
    return value if value and value != UNKNOWN else None


def access_log_fields(
    labels: ConnectionLabels,
    *,
    src_addr: Addr,
    dst_addr: Addr,
    hbone_addr: Addr | None = None,
    src_workload: str | None = None,
    dst_workload: str | None = None,
    request_bytes: int,
    response_bytes: int,
    duration: float,
    error: str | None = None,
) -> dict[str, object]:
    """The fields of a "connection complete" line.

    ``dst_addr`` is the next-hop L4 address (``:15008`` for HBONE), ``hbone_addr`` the CONNECT
    authority. ``src_workload``/``dst_workload`` are pod names; without them the canonical service is
    used. ``request_bytes``/``response_bytes`` are the metric directions (``BoundTcpMetrics.received``
    and ``.sent``); ``duration`` is in seconds.
    """
    mtls = labels.connection_security_policy == SecurityPolicy.MUTUAL_TLS.value
    candidates: tuple[tuple[str, object | None], ...] = (
        ("src.addr", format_addr(src_addr)),
        ("src.workload", src_workload or _known(labels.source_canonical_service)),
        ("src.namespace", _known(labels.source_workload_namespace)),
        ("src.identity", _known(labels.source_principal) if mtls else None),
        ("dst.addr", format_addr(dst_addr)),
        ("dst.hbone_addr", format_addr(hbone_addr) if hbone_addr else None),
        ("dst.service", _known(labels.destination_service)),
        ("dst.workload", dst_workload or _known(labels.destination_canonical_service)),
        ("dst.namespace", _known(labels.destination_workload_namespace)),
        ("dst.identity", _known(labels.destination_principal) if mtls else None),
    )
    fields: dict[str, object] = {k: v for k, v in candidates if v is not None}
    outbound = labels.reporter == Reporter.SOURCE.value
    fields["direction"] = direction(labels.reporter)
    # The app is the client outbound (it sent the request) and the server inbound (it sent the response).
    fields["bytes_sent"] = request_bytes if outbound else response_bytes
    fields["bytes_recv"] = response_bytes if outbound else request_bytes
    fields["duration"] = f"{max(0, int(duration * 1000))}ms"
    if error:
        fields["error"] = error
    return fields


def early_deny_fields(*, src_addr: Addr, dst_addr: Addr, reporter: Reporter, error: str) -> dict[str, object]:
    """The fields of a "connection failed" line: a refusal before the connection context exists."""
    return {
        "src.addr": format_addr(src_addr),
        "dst.addr": format_addr(dst_addr),
        "direction": direction(reporter.value),
        "error": error,
    }


def log_connection(logger: FilteringBoundLogger, fields: Mapping[str, object]) -> None:
    """Emit "connection complete": info on success, error when ``fields`` carries an ``error``."""
    if "error" in fields:
        logger.error("connection complete", scope=ACCESS_SCOPE, **fields)
    else:
        logger.info("connection complete", scope=ACCESS_SCOPE, **fields)


def log_early_deny(logger: FilteringBoundLogger, fields: Mapping[str, object]) -> None:
    """Emit "connection failed" at warning, for fields from ``early_deny_fields``."""
    logger.warning("connection failed", scope=ACCESS_SCOPE, **fields)
