"""``python -m ambientctl.apps.echo --port 8080``: an HTTP/1.1 echo server for pods of the local cluster.

Every request (any method, any path) gets ``200`` and a JSON body: the pod that served it (``POD_NAME``,
``POD_NAMESPACE`` from the cluster), the peer address the server saw, the method, path, and the request
body echoed back, the ``Host`` it was sent to, and ``count``: how many requests this process has received,
this one included, and ``hosts``: that count per ``Host`` header (a mirror's copies arrive with the host
suffixed ``-shadow``, so asking a mirror pod tells how many copies it got).
Keep-alive is supported (HTTP/1.1 with Content-Length), so a client can hold one connection open across
many requests. Threads, one per connection; the request counter is the only state they share (locked).

Flags to play a misbehaving backend (for traffic-management tests and demos; off by default):
``--fail-every N`` answers every N-th request received with ``--fail-status`` (default 503; N=2 fails
every other request, N=1 every request), with the same JSON body; ``--delay S`` waits S seconds before
answering each request.
Must not: read anything but its own flags and environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Behaviour:
    """What the server was told to do (flags) and how many requests it has received (shared, locked)."""

    def __init__(self, fail_every: int = 0, fail_status: int = 503, delay: float = 0.0) -> None:
        self.fail_every = fail_every
        self.fail_status = fail_status
        self.delay = delay
        self.count = 0
        self.hosts: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, host: str) -> tuple[int, dict[str, int], int]:
        """(this request's number, the requests per Host so far, the status to answer it with)."""
        with self._lock:
            self.count += 1
            self.hosts[host] = self.hosts.get(host, 0) + 1
            n, hosts = self.count, dict(self.hosts)
        failing = self.fail_every > 0 and n % self.fail_every == 0
        return n, hosts, self.fail_status if failing else 200


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambient-echo/1"
    behaviour = Behaviour()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self.send_error(413, "body too large")
            return
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host", "")
        count, hosts, status = self.behaviour.next(host)
        if self.behaviour.delay > 0:
            time.sleep(self.behaviour.delay)
        reply = json.dumps(
            {
                "pod": os.environ.get("POD_NAME", ""),
                "namespace": os.environ.get("POD_NAMESPACE", ""),
                "peer": self.client_address[0],
                "method": self.command,
                "path": self.path,
                "host": host,
                "count": count,
                "hosts": hosts,
                "echo": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (the cluster stopping the pod) ends ``serve_forever`` as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="echo", description="HTTP echo server for local-cluster pods")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--fail-every", type=int, default=0, metavar="N",
                        help="answer every N-th request with --fail-status (0: never)")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--delay", type=float, default=0.0, metavar="S", help="wait S seconds before answering")
    args = parser.parse_args(argv)
    if args.fail_every < 0 or args.delay < 0 or not 100 <= args.fail_status <= 599:
        parser.error("--fail-every and --delay must not be negative; --fail-status must be 100-599")
    handler = type("Handler", (EchoHandler,), {"behaviour": Behaviour(args.fail_every, args.fail_status, args.delay)})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"echo listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
