"""The dashboard's server on loopback: the shipped page and assets, the snapshot document, failures."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ambientctl.troubleshoot.dashboard import DashboardServer, denial_json, page_weight, snapshot
from ambientctl.troubleshoot.logs import parse_line


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


@pytest.fixture
def served() -> Iterator[tuple[DashboardServer, list[Any]]]:
    calls: list[Any] = []

    def source() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("istiod went away")
        return snapshot([], [], [], [])

    server = DashboardServer(source)
    server.start()
    try:
        yield server, calls
    finally:
        server.close()


def test_the_page_and_its_assets_are_served_from_the_package(served: tuple[DashboardServer, list[Any]]) -> None:
    server, _ = served
    status, kind, body = get(server.url)
    assert status == 200 and kind.startswith("text/html")
    assert b'src="/static/dashboard.js"' in body and b"http" not in body.replace(b'http-equiv', b""), "no external URL"
    for asset, wanted in (("static/dashboard.js", "text/javascript"), ("static/dashboard.css", "text/css")):
        status, kind, body = get(server.url + asset)
        assert status == 200 and kind.startswith(wanted) and body
    assert get(server.url + "nothing")[0] == 404
    assert 0 < page_weight() < 64 * 1024


def test_a_failing_snapshot_is_reported_in_the_document(served: tuple[DashboardServer, list[Any]]) -> None:
    server, _ = served
    first = json.loads(get(server.url + "api/snapshot")[2])
    assert first["errors"] == [] and first["edges"] == []
    second = json.loads(get(server.url + "api/snapshot")[2])
    assert second["errors"] == ["snapshot failed: RuntimeError: istiod went away"]
    assert json.loads(get(server.url + "api/snapshot")[2])["errors"] == []


def test_only_loopback_is_served() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        DashboardServer(lambda: {}, host="0.0.0.0")


def test_a_denial_is_shown_with_who_and_why() -> None:
    line = ("2026-12-07T13:19:36.038025Z [error    ] connection complete            scope=access "
            "src.workload=bad src.namespace=shop src.identity=spiffe://cluster.local/ns/shop/sa/bad "
            "dst.service=echo.shop.svc.cluster.local "
            "error='connection closed due to policy rejection: explicitly denied by: shop/deny-bad'")  # fmt: skip
    d = denial_json(parse_line(line, "ztunnel-node-2"))
    assert d["source"] == "shop/bad" and d["destination"] == "echo.shop.svc.cluster.local"
    assert d["reason"].endswith("explicitly denied by: shop/deny-bad") and d["reporter"] == "ztunnel-node-2"
