"""``ProxyInputs``: what every listener of one ztunnel shares, built once by the composition root.

A frozen bundle of long-lived collaborators (state cell, certificates, pool, metrics, connection
registry, socket factory for outbound dials, access logger). Listeners and per-connection handlers
receive it instead of reaching for globals, so two ztunnels in one process (tests) never share state
and in-pod mode passes the same inputs to every pod's proxy. Holds no per-connection state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from structlog.typing import FilteringBoundLogger

from meshcore.aio.hbone_server import HboneServerCounters
from meshcore.aio.pool import HbonePool
from meshcore.aio.secrets import SecretManager
from meshcore.aio.state_cell import StateCell
from meshcore.aio.tls_contexts import TlsContexts
from meshcore.state import ProxyState
from meshcore.telemetry import TcpMetrics
from ztunnel.config import ZtunnelConfig
from ztunnel.proxy.connections import ConnectionManager
from ztunnel.sockets import SocketFactory


@dataclass(frozen=True, slots=True)
class ProxyInputs:
    config: ZtunnelConfig
    # The current ProxyState (read once per connection with ``cell.current()``).
    cell: StateCell[ProxyState]
    secrets: SecretManager
    tls: TlsContexts
    pool: HbonePool
    metrics: TcpMetrics
    connections: ConnectionManager
    # Shared by every HBONE listener: handshake failures, untrusted peers, refused requests.
    hbone_counters: HboneServerCounters
    # Sockets for outbound dials (the pool's and passthrough TCP); per-proxy listeners bring their own.
    sockets: SocketFactory
    # Where "connection complete" / "connection failed" lines go (ztunnel's "access" target).
    access_log: FilteringBoundLogger = field(default_factory=lambda: structlog.get_logger("ztunnel.access"))
    # Randomness for traceparent ids (injectable for tests).
    random_bytes: Callable[[int], bytes] = os.urandom
