"""Telemetry: Istio's TCP metrics and ztunnel's access log.

Labels and log fields are built by pure functions once per connection; the hot path only increments
pre-bound counters. Registries and loggers are passed in by the composition root.
"""

from meshcore.telemetry.accesslog import (
    ACCESS_SCOPE,
    access_log_fields,
    early_deny_fields,
    format_addr,
    log_connection,
    log_early_deny,
)
from meshcore.telemetry.metrics import (
    LABEL_NAMES,
    UNKNOWN,
    BoundTcpMetrics,
    ConnectionLabels,
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    TcpMetrics,
    build_connection_labels,
)

__all__ = [
    "ACCESS_SCOPE",
    "LABEL_NAMES",
    "UNKNOWN",
    "BoundTcpMetrics",
    "ConnectionLabels",
    "Reporter",
    "ResponseFlags",
    "SecurityPolicy",
    "TcpMetrics",
    "access_log_fields",
    "build_connection_labels",
    "early_deny_fields",
    "format_addr",
    "log_connection",
    "log_early_deny",
]
