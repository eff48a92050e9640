"""``istiod-lite``: run the control plane, or issue a node credential from its CA.

    istiod-lite [--allow-empty-store] [serve] [--state-dir DIR] [--xds-address H:P] [--monitoring-address H:P]
                [--token-ca-address H:P|off]
    istiod-lite node-credential NODE --out DIR [--state-dir DIR]

Settings come from flags over environment variables (see ``istiod_lite.config``). SIGTERM or SIGINT stop
the server cleanly (streams closed, store closed). Every start-up refusal (a bad setting; a store that
is damaged, locked by another process, or missing beside an existing CA; unreadable or damaged CA files;
a port in use) prints one line on stderr naming the file or setting and the fix, and exits 2, never a
traceback. uvloop is used when installed (grpc.aio runs on it; the in-process xDS and CA tests pass on it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import structlog

from istiod_lite.ca.errors import CaError
from istiod_lite.config import ConfigError, IstiodConfig, check_store_state, parse_config
from meshcore.logs import configure_logging
from meshcore.satoken import IssuerKeyError
from meshcore.store.errors import StoreDamaged, StoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="istiod-lite", description="ambient mesh control plane (xDS + CA)")
    p.add_argument("--state-dir", help="state directory (store.db, ca/); env AMBIENT_STATE_DIR")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["console", "json"])
    p.add_argument("--xds-address", help="HOST:PORT for xDS + CA over TLS (default 0.0.0.0:15012)")
    p.add_argument("--monitoring-address", help="HOST:PORT for /metrics and /debug (default 0.0.0.0:15014)")
    p.add_argument(
        "--token-ca-address",
        help="HOST:PORT for the CA authenticated by service-account tokens, server TLS only (default: the "
        "xDS host, port 15011; 'off' disables); env ISTIOD_TOKEN_CA_ADDRESS",
    )
    p.add_argument(
        "--allow-empty-store",
        action="store_true",
        help="start even though store.db is missing or empty while ca/ holds a root (drops all config)",
    )
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
    from istiod_lite.ca.storage import CA_DIR, ROOT_CERT_FILE, ROOT_KEY_FILE, write_credential
    from meshcore.store import SqliteStore, store_path

    ca_dir = config.state_dir / CA_DIR
    if config.ca_cert_file is None and not any((ca_dir / f).exists() for f in (ROOT_KEY_FILE, ROOT_CERT_FILE)):
        # About to generate the root: create the store first, as serving does, so that a root in ca/
        # always means a store was created beside it (what ``check_store_state`` relies on).
        SqliteStore(store_path(config.state_dir)).close()
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
            allow_empty_store=args.allow_empty_store,
            token_ca_address=args.token_ca_address,
        )
        configure_logging(config.log_level, config.log_format)
        if command == "node-credential":
            sys.exit(_node_credential(config, args.node, Path(args.out)))
        if check_store_state(config):
            structlog.get_logger("istiod_lite").warning(
                "starting with an empty store although ca/ holds a root (--allow-empty-store)",
                state_dir=str(config.state_dir),
            )
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        coro = _serve(config)
        sys.exit(uvloop.run(coro) if uvloop is not None else asyncio.run(coro))
    except StoreDamaged as e:
        # The store's own advice ("move it aside to start with an empty store") needs our flag here.
        print(f"istiod-lite: {e} (istiod-lite then needs --allow-empty-store)", file=sys.stderr)
        sys.exit(2)
    except (ConfigError, StoreError, CaError, IssuerKeyError, ValueError, OSError) as e:
        print(f"istiod-lite: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
