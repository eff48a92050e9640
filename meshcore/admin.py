"""Admin endpoint pieces every proxy shares (ztunnel's and the waypoint's 127.0.0.1:15000).

JSON shapes of what a proxy holds, in ztunnel's config-dump format (camelCase fields as istioctl's
``configdump/api.go`` reads them): ``workload_json``, ``service_json``, ``policy_json``,
``certificate_json`` (public certificate material only: never a key), ``config_json``. The routes:
``/config_dump`` (the caller's document), ``/connections``, ``/logging`` (GET the level; POST
``?level=debug`` or ``?reset``), ``/quitquitquit`` (POST: graceful shutdown). Pure shapes; nothing here
is authenticated, so the admin port binds loopback unless an operator explicitly allows otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from meshcore.aio.httpserver import Handler, Request, Response
from meshcore.aio.secrets import CertificateStatus
from meshcore.logs import LEVELS
from meshcore.model import (
    Action,
    Authorization,
    GatewayAddress,
    Match,
    Scope,
    Service,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)
from meshcore.state import ProxyState
from meshcore.tls.certs import load_chain

_SCOPES = {Scope.GLOBAL: "Global", Scope.NAMESPACE: "Namespace", Scope.WORKLOAD_SELECTOR: "WorkloadSelector"}
_WORKLOAD_TYPES = {
    WorkloadType.DEPLOYMENT: "deployment",
    WorkloadType.CRONJOB: "cronjob",
    WorkloadType.POD: "pod",
    WorkloadType.JOB: "job",
}
_STRING_KINDS = {"exact": "Exact", "prefix": "Prefix", "suffix": "Suffix", "presence": "Presence"}


# -------------------------------------------------------------------------------------------- shapes


def _gateway(g: GatewayAddress | None) -> dict[str, object] | None:
    if g is None:
        return None
    if g.address is not None:
        destination = f"{g.address.network}/{g.address.address}"
    elif g.hostname is not None:
        destination = f"{g.hostname.namespace}/{g.hostname.hostname}"
    else:
        destination = ""
    return {"destination": destination, "hboneMtlsPort": g.hbone_mtls_port}


def workload_json(w: Workload) -> dict[str, object]:
    """One workload as ztunnel's config_dump shows it."""
    out: dict[str, object] = {
        "uid": w.uid,
        "workloadIps": list(w.addresses),
        "protocol": "HBONE" if w.tunnel_protocol == TunnelProtocol.HBONE else "TCP",
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "workloadName": w.workload_name,
        "workloadType": _WORKLOAD_TYPES.get(w.workload_type, "pod"),
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "clusterId": w.cluster_id,
        "trustDomain": w.trust_domain,
        "node": w.node,
        "network": w.network,
        "status": "Healthy" if w.status == WorkloadStatus.HEALTHY else "Unhealthy",
        "hostname": w.hostname,
        "nativeTunnel": w.native_tunnel,
        "authorizationPolicies": list(w.authorization_policies),
        "services": {key: _ports(ports) for key, ports in w.services.items()},
    }
    if w.waypoint is not None:
        out["waypoint"] = _gateway(w.waypoint)
    if w.locality is not None:
        out["locality"] = {"region": w.locality.region, "zone": w.locality.zone, "subzone": w.locality.subzone}
    return out


def _ports(ports: Iterable[Any]) -> dict[str, int]:
    return {str(p.service_port): p.target_port for p in ports}


def service_json(s: Service, state: ProxyState) -> dict[str, object]:
    """One service, with its endpoints (keyed by workload uid) as ztunnel shows them."""
    endpoints: dict[str, object] = {}
    for wl, ports in state.endpoints(s.key):
        endpoints[wl.uid] = {
            "workloadUid": wl.uid,
            "service": "",
            "port": _ports(ports) or _ports(s.ports),
            "status": "Healthy" if wl.healthy else "Unhealthy",
        }
    families = {("IPv6" if ":" in a.address else "IPv4") for a in s.addresses}
    out: dict[str, object] = {
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": [f"{a.network}/{a.address}" for a in s.addresses],
        "ports": _ports(s.ports),
        "endpoints": endpoints,
        "subjectAltNames": list(s.subject_alt_names),
        "ipFamilies": "Dual" if len(families) > 1 else (families.pop() if families else ""),
    }
    if s.waypoint is not None:
        out["waypoint"] = _gateway(s.waypoint)
    if s.load_balancing is not None:
        out["loadBalancer"] = {
            "mode": s.load_balancing.mode.name,
            "healthPolicy": s.load_balancing.health_policy.name,
            "routingPreferences": [str(p) for p in s.load_balancing.routing_preference],
        }
    return out


def _string_match(m: StringMatch) -> dict[str, object]:
    return {_STRING_KINDS[m.kind]: {} if m.kind == "presence" else m.value}


def _match_json(m: Match) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in ("namespaces", "not_namespaces", "principals", "not_principals"):
        values = getattr(m, name)
        if values:
            out[_camel(name)] = [_string_match(v) for v in values]
    for name in ("source_ips", "not_source_ips", "destination_ips", "not_destination_ips"):
        values = getattr(m, name)
        if values:
            out[_camel(name)] = [f"{n.address}/{n.length}" for n in values]
    for name in ("destination_ports", "not_destination_ports"):
        values = getattr(m, name)
        if values:
            out[_camel(name)] = list(values)
    for name in ("service_accounts", "not_service_accounts"):
        values = getattr(m, name)
        if values:
            out[_camel(name)] = [{"namespace": v.namespace, "serviceAccount": v.service_account} for v in values]
    return out


def policy_json(p: Authorization) -> dict[str, object]:
    """One policy: rules nested as ztunnel shows them (rules of clauses of matches)."""
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": _SCOPES.get(p.scope, str(p.scope)),
        "action": "Allow" if p.action == Action.ALLOW else "Deny",
        "rules": [[[_match_json(m) for m in clause.matches] for clause in rule.clauses] for rule in p.rules],
        "dryRun": p.dry_run,
    }


def _cert_json(pem: str) -> list[dict[str, str]]:
    return [
        {
            "pem": base64.b64encode(pem.encode("ascii")).decode("ascii"),
            "serialNumber": str(cert.serial_number),
            "validFrom": _rfc3339(cert.not_valid_before_utc),
            "expirationTime": _rfc3339(cert.not_valid_after_utc),
        }
        for cert in _certs(pem)
    ]


def _certs(pem: str) -> list[x509.Certificate]:
    try:
        return load_chain(pem)
    except ValueError:
        return []


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_json(status: CertificateStatus) -> dict[str, object]:
    """One identity's certificate state: public material only (never the key)."""
    chain = [entry for pem in status.chain_pem for entry in _cert_json(pem)]
    roots = _cert_json(status.roots_pem) if status.roots_pem else []
    return {
        "identity": str(status.identity),
        "state": status.state_text,
        "certChain": chain,
        "rootCerts": roots,
        "refreshAt": _rfc3339(status.refresh_at) if status.refresh_at else None,
        "failures": status.failures,
        "nextAttemptAt": _rfc3339(status.next_attempt_at) if status.next_attempt_at else None,
    }


def config_json(config: Any) -> dict[str, object]:
    """The running configuration (paths and addresses only; nothing secret lives in it)."""

    def plain(value: object) -> object:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return str(value)
        return value

    return {_camel(f.name): plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)



class LogLevel:
    """The process's current log level, changed through ``meshcore.logs.set_level``."""

    def __init__(self, initial: str, apply: Callable[[str], None]) -> None:
        self.initial = initial
        self.current = initial
        self._apply = apply

    def set(self, level: str) -> None:
        self._apply(level)
        self.current = level


def admin_routes(
    *,
    dump: Callable[[], dict[str, object]],
    connections: Callable[[], list[dict[str, object]]],
    log_level: LogLevel,
    quit: Callable[[], None] | None = None,
    title: str = "ztunnel admin",
    dump_contents: str = "workloads, services, policies, certificates, workloadState",
) -> dict[str, Handler]:
    """The admin HTTP routes."""

    async def index(_: Request) -> Response:
        return Response.text(
            f"{title}\n"
            f"  GET  /config_dump     {dump_contents}\n"
            "  GET  /connections     live connections\n"
            "  GET  /logging         current log level; POST /logging?level=debug|info|warning|error, ?reset\n"
            "  POST /quitquitquit    graceful shutdown\n"
        )

    async def config_dump_handler(_: Request) -> Response:
        return Response.json(dump())

    async def connections_handler(_: Request) -> Response:
        return Response.json(connections())

    async def logging_handler(request: Request) -> Response:
        if request.method == "POST":
            if "reset" in request.query:
                log_level.set(log_level.initial)
            else:
                level = (request.arg("level") or "").lower()
                if level not in LEVELS:
                    return Response.text(
                        f"level {level!r} is not one of {', '.join(LEVELS)}; use POST /logging?level=debug\n", 400
                    )
                log_level.set(level)
        elif request.method != "GET":
            return Response.text("use GET to read the level or POST ?level=... to change it\n", 405)
        return Response.json({"level": log_level.current})

    async def quit_handler(request: Request) -> Response:
        if request.method != "POST":
            return Response.text("use POST /quitquitquit\n", 405)
        if quit is None:
            return Response.text("shutdown is not wired in this process\n", 501)
        quit()
        return Response.text("draining\n")

    return {
        "/": index,
        "/config_dump": config_dump_handler,
        "/connections": connections_handler,
        "/logging": logging_handler,
        "/quitquitquit": quit_handler,
    }
