"""``python -m ambientctl.apps.echo --port 8080``: an HTTP/1.1 echo server for pods of the local cluster.

Every request (any method, any path) gets ``200`` and a JSON body: the pod that served it (``POD_NAME``,
``POD_NAMESPACE`` from the cluster), the peer address the server saw, the method, path, and the request
body echoed back. Keep-alive is supported (HTTP/1.1 with Content-Length), so a client can hold one
connection open across many requests. Threads, one per connection; no state shared between them.
Must not: read anything but its own flags and environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambient-echo/1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self.send_error(413, "body too large")
            return
        body = self.rfile.read(length) if length else b""
        reply = json.dumps(
            {
                "pod": os.environ.get("POD_NAME", ""),
                "namespace": os.environ.get("POD_NAMESPACE", ""),
                "peer": self.client_address[0],
                "method": self.command,
                "path": self.path,
                "echo": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(200)
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
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
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
