"""``waypoint``: run the L7 waypoint proxy.

    waypoint [--pod-name P] [--pod-namespace NS] [--gateway-name GW] [--xds-address H:P] [--fake-ca] ...

Settings come from flags over environment variables (``waypoint.config``; see docs/waypoint.md). SIGTERM
or SIGINT (or ``POST /quitquitquit`` on the admin port) drain gracefully: the HBONE listener stops
accepting, live tunnels get ``DRAIN_DURATION`` to finish, then everything closes. A configuration or
startup problem prints one line saying what to fix and exits 2. uvloop is used when installed.
"""

from __future__ import annotations

import argparse

from meshcore.aio.process import env_flag_parser
from meshcore.aio.process import main as process_main
from waypoint import config as cfg

_FLAGS = {
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


def _parser() -> argparse.ArgumentParser:
    return env_flag_parser(
        "waypoint", "ambient mesh L7 waypoint proxy (HTTP policy)", _FLAGS, fake_ca=cfg.FAKE_CA
    )


def main(argv: list[str] | None = None) -> None:
    from waypoint.app import StartupError, Waypoint

    process_main(
        "waypoint", _parser(), argv, lambda flags: cfg.parse_config(flags=flags), Waypoint,
        drain_seconds=lambda c: c.drain_duration, logging_of=lambda c: (c.log_level, c.log_format),
        config_error=cfg.ConfigError, startup_error=StartupError,
    )


if __name__ == "__main__":
    main()
