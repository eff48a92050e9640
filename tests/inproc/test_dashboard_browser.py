"""The dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright): the graph shows the
services and the edge between them, a denial appears in the list, nothing is loaded from outside the
page's own server, and a screenshot is written under the test's temporary directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambientctl.troubleshoot.dashboard import DashboardServer, denial_json, snapshot
from ambientctl.troubleshoot.logs import parse_line
from ambientctl.troubleshoot.traffic import parse_metrics, tag, traffic

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra (scripts/setup.sh)")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)
SVC = "echo.shop.svc.cluster.local"


def tcp(src: str, flags: str, opened: int) -> str:
    labels = (f'reporter="destination",source_workload="{src}",source_workload_namespace="shop",'
              f'source_principal="spiffe://cluster.local/ns/shop/sa/{src}",destination_service="{SVC}",'
              f'request_protocol="tcp",response_flags="{flags}",connection_security_policy="mutual_tls"')  # fmt: skip
    return f"istio_tcp_connections_opened_total{{{labels}}} {opened}\n"


DENIAL = ("2026-12-07T13:19:36.038025Z [error    ] connection complete            scope=access "
          "src.workload=bad src.namespace=shop dst.service=echo.shop.svc.cluster.local "
          "error='connection closed due to policy rejection: explicitly denied by: shop/deny-bad'")  # fmt: skip
PROXY = {"name": "ztunnel-node-1.istio-system", "kind": "ztunnel", "node": "node-1", "status": {"WDS": "SYNCED"},
         "synced": True, "nacks": 0, "lastNack": "", "connectedSince": "2026-12-07T13:19:25"}  # fmt: skip


@pytest.fixture
def server() -> Iterator[DashboardServer]:
    edges = traffic(None, tag(parse_metrics(tcp("client", "-", 12) + tcp("bad", "DENY", 2)), "ztunnel-node-2"))
    doc = snapshot(edges, [PROXY], [denial_json(parse_line(DENIAL, "ztunnel-node-2"))])
    s = DashboardServer(lambda: doc)
    s.start()
    try:
        yield s
    finally:
        s.close()


def test_dashboard_in_headless_chromium(server: DashboardServer, tmp_path: Path) -> None:
    requested: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(server.url)
            page.wait_for_selector('body[data-loaded="true"]', timeout=20_000)

            for name in ("shop/client", "shop/bad", SVC):
                assert page.locator(f'#graph .node[data-name="{name}"]').count() == 1, name
            edge = page.locator(f'#graph .edge[data-source="shop/client"][data-destination="{SVC}"]')
            assert edge.count() == 1 and "tcp 12 100.0%" in (edge.text_content() or "")
            failing = page.locator(f'#graph .edge.failing[data-source="shop/bad"][data-destination="{SVC}"]')
            assert failing.count() == 1
            denial = page.locator("#denials li.denial")
            assert denial.count() == 1
            assert "explicitly denied by: shop/deny-bad" in denial.inner_text()
            assert "shop/bad" in denial.inner_text()
            assert SVC in page.locator("#services tbody").inner_text()
            assert "SYNCED" in page.locator("#proxies tbody").inner_text()

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
        finally:
            browser.close()
    assert requested and all(u.startswith(server.url) for u in requested), requested
