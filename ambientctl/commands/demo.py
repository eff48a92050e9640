"""``ambientctl demo``: the README's first command.

By default the mesh on a two-node local cluster (needs root; see ``ambientctl.demos.cluster``): traffic
across nodes through ztunnel, a capture proving the node link carries only TLS on 15008, a DENY policy
refusing and its removal allowing. ``ambientctl demo traffic`` runs the traffic-management demo instead
(see ``ambientctl.demos.traffic``: a canary shifted 100/0 -> 90/10 -> 50/50 with the counts, a flaky
pod's failures absorbed by a retry). ``--control-plane`` runs the earlier demo instead (istiod-lite, delta
xDS and the CA's node authorization with real processes, no root). Exit code 0 only when every step
passed; the cluster is always removed (unless ``--keep``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ambientctl.cluster import ClusterError
from ambientctl.demos.cluster import ClusterDemo, demo_state_dir
from ambientctl.demos.control_plane import run_control_plane_demo
from ambientctl.demos.traffic import TrafficDemo, traffic_demo_state_dir

from .common import CliError, stdout_console


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


DEMOS = ("mesh", "traffic")


def demo(
    which: Annotated[
        str,
        typer.Argument(
            help="mesh (the default): the mesh proven step by step; traffic: canary shift and "
            "retries at the waypoint."
        ),
    ] = "mesh",
    control_plane: Annotated[
        bool,
        typer.Option("--control-plane", help="Run the control-plane demo instead (no root, no cluster)."),
    ] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the demo's cluster (or state directory) in place.")
    ] = False,
    xds_port: Annotated[
        int, typer.Option("--xds-port", help="--control-plane: loopback port for xDS + CA.")
    ] = 15012,
    monitoring_port: Annotated[
        int, typer.Option("--monitoring-port", help="--control-plane: loopback port for monitoring.")
    ] = 15014,
) -> None:
    """Run the mesh on a two-node local cluster and prove it works (root); `demo traffic` shows traffic
    management at the waypoint; see --control-plane."""
    if which not in DEMOS:
        raise CliError(f"no demo {which!r}: choose one of {', '.join(DEMOS)}")
    if control_plane:
        if which != "mesh":
            raise CliError("--control-plane runs its own demo: leave out the demo name")
        run_control_plane_demo(keep, xds_port, monitoring_port)
        return
    try:
        if which == "traffic":
            ok = TrafficDemo(stdout_console(), traffic_demo_state_dir()).run(keep=keep)
        else:
            ok = ClusterDemo(stdout_console(), demo_state_dir()).run(keep=keep)
    except ClusterError as e:
        raise CliError(str(e)) from None
    if not ok:
        raise typer.Exit(1)
