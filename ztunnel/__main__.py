"""``ztunnel``: run the node proxy.

    ztunnel [--node-name NODE] [--local-xds-path FILE] [--xds-address H:P] [--fake-ca] ...

Settings come from flags over environment variables (``ztunnel.config``; see docs/ztunnel.md). SIGTERM
or SIGINT (or ``POST /quitquitquit``) drain gracefully: listeners stop accepting, live connections get
``DRAIN_DURATION`` to finish, then everything closes. A configuration or startup problem prints one line
saying what to fix and exits 2. uvloop is used when installed.
"""

from __future__ import annotations

import argparse

from meshcore.aio.process import env_flag_parser
from meshcore.aio.process import main as process_main
from ztunnel import config as cfg

_FLAGS = {
    cfg.NODE_NAME: "node whose workloads this ztunnel serves",
    cfg.PROXY_MODE: "dedicated (default) or shared (in-pod)",
    cfg.XDS_ADDRESS: "control plane HOST:PORT ('' for none)",
    cfg.CA_ADDRESS: "CA HOST:PORT (default: the xDS address)",
    cfg.LOCAL_XDS_PATH: "YAML file of workloads/services/policies instead of xDS",
    cfg.NODE_CREDENTIAL_DIR: "directory with key.pem, cert-chain.pem, root-cert.pem",
    cfg.FAKE_CA_DIR: "directory holding a fake CA root shared by several ztunnels (with --fake-ca)",
    cfg.TRUST_DOMAIN: "mesh trust domain (default cluster.local)",
    cfg.CLUSTER_ID: "cluster id (default Kubernetes)",
    cfg.ADMIN_ADDR: "admin HOST:PORT (default 127.0.0.1:15000)",
    cfg.STATS_ADDR: "metrics HOST:PORT (default 0.0.0.0:15020)",
    cfg.READINESS_ADDR: "readiness HOST:PORT (default 0.0.0.0:15021)",
    cfg.SOCKS5_ADDR: "SOCKS5 HOST:PORT (default 127.0.0.1:15080, '' to disable)",
    cfg.INBOUND_PLAINTEXT_TARGET_PORT: "dedicated mode: app port behind <workload ip>:15006",
    cfg.INPOD_UDS: "shared mode: the node agent's ZDS socket (default /var/run/ztunnel/ztunnel.sock)",
    cfg.DRAIN_DURATION: "how long live connections may finish on shutdown (default 5s)",
    cfg.LOG_LEVEL: "debug, info, warning or error",
    cfg.LOG_FORMAT: "console or json",
}


def _parser() -> argparse.ArgumentParser:
    return env_flag_parser(
        "ztunnel", "ambient mesh node proxy (HBONE, L4 policy)", _FLAGS, fake_ca=cfg.FAKE_CA
    )


def main(argv: list[str] | None = None) -> None:
    from ztunnel.app import StartupError, Ztunnel

    process_main(
        "ztunnel", _parser(), argv, lambda flags: cfg.parse_config(flags=flags), Ztunnel,
        drain_seconds=lambda c: c.drain_duration, logging_of=lambda c: (c.log_level, c.log_format),
        config_error=cfg.ConfigError, startup_error=StartupError,
    )


if __name__ == "__main__":
    main()
