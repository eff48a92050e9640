"""``python -m ambientctl.apps.client``: HTTP requests from inside a pod, outcomes printed as JSON.

    client get URL [--count N] [--data TEXT] [--wait S] [--timeout S]
    client hold URL [--interval S] [--duration S]

``get`` makes ``N`` requests, each on a new TCP connection (so each one is a new connection for the
mesh to route, balance and authorize), and prints one JSON object: ``{"url", "ok", "failed",
"results": [{"ok", "status", "pod", "peer", "echo", "host", "count", "hosts", "error", "ms"}]}``
(``host``, ``count`` and ``hosts`` as the echo server reports them); ``--wait`` retries the first
request until it succeeds or that many seconds pass (the server may still be starting). Exit code 0
when every request succeeded, 1 otherwise. ``hold`` keeps one connection and sends a request every
``--interval``; it prints ``{"event": "connected"}`` after the first answer and ``{"event": "closed",
...}`` when the connection breaks (exit 0), or ``{"event": "open", ...}`` after ``--duration`` (exit 1).
Every line is flushed at once, so a caller can follow the output live.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from typing import Any


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"client: {url!r} is not an http:// URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout), path


def request_once(url: str, data: str | None, timeout: float) -> dict[str, Any]:
    """One request on a new connection; never raises for network errors (they are the result)."""
    started = time.perf_counter()
    conn, path = _connection(url, timeout)
    result: dict[str, Any] = {
        "ok": False, "status": None, "pod": None, "peer": None, "echo": None, "host": None, "count": None, "hosts": None
    }
    try:
        body = data.encode() if data is not None else None
        conn.request("POST" if body is not None else "GET", path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        payload = response.read()
        result["status"] = response.status
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = {}
        if isinstance(decoded, dict):
            result.update({k: decoded.get(k) for k in ("pod", "peer", "echo", "host", "count", "hosts")})
        result["ok"] = response.status == 200
        result["error"] = None if result["ok"] else f"HTTP {response.status}"
    except (OSError, http.client.HTTPException) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def run_get(url: str, count: int, data: str | None, wait: float, timeout: float) -> int:
    results = []
    deadline = time.monotonic() + wait
    first = request_once(url, data, timeout)
    while not first["ok"] and time.monotonic() < deadline:
        time.sleep(0.1)
        first = request_once(url, data, timeout)
    results.append(first)
    results += [request_once(url, data, timeout) for _ in range(count - 1)]
    ok = sum(1 for r in results if r["ok"])
    print(json.dumps({"url": url, "ok": ok, "failed": len(results) - ok, "results": results}), flush=True)
    return 0 if ok == len(results) else 1


def run_hold(url: str, interval: float, duration: float, timeout: float) -> int:
    conn, path = _connection(url, timeout)
    sent = 0
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise http.client.HTTPException(f"HTTP {response.status}")
            sent += 1
            if sent == 1:
                print(json.dumps({"event": "connected"}), flush=True)
            time.sleep(interval)
    except (OSError, http.client.HTTPException) as e:
        print(
            json.dumps({"event": "closed", "requests": sent, "error": f"{type(e).__name__}: {e}"}), flush=True
        )
        return 0
    finally:
        conn.close()
    print(json.dumps({"event": "open", "requests": sent}), flush=True)
    return 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="client", description="HTTP client for local-cluster pods")
    sub = parser.add_subparsers(dest="mode", required=True)
    get = sub.add_parser("get", help="N requests, one connection each")
    get.add_argument("url")
    get.add_argument("--count", type=int, default=1)
    get.add_argument("--data", help="send this as a POST body (the server echoes it)")
    get.add_argument("--wait", type=float, default=0.0, help="retry the first request this long")
    get.add_argument("--timeout", type=float, default=5.0)
    hold = sub.add_parser("hold", help="one connection, a request every --interval")
    hold.add_argument("url")
    hold.add_argument("--interval", type=float, default=0.1)
    hold.add_argument("--duration", type=float, default=10.0)
    hold.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.mode == "get":
        sys.exit(run_get(args.url, max(1, args.count), args.data, args.wait, args.timeout))
    sys.exit(run_hold(args.url, args.interval, args.duration, args.timeout))


if __name__ == "__main__":
    main()
