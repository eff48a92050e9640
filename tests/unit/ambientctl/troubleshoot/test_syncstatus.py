"""``proxy-status`` rows from istiod-lite's /debug/syncz: names, per-type status words, NACKs."""

from __future__ import annotations

from typing import Any

import pytest

from ambientctl.troubleshoot.syncstatus import proxy_name, proxy_rows, status_table
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL


def stream(node_id: str, types: dict[str, dict[str, Any]], **metadata: str) -> dict[str, Any]:
    return {"connection_id": "1", "node_id": node_id, "cluster": "", "metadata": metadata, "types": types}


def sub(status: str, *nacks: str) -> dict[str, Any]:
    return {"status": status, "nacks": [{"time": f"2026-01-01T00:00:0{i}", "message": m} for i, m in enumerate(nacks)]}


ZT1 = "ztunnel~0.0.0.0~ztunnel-node-1.istio-system~istio-system.svc.cluster.local"
WP = "router~10.244.1.5~waypoint-7f.shop~shop.svc.cluster.local"


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        (ZT1, ("ztunnel-node-1.istio-system", "ztunnel")),
        (WP, ("waypoint-7f.shop", "waypoint")),
        ("odd", ("odd", "other")),
        ("", ("-", "other")),
    ],
    ids=["a ztunnel is named by its pod", "a router is a waypoint", "an unknown id is shown as is", "no id is a dash"],
)
def test_proxy_names_come_from_the_node_id(node_id: str, expected: tuple[str, str]) -> None:
    assert proxy_name(node_id) == expected


def test_a_synced_ztunnel_and_a_waypoint_get_istioctl_columns() -> None:
    syncz = [
        stream(WP, {L7_AUTHORIZATION_TYPE_URL: sub("SYNCED"), ADDRESS_TYPE_URL: sub("SYNCED")}),
        stream(ZT1, {ADDRESS_TYPE_URL: sub("SYNCED"), AUTHORIZATION_TYPE_URL: sub("SYNCED")},
               NODE_NAME="node-1", CLUSTER_ID="Kubernetes", ISTIO_VERSION="1.24.0"),
    ]
    rows = proxy_rows(syncz, "istiod-lite")
    assert [r.name for r in rows] == ["waypoint-7f.shop", "ztunnel-node-1.istio-system"]
    assert all(r.synced for r in rows)
    headers, table = status_table(rows)
    assert headers == ["NAME", "CLUSTER", "WDS", "WADS", "L7AUTHZ", "NACKS", "ISTIOD", "VERSION"]
    assert table[0][2:5] == ["SYNCED", "IGNORED", "SYNCED"], "a type the waypoint did not subscribe to is IGNORED"
    assert table[1] == ["ztunnel-node-1.istio-system", "Kubernetes", "SYNCED", "SYNCED", "IGNORED", "0",
                        "istiod-lite", "1.24.0"]


def test_a_nack_is_counted_and_its_latest_message_shown() -> None:
    syncz = [stream(ZT1, {AUTHORIZATION_TYPE_URL: sub("NACKED", "old reason", "policy x: bad CIDR")})]
    (row,) = proxy_rows(syncz, "istiod-lite")
    assert not row.synced
    assert (row.nacks, row.last_nack) == (2, "policy x: bad CIDR")
    _, table = status_table([row])
    assert table[0][-3] == "2 (policy x: bad CIDR)"


@pytest.mark.parametrize("status", ["STALE", "NOT SENT"], ids=["awaiting an ack", "nothing sent yet"])
def test_a_type_not_acked_is_not_synced(status: str) -> None:
    (row,) = proxy_rows([stream(ZT1, {ADDRESS_TYPE_URL: sub(status)})], "istiod-lite")
    assert not row.synced
    assert row.statuses == {"WDS": status}


def test_malformed_entries_do_not_fail_the_table() -> None:
    rows = proxy_rows([None, {"types": {"x": None, "type.googleapis.com/foo.Bar": "?"}}, {}], "i")
    assert [r.name for r in rows] == ["-", "-"]


def test_a_document_that_is_not_syncz_is_refused() -> None:
    with pytest.raises(ValueError, match="/debug/syncz"):
        proxy_rows({"error": "x"}, "i")
