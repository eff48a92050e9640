"""``ambientctl dashboard``: a local web page with the service graph, golden signals, proxies and denials.

``DashboardServer`` serves, on a loopback address only, the static page shipped in this package
(``static/``: HTML, JS, CSS, no CDN, nothing fetched from the internet) and one JSON document,
``/api/snapshot``, that the page polls. The snapshot comes from a ``Source`` callable, so tests serve a
fixed one; ``LiveSource`` builds it from the mesh each time it is asked, through the command's source
(``remote.MeshView``: the local cluster, or a Kubernetes cluster through its API server, pods re-listed
at each snapshot): every ztunnel's and waypoint's metrics (rates between this scrape and the previous one,
``traffic``), istiod-lite's sync state (``proxy_rows``; on Kubernetes every replica's) and the recent
refused connections and requests from the logs (``logs.denied``). A failing part of the snapshot is
reported in its ``errors`` list; the rest is still served.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .checks import kube_rows
from .logs import LogRecord, denied, since
from .reach import ISTIOD_MONITORING, ZTUNNEL_STATS, ReachError, Target
from .remote import MeshView
from .syncstatus import ProxyRow, proxy_rows, row_json
from .traffic import Sample, edge_json, parse_metrics, stat_json, stats, tag, traffic

Source = Callable[[], dict[str, Any]]

STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
MAX_DENIALS = 50
DENIALS_WINDOW = timedelta(minutes=30)


def static_asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def page_weight() -> int:
    """Bytes of everything the page loads (its HTML, script and style)."""
    return sum(len(static_asset(name)) for name, _ in STATIC.values())


def denial_json(r: LogRecord) -> dict[str, Any]:
    f = r.fields
    src = f.get("src.workload") or f.get("src.addr") or f.get("src", "")
    if f.get("src.namespace"):
        src = f"{f['src.namespace']}/{src}"
    reason = f.get("error") or f.get("detail") or f"HTTP {f.get('response_code', '')}"
    return {
        "time": r.time.isoformat() if r.time else None,
        "reporter": r.source,
        "source": src,
        "identity": f.get("src.identity", ""),
        "destination": f.get("dst.service") or f.get("dst.workload") or f.get("dst.addr") or f.get("dst", ""),
        "request": f"{f['method']} {f.get('path', '')}" if "method" in f else "",
        "reason": reason,
    }


class LiveSource:
    """Snapshots of the mesh ``view`` reaches (module docstring); thread-safe, one scrape at a time."""

    def __init__(self, view: MeshView) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._previous: tuple[float, list[Sample]] | None = None

    def _scrape(self, errors: list[str]) -> list[Sample]:
        samples: list[Sample] = []
        try:
            targets = self.view.proxy_targets()
        except ReachError as e:
            errors.append(f"proxies: {e}")
            return samples
        for label, target in targets:
            try:
                answer = self.view.reach.get(target, ZTUNNEL_STATS, "/metrics")
                if answer.status != 200:
                    raise ReachError(f"HTTP {answer.status}")
                samples += tag(parse_metrics(answer.text), label)
            except (ReachError, ValueError) as e:
                errors.append(f"{label} metrics: {e}")
        return samples

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            errors: list[str] = []
            self.view.refresh()
            now = time.monotonic()
            samples = self._scrape(errors)
            before = self._previous
            self._previous = (now, samples)
            if before is None:
                edges = traffic(None, samples)
            else:
                edges = traffic(before[1], samples, max(now - before[0], 1e-3))
            try:
                proxies = [row_json(r) for r in self._sync_rows(errors)]
            except (ReachError, ValueError) as e:
                errors.append(f"istiod-lite sync state: {e}")
                proxies = []
            cutoff = datetime.now(UTC) - DENIALS_WINDOW
            try:
                recent, problems = self.view.access_records(lambda r: since(r, cutoff) and denied(r),
                                                            since_seconds=int(DENIALS_WINDOW.total_seconds()))  # fmt: skip
            except ReachError as e:
                recent, problems = [], [str(e)]
            errors += [f"denials: {p}" for p in problems]
            return snapshot(edges, proxies, [denial_json(r) for r in recent[-MAX_DENIALS:]][::-1], errors)


    def _sync_rows(self, errors: list[str]) -> list[ProxyRow]:
        kube = self.view.kube
        if kube is None:
            return proxy_rows(self.view.reach.json(Target("istiod"), ISTIOD_MONITORING, "/debug/syncz"), "istiod-lite")
        rows, problems = kube_rows(kube)
        errors += [f"istiod-lite sync state: {p}" for p in problems]
        return rows


def snapshot(edges: list[Any], proxies: list[dict[str, Any]], denials: list[dict[str, Any]],
             errors: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The document ``/api/snapshot`` serves (edges from ``traffic``, newest denial first)."""
    return {
        "generatedAt": datetime.now(UTC).isoformat(),
        "edges": [edge_json(e) for e in edges],
        "services": [stat_json(r) for r in stats(edges)],
        "proxies": proxies,
        "denials": denials,
        "errors": errors or [],
    }


class DashboardServer:
    """The page and its data on ``host:port`` (loopback only; port 0 picks a free one)."""

    def __init__(self, source: Source, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the dashboard serves loopback only (it is not authenticated), not {host!r}")
        handler = _handler(source)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else host
        return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _handler(source: Source) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ambientctl-dashboard"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            path = self.path.split("?", 1)[0]
            if path in STATIC:
                name, content_type = STATIC[path]
                self._send(HTTPStatus.OK, static_asset(name), content_type)
            elif path == "/api/snapshot":
                try:
                    doc = source()
                except Exception as e:  # the page shows it; the server keeps serving
                    doc = snapshot([], [], [], [f"snapshot failed: {type(e).__name__}: {e}"])
                self._send(HTTPStatus.OK, json.dumps(doc).encode(), "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    return Handler

