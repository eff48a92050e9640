"""Proxy sync status from istiod_lite's ``/debug/syncz``: one row per connected proxy. PURE.

``proxy_rows(syncz, istiod)`` turns the syncz document (one entry per delta-ADS stream: node id,
cluster, metadata and, per type URL, Istio's status word) into ``ProxyRow`` values with istioctl's
columns: ``NAME`` (``<pod>.<namespace>`` from the node id), ``CLUSTER``, one column per type with
``SYNCED``, ``STALE`` (a response awaits its ACK), ``NACKED`` or ``NOT SENT`` (``IGNORED`` when the
proxy did not subscribe to the type, as istioctl prints it), ``ISTIOD`` and ``VERSION`` (the proxy's
``ISTIO_VERSION`` metadata, ``-`` when it sends none), then the NACK count and the latest NACK's
message. Unknown type URLs get a column named after the last segment of the URL; a malformed entry
never fails the table (its fields show ``-``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL

# istioctl's short names for the ambient types (pilot's v3.GetShortType), and ours for the waypoint's.
SHORT_TYPES = {
    ADDRESS_TYPE_URL: "WDS",
    AUTHORIZATION_TYPE_URL: "WADS",
    L7_AUTHORIZATION_TYPE_URL: "L7AUTHZ",
}
IGNORED = "IGNORED"
IN_SYNC = "SYNCED"


@dataclass(frozen=True, slots=True)
class ProxyRow:
    name: str  # <pod>.<namespace>
    kind: str  # ztunnel | waypoint | other (from the node id's type)
    node_id: str
    cluster: str
    statuses: Mapping[str, str]  # short type name -> SYNCED | STALE | NACKED | NOT SENT | IGNORED
    istiod: str
    version: str
    nacks: int = 0
    last_nack: str = ""
    node: str = ""  # NODE_NAME metadata (ztunnels)
    connected_since: str = ""
    types: tuple[str, ...] = field(default=())  # short names this proxy subscribed to

    @property
    def synced(self) -> bool:
        """Every subscribed type is SYNCED (nothing stale, nothing rejected, nothing unsent)."""
        return all(self.statuses.get(t) == IN_SYNC for t in self.types)


def short_type(type_url: str) -> str:
    return SHORT_TYPES.get(type_url) or type_url.rsplit(".", 1)[-1].rsplit("/", 1)[-1] or type_url


def proxy_name(node_id: str) -> tuple[str, str]:
    """(``<pod>.<namespace>``, kind) from Istio's ``type~ip~pod.ns~ns.svc.domain`` node id."""
    parts = node_id.split("~")
    if len(parts) == 4:
        kind = {"ztunnel": "ztunnel", "router": "waypoint", "sidecar": "sidecar"}.get(parts[0], parts[0])
        return parts[2], kind
    return node_id or "-", "other"


def proxy_rows(syncz: Any, istiod: str) -> list[ProxyRow]:
    """One row per stream in ``syncz`` (a list of stream descriptions), sorted by name."""
    if not isinstance(syncz, list):
        raise ValueError("the sync status is not a list of streams: is this istiod_lite's /debug/syncz?")
    rows = []
    for stream in syncz:
        if not isinstance(stream, Mapping):
            continue
        node_id = str(stream.get("node_id") or stream.get("connection_id") or "-")
        name, kind = proxy_name(node_id)
        metadata: Mapping[str, Any] = stream.get("metadata") or {}
        types: Mapping[str, Any] = stream.get("types") or {}
        if not isinstance(metadata, Mapping):
            metadata = {}
        if not isinstance(types, Mapping):
            types = {}
        statuses: dict[str, str] = {}
        nacks: list[Mapping[str, Any]] = []
        for url, sub in types.items():
            if not isinstance(sub, Mapping):
                continue
            statuses[short_type(str(url))] = str(sub.get("status") or "-")
            nacks += [n for n in sub.get("nacks") or () if isinstance(n, Mapping)]
        nacks.sort(key=lambda n: str(n.get("time", "")))
        rows.append(
            ProxyRow(
                name=name,
                kind=kind,
                node_id=node_id,
                cluster=str(stream.get("cluster") or metadata.get("CLUSTER_ID") or "-"),
                statuses=statuses,
                istiod=istiod,
                version=str(metadata.get("ISTIO_VERSION") or "-"),
                nacks=len(nacks),
                last_nack=str(nacks[-1].get("message", "")) if nacks else "",
                node=str(metadata.get("NODE_NAME") or ""),
                connected_since=str(stream.get("connected_since") or ""),
                types=tuple(statuses),
            )
        )
    return sorted(rows, key=lambda r: (r.name, r.node_id))


def type_columns(rows: Sequence[ProxyRow]) -> list[str]:
    """The type columns to show: the known ambient types first, then any other subscribed type."""
    seen = {t for r in rows for t in r.types}
    known = [t for t in SHORT_TYPES.values() if t in seen or t in ("WDS", "WADS")]
    return known + sorted(seen - set(known))


def status_table(rows: Sequence[ProxyRow]) -> tuple[list[str], list[list[str]]]:
    columns = type_columns(rows)
    headers = ["NAME", "CLUSTER", *columns, "NACKS", "ISTIOD", "VERSION"]
    table = [
        [
            r.name,
            r.cluster,
            *(r.statuses.get(c, IGNORED) for c in columns),
            str(r.nacks) + (f" ({r.last_nack})" if r.last_nack else ""),
            r.istiod,
            r.version,
        ]
        for r in rows
    ]
    return headers, table


def row_json(r: ProxyRow) -> dict[str, Any]:
    return {
        "name": r.name,
        "kind": r.kind,
        "nodeId": r.node_id,
        "cluster": r.cluster,
        "node": r.node,
        "status": dict(r.statuses),
        "synced": r.synced,
        "nacks": r.nacks,
        "lastNack": r.last_nack,
        "istiod": r.istiod,
        "version": r.version,
        "connectedSince": r.connected_since,
    }
