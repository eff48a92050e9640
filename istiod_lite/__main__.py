"""``istiod-lite``: run the control plane, or issue a node credential from its CA.

    istiod-lite [serve] [--state-dir DIR] [--xds-address H:P] [--monitoring-address H:P]
    istiod-lite node-credential NODE --out DIR [--state-dir DIR]

Settings come from flags over environment variables (see ``istiod_lite.config``). SIGTERM or SIGINT stop
the server cleanly (streams closed, store closed). Errors in the configuration or the CA files print one
line saying what to fix and exit 2. uvloop is used when installed (grpc.aio runs on it; the in-process
xDS and CA tests pass on it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from istiod_lite.config import ConfigError, IstiodConfig, parse_config
from meshcore.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="istiod-lite", description="ambient mesh control plane (xDS + CA)")
    p.add_argument("--state-dir", help="state directory (store.db, ca/); env AMBIENT_STATE_DIR")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["console", "json"])
    p.add_argument("--xds-address", help="HOST:PORT for xDS + CA over TLS (default 0.0.0.0:15012)")
    p.add_argument("--monitoring-address", help="HOST:PORT for /metrics and /debug (default 0.0.0.0:15014)")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the control plane (default)")
    cred = sub.add_parser("node-credential", help="issue the client credential of a node's ztunnel")
    cred.add_argument("node", help="the node name the credential is bound to")
    cred.add_argument("--out", required=True, help="directory to write key.pem (0600), cert-chain.pem, root-cert.pem")
    return p


async def _serve(config: IstiodConfig) -> int:
    from istiod_lite.app import ControlPlane

    cp = ControlPlane(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await cp.start()
    await stop.wait()
    await cp.stop()
    return 0


def _node_credential(config: IstiodConfig, node: str, out: Path) -> int:
    from istiod_lite.app import load_ca
    from istiod_lite.ca.storage import write_credential

    ca = load_ca(config, datetime.now(UTC))
    cred = ca.issue_node_credential(node, datetime.now(UTC))
    write_credential(out, cred.key_pem, cred.chain_pem, cred.roots_pem)
    print(f"node credential for {node} written to {out}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    try:
        config = parse_config(
            state_dir=args.state_dir,
            xds_address=args.xds_address,
            monitoring_address=args.monitoring_address,
            log_level=args.log_level,
            log_format=args.log_format,
        )
        configure_logging(config.log_level, config.log_format)
        if command == "node-credential":
            sys.exit(_node_credential(config, args.node, Path(args.out)))
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        coro = _serve(config)
        sys.exit(uvloop.run(coro) if uvloop is not None else asyncio.run(coro))
    except (ConfigError, ValueError, OSError) as e:
        print(f"istiod-lite: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
