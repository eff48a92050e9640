"""``waypoint``: run the L7 waypoint proxy.

    waypoint [--pod-name P] [--pod-namespace NS] [--gateway-name GW] [--xds-address H:P] [--fake-ca] ...

Settings come from flags over environment variables (``waypoint.config``; see docs/waypoint.md). SIGTERM
or SIGINT (or ``POST /quitquitquit`` on the admin port) drain gracefully: the HBONE listener stops
accepting, live tunnels get ``DRAIN_DURATION`` to finish, then everything closes. A configuration or
startup problem prints one line saying what to fix and exits 2. uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from waypoint import config as cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="waypoint", description="ambient mesh L7 waypoint proxy (HTTP policy)")
    flags = {
        cfg.POD_NAME: "this pod's name",
        cfg.POD_NAMESPACE: "this pod's namespace",
        cfg.POD_IP: "address to serve HBONE on (default 0.0.0.0)",
        cfg.SERVICE_ACCOUNT: "service account (the waypoint's identity; default: the gateway name)",
        cfg.GATEWAY_NAME: "the waypoint Gateway served (default: the service account)",
        cfg.XDS_ADDRESS: "control plane HOST:PORT",
        cfg.CA_ADDRESS: "CA HOST:PORT (token-authenticated)",
        cfg.ISTIO_TOKEN_PATH: "service-account token file",
        cfg.ISTIO_ROOT_CERT_PATH: "mesh root certificate file",
        cfg.FAKE_CA_DIR: "directory of a fake CA root shared with other processes (with --fake-ca)",
        cfg.TRUST_DOMAIN: "mesh trust domain (default cluster.local)",
        cfg.HBONE_PORT: "HBONE port (default 15008)",
        cfg.ADMIN_ADDR: "admin HOST:PORT (default 127.0.0.1:15000)",
        cfg.STATS_ADDR: "metrics HOST:PORT (default 0.0.0.0:15020)",
        cfg.READINESS_ADDR: "readiness HOST:PORT (default 0.0.0.0:15021)",
        cfg.DRAIN_DURATION: "how long live requests may finish on shutdown (default 5s)",
        cfg.LOG_LEVEL: "debug, info, warning or error",
        cfg.LOG_FORMAT: "console or json",
    }
    for name, text in flags.items():
        p.add_argument("--" + name.lower().replace("_", "-"), dest=name, help=f"{text} (env {name})")
    p.add_argument("--fake-ca", dest=cfg.FAKE_CA, action="store_const", const="true",
                   help=f"sign the certificate in-process, for tests (env {cfg.FAKE_CA})")
    return p


async def _run(config: cfg.WaypointConfig) -> int:
    from waypoint.app import Waypoint

    wp = Waypoint(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await wp.start()
    quit_requested = asyncio.ensure_future(wp.wait_stop_requested())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({quit_requested, signalled}, return_when=asyncio.FIRST_COMPLETED)
    quit_requested.cancel()
    signalled.cancel()
    await wp.drain(loop.time() + config.drain_duration)
    await wp.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    from prometheus_client import disable_created_metrics

    from meshcore.logs import configure_logging
    from waypoint.app import StartupError

    args = vars(_parser().parse_args(argv))
    try:
        config = cfg.parse_config(flags={k: v for k, v in args.items() if v is not None})
    except cfg.ConfigError as e:
        print(f"waypoint: {e}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # Istio's metrics have no *_created series
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    try:
        coro = _run(config)
        sys.exit(uvloop.run(coro) if uvloop is not None else asyncio.run(coro))
    except StartupError as e:
        print(f"waypoint: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
