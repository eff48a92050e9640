"""Benchmark: HTTP/1.1 parsing for the waypoint, h11 vs httptools, on 1 KiB keep-alive requests.

Measures, in one process and one run, the CPU time per request of:
- h11: a server ``Connection`` receiving the request, sending a small response, starting the next cycle;
- httptools: ``HttpRequestParser.feed_data`` with the callbacks a proxy needs (url, header, body, end);
- ours: ``waypoint.l7.http1.Http1Server`` (httptools plus limits, events and response framing), the same
  request and response;
- ours upstream: ``Http1Client`` serializing the request and parsing a 1 KiB response.
The request is ~1 KiB with 24 headers (what a browser or a service client sends). Never part of the
test run.

    .venv/bin/python bench/l7_parse.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h11
import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from waypoint.l7.http1 import Http1Client, Http1Server  # noqa: E402


def request_bytes() -> bytes:
    headers = b"".join(b"x-h%02d: %s\r\n" % (i, b"v" * 30) for i in range(20))
    req = (b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: svc.ns.svc.cluster.local:8080\r\nuser-agent: bench\r\n"
           b"accept: */*\r\n" + headers)
    pad = 1024 - len(req) - len(b"x-pad: \r\n\r\n")
    return req + b"x-pad: " + b"p" * pad + b"\r\n\r\n"


def per_call(fn: Callable[[], None], n: int) -> float:
    for _ in range(min(1000, n)):
        fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    n = args.requests
    raw = request_bytes()
    print(f"# {platform.node()} {platform.machine()} Python {platform.python_version()} "
          f"h11 {h11.__version__} httptools {httptools.__version__} {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {' '.join(sys.argv)}  (request {len(raw)} bytes, {raw.count(b': ')} headers, {n} requests)")

    h11_conn = h11.Connection(h11.SERVER)

    def h11_round() -> None:
        h11_conn.receive_data(raw)
        assert type(h11_conn.next_event()) is h11.Request
        assert type(h11_conn.next_event()) is h11.EndOfMessage
        h11_conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        h11_conn.send(h11.EndOfMessage())
        h11_conn.start_next_cycle()

    class Callbacks:
        def __init__(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            pass

        def on_message_complete(self) -> None:
            self.done = True

    callbacks = Callbacks()
    ht = httptools.HttpRequestParser(callbacks)

    def httptools_round() -> None:
        callbacks.headers = []
        ht.feed_data(raw)
        assert callbacks.done

    server = Http1Server()

    def ours_round() -> None:
        events = server.receive_data(raw)
        assert len(events) == 2
        server.send_response(200, [("content-type", "text/plain")], content_length=0, end_stream=True)

    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1024\r\n\r\n" + b"x" * 1024
    client = Http1Client()
    headers = [(f"x-h{i:02d}", "v" * 30) for i in range(20)]

    def client_round() -> None:
        client.send_request("GET", "/api/v1/items?id=42", "svc:8080", headers, end_stream=True)
        events = client.receive_data(response)
        assert len(events) == 3

    rows = [("h11 server (parse + respond)", h11_round), ("httptools parse", httptools_round),
            ("ours: Http1Server (parse + limits + respond)", ours_round),
            ("ours: Http1Client (request + parse 1 KiB response)", client_round)]
    print(f"{'what':<52} {'us/request':>10} {'requests/s/core':>16}")
    for name, fn in rows:
        us = per_call(fn, n)
        print(f"{name:<52} {us:>10.1f} {1e6 / us:>16,.0f}")


if __name__ == "__main__":
    main()
