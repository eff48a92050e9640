"""``ambientctl version`` (and the global ``--version``): this client's version and istiod-lite's.

The client's version is the installed distribution's (package metadata of ``ambient-mesh``). The server's
is asked of the local cluster's istiod-lite when it can be reached: Istio's ``istio_build`` metric (its
``tag`` label) on the monitoring port if istiod-lite exports one, else, when the ``istiod`` process runs
from this very Python installation and answers ``/ready``, that installation's version. Anything else is
``Server Version: unavailable (<reason>)``: the cluster is not up, istiod-lite is not running, the
monitoring port cannot be reached (as non-root the cluster's network namespaces cannot be entered), or it
names no version. Never fails for a server that is missing: the client's version always prints.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import CliError, CliState, OutputFormat, cli_state, print_documents

PACKAGE = "ambient-mesh"
ISTIOD_COMPONENT = "istiod"
UNAVAILABLE = "unavailable"
# istio_build{component="pilot",tag="1.22.0"} 1
_BUILD = re.compile(r'^istio_build\{[^}]*\btag="([^"]+)"[^}]*\}\s', re.MULTILINE)


def register(app: typer.Typer) -> None:
    app.command("version")(version)


def client_version() -> str:
    """The installed ambient-mesh distribution's version (``unknown`` when not installed as one)."""
    try:
        return package_version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def build_tag(metrics: str) -> str | None:
    """The ``tag`` of Istio's ``istio_build`` gauge in a Prometheus text page, None without one."""
    found = _BUILD.search(metrics)
    return found.group(1) if found else None


def server_version(state_dir: Path) -> tuple[str | None, str]:
    """(istiod-lite's version, None when unavailable; the reason it is unavailable, else "")."""
    from ambientctl.cluster import Cluster, ClusterError
    from ambientctl.troubleshoot.reach import ISTIOD, ISTIOD_MONITORING, Reach, ReachError, Target

    cluster = Cluster(state_dir)
    try:
        if not cluster.is_up():
            return None, "the local cluster is not up; `ambientctl cluster up` starts it"
        record = cluster.find_component(ISTIOD_COMPONENT)
        if record is None or not cluster.procs.is_running(record):
            return None, "istiod-lite is not running on the local cluster; see `ambientctl cluster status`"
        reach = Reach(cluster, timeout=2.0)
        metrics = reach.get(Target(ISTIOD), ISTIOD_MONITORING, "/metrics")
        tag = build_tag(metrics.text) if metrics.status == 200 else None
        if tag:
            return tag, ""
        ready = reach.get(Target(ISTIOD), ISTIOD_MONITORING, "/ready")
    except (ClusterError, ReachError, OSError) as e:
        return None, str(e)
    if ready.status != 200:
        return None, f"istiod-lite answers /ready with HTTP {ready.status}"
    if record.argv and Path(record.argv[0]).resolve() == Path(sys.executable).resolve():
        return client_version(), ""
    return None, "istiod-lite runs from another Python installation and exports no istio_build metric"


def version_document(client: str, server: str | None, reason: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"clientVersion": {"gitVersion": client}}
    doc["serverVersion"] = {"gitVersion": server} if server else {"unavailable": reason}
    return doc


def version_lines(client: str, server: str | None, reason: str, *, client_only: bool = False) -> list[str]:
    lines = [f"Client Version: {client}"]
    if not client_only:
        lines.append(f"Server Version: {server}" if server else f"Server Version: {UNAVAILABLE} ({reason})")
    return lines


def show_versions(state: CliState, *, client_only: bool, output: OutputFormat) -> None:
    client = client_version()
    server, reason = None, ""
    if not client_only:
        try:
            server, reason = server_version(state.state_dir())
        except CliError as e:  # e.g. on a Kubernetes cluster: istiod-lite is not the local cluster's
            reason = str(e)
    if output is OutputFormat.table:
        for line in version_lines(client, server, reason, client_only=client_only):
            typer.echo(line)
        return
    doc = version_document(client, server, reason)
    if client_only:
        del doc["serverVersion"]
    print_documents([doc], output, single=True)


def version(
    ctx: typer.Context,
    client: Annotated[bool, typer.Option("--client", help="Only this client's version.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("-o", "--output", help="Output format (table: two lines).")
    ] = OutputFormat.table,
) -> None:
    """Print the client's version and, when it can be reached, istiod-lite's."""
    show_versions(cli_state(ctx), client_only=client, output=output)
