"""How the local cluster's long-running components (``supervisor``, ``kubelet_main``) start: the same
command line (``--state-dir``, ``--prefix``, ``--log-level``; ``component_argv`` builds it for ``mesh``,
``start_component`` parses it), logging configured from it, and a stop event that SIGTERM/SIGINT set (a
component checks it between passes and exits cleanly).

Invariant: nothing here touches the cluster beyond making its ``Cluster`` handle; signal handlers are
installed in the calling (main) thread only.
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from meshcore.logs import configure_logging

from .cluster import Cluster
from .spec import DEFAULT_PREFIX


@dataclass(frozen=True)
class ComponentStart:
    """What a component's ``main`` works with: its parsed arguments, its stop event and its cluster."""

    args: argparse.Namespace
    stop: threading.Event
    cluster: Cluster


def component_argv(python: str, module: str, state_dir: Path, prefix: str, log_level: str) -> tuple[str, ...]:
    """The command that starts the component ``module`` (``python -m module``) for a cluster."""
    return (python, "-m", module, "--state-dir", str(state_dir), "--prefix", prefix, "--log-level", log_level)


def start_component(prog: str, description: str, argv: list[str] | None) -> ComponentStart:
    """Parse ``argv`` (``--state-dir`` required), configure logging, and stop on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return ComponentStart(args, stop, Cluster(args.state_dir, prefix=args.prefix))
