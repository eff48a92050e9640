"""``python -m ambientctl.apps.standin --port P [--port Q ...]``: the local cluster's stand-in for a
container image it cannot run.

The local cluster runs host commands, not images; a container with an ``image`` but no ``command``/``args``
(the normal shape of upstream samples such as Istio's Bookinfo) runs this instead, so the sample still
serves traffic. It listens on every given ``containerPort`` (HTTP/1.1, keep-alive) and answers any
request with ``200`` and a JSON body naming the pod, namespace, service account, node and ``version``
label (from the environment the kubelet sets: ``POD_NAME``, ``POD_NAMESPACE``, ``SERVICE_ACCOUNT``,
``NODE_NAME``, ``POD_VERSION``) and echoing the request's method, path and headers, like httpbin's
``/anything``. With no port it idles (a container that serves nothing still runs). Threads, one per
connection; a body over 1 MiB is refused with 413. Must not: read anything but its flags and environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambient-standin/1"

    def _answer(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.send_error(413, "body too large")
            return
        if length:
            self.rfile.read(length)
        reply = json.dumps(
            {
                "pod": os.environ.get("POD_NAME", ""),
                "namespace": os.environ.get("POD_NAMESPACE", ""),
                "serviceAccount": os.environ.get("SERVICE_ACCOUNT", ""),
                "node": os.environ.get("NODE_NAME", ""),
                "version": os.environ.get("POD_VERSION", ""),
                "port": self.server.server_address[1],
                "method": self.command,
                "path": self.path,
                "headers": {k: v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="standin", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, action="append", default=[], help="containerPort (repeatable)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    servers = []
    for port in args.port:
        server = ThreadingHTTPServer(("0.0.0.0", port), StandInHandler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    print(f"standin serving on {args.port or 'no port'}", file=sys.stderr, flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()


if __name__ == "__main__":
    main()
