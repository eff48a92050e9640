"""``ztunnel``: run the node proxy.

    ztunnel [--node-name NODE] [--local-xds-path FILE] [--xds-address H:P] [--fake-ca] ...

Settings come from flags over environment variables (``ztunnel.config``; see docs/ztunnel.md). SIGTERM
or SIGINT (or ``POST /quitquitquit``) drain gracefully: listeners stop accepting, live connections get
``DRAIN_DURATION`` to finish, then everything closes. A configuration or startup problem prints one line
saying what to fix and exits 2. uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ztunnel import config as cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ztunnel", description="ambient mesh node proxy (HBONE, L4 policy)")
    flags = {
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
    for name, text in flags.items():
        p.add_argument("--" + name.lower().replace("_", "-"), dest=name, help=f"{text} (env {name})")
    p.add_argument("--fake-ca", dest=cfg.FAKE_CA, action="store_const", const="true",
                   help=f"sign certificates in-process, for tests (env {cfg.FAKE_CA})")
    return p


async def _run(config: cfg.ZtunnelConfig) -> int:
    from ztunnel.app import Ztunnel

    zt = Ztunnel(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await zt.start()
    quit_requested = asyncio.ensure_future(zt.wait_stop_requested())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({quit_requested, signalled}, return_when=asyncio.FIRST_COMPLETED)
    quit_requested.cancel()
    signalled.cancel()
    await zt.drain(loop.time() + config.drain_duration)
    await zt.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    from prometheus_client import disable_created_metrics

    from meshcore.logs import configure_logging
    from ztunnel.app import StartupError

    args = vars(_parser().parse_args(argv))
    try:
        config = cfg.parse_config(flags={k: v for k, v in args.items() if v is not None})
    except cfg.ConfigError as e:
        print(f"ztunnel: {e}", file=sys.stderr)
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
        print(f"ztunnel: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
