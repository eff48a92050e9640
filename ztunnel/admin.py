"""Admin endpoint (127.0.0.1:15000): what this ztunnel knows and is doing, in ztunnel's JSON shapes.

``/config_dump`` has ztunnel's top-level keys (``workloads``, ``services``, ``policies``,
``certificates`` as lists; ``workloadState`` keyed by workload uid with its live connections as
istioctl reads them; ``config``), with camelCase fields as in istioctl's ``configdump/api.go``, so
``ambientctl ztunnel-config`` (and istioctl) can print it. ``/connections`` lists live connections
(workload, direction, local, remote, target, identity, protocol, bytes). ``/logging`` shows the level
(GET) or changes it (POST ``?level=debug``, ``?reset``). ``/quitquitquit`` (POST) starts a graceful
shutdown. The dump functions are pure; only public certificate material is ever shown. Localhost only:
nothing here is authenticated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshcore.admin import (  # noqa: F401 - re-exported: ztunnel's admin face
    LogLevel,
    admin_routes,
    certificate_json,
    config_json,
    policy_json,
    service_json,
    workload_json,
)
from meshcore.aio.secrets import CertificateStatus
from meshcore.model import Workload
from meshcore.state import ProxyState
from ztunnel.config import ZtunnelConfig
from ztunnel.proxy.connections import Direction, TrackedConnection


def workload_state_json(
    workload: Workload, state: str, connections: Iterable[TrackedConnection]
) -> dict[str, object]:
    conns = list(connections)
    return {
        "state": state,
        "connections": {
            "inbound": [c.to_istio_json() for c in conns if c.direction is Direction.INBOUND],
            "outbound": [c.to_istio_json() for c in conns if c.direction is Direction.OUTBOUND],
        },
        "info": {
            "name": workload.name,
            "namespace": workload.namespace,
            "trustDomain": workload.trust_domain,
            "serviceAccount": workload.service_account,
        },
    }


def config_dump(
    state: ProxyState,
    certificates: Iterable[CertificateStatus],
    *,
    local_workloads: Mapping[str, tuple[Workload, str]],
    connections: Iterable[TrackedConnection],
    config: ZtunnelConfig | None = None,
) -> dict[str, object]:
    """The ``/config_dump`` document. ``local_workloads``: uid -> (workload, "Up" | "Pending")."""
    by_workload: dict[str, list[TrackedConnection]] = {}
    for conn in connections:
        by_workload.setdefault(conn.workload.uid, []).append(conn)
    dump: dict[str, object] = {
        "workloads": [workload_json(w) for _, w in sorted(state.workloads.items())],
        "services": [service_json(s, state) for _, s in sorted(state.services.items())],
        "policies": [policy_json(p) for _, p in sorted(state.policies.items())],
        "certificates": [certificate_json(c) for c in certificates],
        "workloadState": {
            uid: workload_state_json(w, st, by_workload.get(uid, ())) for uid, (w, st) in sorted(local_workloads.items())
        },
        "version": state.version,
    }
    if config is not None:
        dump["config"] = config_json(config)
    return dump


