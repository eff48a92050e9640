"""``cluster up|down|status|exec|logs``: the local cluster (nodes and pods as network namespaces).

Thin: parse options, call ``ambientctl.cluster.Cluster`` (and ``Mesh`` for the mesh processes: ``up``
starts the cluster's supervisor, which starts istiod-lite, a node agent and a ztunnel per node and the
kubelet and restarts any that dies, unless ``--no-mesh``), print. Every ``ClusterError`` (a tool missing,
a bad cluster.yaml, a pod not found) becomes one ``error:`` line naming the fix, and exit code 1; so do
a user who is not root (checked first: every command reads root's files) and a ``--prefix`` that is not
the recorded cluster's (``down --prefix`` never removes another cluster than the one named).
``exec`` keeps the terminal (stdin, stdout, stderr pass through) and exits with the command's code.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from ambientctl.cluster import (
    DEFAULT_PREFIX,
    Cluster,
    ClusterError,
    ClusterSpec,
    ClusterStatus,
    ProcessStatus,
    load_cluster_spec,
)
from ambientctl.cluster.errors import NeedsRoot, PrefixMismatch, UnknownNode
from ambientctl.cluster.kubelet import mark_pods_stopped
from ambientctl.cluster.mesh import SUPERVISOR, Mesh, MeshStatus
from ambientctl.cluster.spec import validate_cluster_spec
from ambientctl.cluster.supervision import describe_exit

from .common import CliError, OutputFormat, cli_state, note, print_documents, print_table

PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        help="Name prefix of the cluster's namespaces and links, used when no state records it "
        "(a recorded cluster with another prefix is refused).",
    ),
]
OutputOption = Annotated[OutputFormat, typer.Option("-o", "--output", help="Output format.")]


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(
        help="Run a local cluster: nodes and pods as network namespaces on this machine.",
        no_args_is_help=True,
    )
    cluster_app.command("up")(up)
    cluster_app.command("down")(down)
    cluster_app.command("status")(status)
    cluster_app.command("exec")(exec_in_pod)
    cluster_app.command("logs")(logs)
    cluster_app.command("capture")(capture)
    app.add_typer(cluster_app, name="cluster")


@contextmanager
def _cluster_errors() -> Iterator[None]:
    try:
        yield
    except ClusterError as e:
        raise CliError(str(e)) from None


def _cluster(ctx: typer.Context, prefix: str = DEFAULT_PREFIX) -> Cluster:
    return Cluster(cli_state(ctx).state_dir(), prefix=prefix)


def root_problem(euid: int, command: str) -> ClusterError | None:
    """The error for a user who is not root (every cluster command reads root's files or namespaces)."""
    return None if euid == 0 else NeedsRoot(command)


def _require_root(command: str) -> None:
    problem = root_problem(os.geteuid(), command)
    if problem is not None:
        raise CliError(str(problem))


def _prefixed_cluster(ctx: typer.Context, prefix: str | None) -> Cluster:
    """The cluster of this state directory; ``--prefix`` naming another than the recorded one is refused
    (``down --prefix`` must never remove a different cluster than the one the user named)."""
    if prefix is not None:
        validate_cluster_spec(ClusterSpec(prefix=prefix), "--prefix")
    cluster = _cluster(ctx, prefix or DEFAULT_PREFIX)
    if prefix is not None:
        try:
            recorded = cluster.recorded_prefix()
        except ClusterError:
            recorded = None  # unreadable state: `down` sweeps by the prefix given
        if recorded is not None and recorded != prefix:
            raise CliError(str(PrefixMismatch(str(cluster.directory.parent), recorded, prefix)))
    return cluster


def up(
    ctx: typer.Context,
    nodes: Annotated[
        int | None, typer.Option("--nodes", help="Number of nodes (overrides the file).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="cluster.yaml: nodes, prefix, networking.")
    ] = None,
    output: OutputOption = OutputFormat.table,
    mesh: Annotated[
        bool,
        typer.Option(
            "--mesh/--no-mesh",
            help="Start the mesh (istiod-lite, node agents, ztunnels) and the kubelet; "
            "--no-mesh: the network only.",
        ),
    ] = True,
) -> None:
    """Create the local cluster (or report the one that is up) and start the mesh on it."""
    _require_root("cluster up")
    started: MeshStatus | None = None
    with _cluster_errors():
        spec = load_cluster_spec(file) if file is not None else None
        if nodes is not None:
            spec = msgspec.structs.replace(spec or ClusterSpec(), nodes=nodes)
            validate_cluster_spec(spec, "--nodes")
        cluster = _cluster(ctx, spec.prefix if spec else DEFAULT_PREFIX)
        current = cluster.up(spec)
        if mesh:
            # The supervisor starts the mesh and then restarts what dies (supervisor.py); idempotent:
            # a running supervisor and running components are left alone.
            started = Mesh(cluster).start_supervised()
            current = msgspec.structs.replace(cluster.status(), changed=current.changed)
    if output is not OutputFormat.table:
        print_documents([_document(current)], output, single=True)
        return
    if current.changed:
        typer.echo(f"cluster up: {len(current.nodes)} node(s), prefix {current.prefix}")
    else:
        typer.echo(f"cluster already up: {len(current.nodes)} node(s), prefix {current.prefix} (unchanged)")
    _print_nodes(current)
    if started is not None:
        typer.echo(f"mesh up: istiod-lite at {started.istiod_address}, ztunnel and node agent on every node")
        typer.echo("  " + ", ".join(f"{step} {took:.1f}s" for step, took in started.timings))
    else:
        typer.echo(f"istiod_lite address: {current.istiod_address}")


def down(ctx: typer.Context, prefix: PrefixOption = None) -> None:
    """Remove the local cluster: every namespace, link, rule and process it made."""
    _require_root("cluster down")
    with _cluster_errors():
        report = _prefixed_cluster(ctx, prefix).down()
    # Nothing runs the pods any more: their statuses say so (no phase Running, no IP, not Ready).
    mark_pods_stopped(cli_state(ctx).store())
    if not report.had_state and not report.netns_removed and not report.processes_stopped:
        typer.echo("no local cluster found (nothing to remove)")
        return
    typer.echo(
        f"cluster down: removed {len(report.netns_removed)} network namespace(s), "
        f"stopped {len(report.processes_stopped)} process(es)"
    )


def status(
    ctx: typer.Context, output: OutputOption = OutputFormat.table, prefix: PrefixOption = None
) -> None:
    """Show nodes, pods, services and processes of the local cluster."""
    _require_root("cluster status")
    with _cluster_errors():
        current = _prefixed_cluster(ctx, prefix).status()
    if output is not OutputFormat.table:
        print_documents([_document(current)], output, single=True)
        return
    for problem in current.problems:
        note(f"warning: {problem}")
    supervisor = next((p for p in current.processes if p.name == SUPERVISOR), None)
    if supervisor is not None and not supervisor.running:
        note(
            "warning: the supervisor is not running, so a mesh component that dies stays down: "
            "`ambientctl cluster up` starts it again"
        )
    if current.phase == "down":
        typer.echo("no local cluster is up (`ambientctl cluster up` creates one)")
        return
    typer.echo(
        f"cluster {current.phase}: prefix {current.prefix}, istiod_lite address {current.istiod_address}"
    )
    _print_nodes(current)
    if current.pods:
        typer.echo("")
        rows = [
            [
                p.namespace,
                p.name,
                p.node,
                p.ip,
                "-" if p.running is None else ("Running" if p.running else "Exited"),
                str(p.pid) if p.pid else "-",
            ]
            for p in current.pods
        ]
        print_table(["NAMESPACE", "POD", "NODE", "IP", "PROCESS", "PID"], rows)
    if current.services:
        typer.echo("")
        rows = [
            [
                s.namespace,
                s.name,
                s.vip,
                ",".join(f"{p.port}->{p.target_port}/{p.protocol}" for p in s.ports) or "<none>",
                ",".join(s.endpoints) or "<none>",
            ]
            for s in current.services
        ]
        print_table(["NAMESPACE", "SERVICE", "VIP", "PORTS", "ENDPOINTS"], rows)
    if current.processes:
        typer.echo("")
        now = time.time()
        rows = [[*component_row(p, now), p.log] for p in current.processes]
        print_table(["COMPONENT", "NETNS", "PID", "STATUS", "RESTARTS", "LAST-EXIT", "LOG"], rows)


def exec_in_pod(
    ctx: typer.Context,
    pod: Annotated[str, typer.Argument(help="Pod name.")],
    command: Annotated[list[str], typer.Argument(help="Command and arguments (after --).")],
    namespace: Annotated[str, typer.Option("-n", "--namespace", help="Pod namespace.")] = "default",
) -> None:
    """Run a command inside a pod's network namespace: cluster exec POD [-n NS] -- CMD..."""
    _require_root("cluster exec")
    with _cluster_errors():
        argv = _cluster(ctx).exec_argv(pod, namespace, command)
    try:
        code = subprocess.call(argv)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} not found: apt-get install iproute2") from None
    raise typer.Exit(code)


def logs(
    ctx: typer.Context,
    component: Annotated[
        str, typer.Argument(help="Component (istiod, ztunnel-node-1) or pod (<ns>/<name>).")
    ],
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines.", min=0)] = None,
) -> None:
    """Print the log of a component or pod of the local cluster."""
    _require_root("cluster logs")
    with _cluster_errors():
        path = _cluster(ctx).log_path(component)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    lines = text.splitlines()
    if tail is not None:
        lines = lines[-tail:] if tail else []
    for line in lines:
        typer.echo(line)


def capture(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node whose link to capture (node-1, ...).")],
    seconds: Annotated[float, typer.Option("--seconds", help="How long to capture.", min=0.1, max=600)] = 5.0,
    marker: Annotated[
        list[str] | None, typer.Option("--marker", help="Plaintext to look for on the wire (repeatable).")
    ] = None,
    max_packets: Annotated[int, typer.Option("--max-packets", help="Stop after this many.", min=1)] = 100_000,
) -> None:
    """Capture a node's link for a while and show the TCP flows between pods, and which were TLS."""
    _require_root("cluster capture")

    from ambientctl.capture import CaptureError, LinkCapture, summarize

    with _cluster_errors():
        layout = _cluster(ctx).layout()
        found = layout.find_node(node)
        if found is None:
            raise UnknownNode(node, [n.name for n in layout.nodes])
        markers = [m.encode() for m in marker or []]
        try:
            with LinkCapture(found.netns, "eth0", max_packets=max_packets, time_limit=seconds + 1) as cap:
                note(f"capturing {node}'s link ({found.netns} eth0) for {seconds:g} s")
                time.sleep(seconds)  # the operator's chosen window
        except CaptureError as e:
            raise CliError(str(e)) from None
        summary = summarize(cap.stop(), markers=markers, between=[n.pod_cidr for n in layout.nodes])
    typer.echo(
        f"{summary.packets} packets on {node}'s link in {seconds:g} s ({summary.ignored} not between pods)"
    )
    if summary.flows:
        rows = [
            [
                f.client,
                f.server,
                str(f.packets),
                str(f.payload_bytes),
                {True: "yes", False: "NO", None: "-"}[f.tls],
            ]
            for f in summary.flows
        ]
        print_table(["CLIENT", "SERVER", "PACKETS", "PAYLOAD", "TLS"], rows)
    for m in markers:
        typer.echo(
            f"marker {m.decode()!r}: {'SEEN in plaintext' if m in summary.markers_found else 'not seen'}"
        )


def component_row(p: ProcessStatus, now: float) -> list[str]:
    """A component's cells: name, netns, pid, status (``BackOff (restart in 4s)``), restarts, last exit
    (``killed by SIGKILL 12s ago``)."""
    state = p.state
    if state == "BackOff" and p.restart_at is not None:
        state = f"BackOff (restart in {max(0, int(p.restart_at - now + 0.999))}s)"
    last = describe_exit(p.last_exit, now) if p.last_exit is not None else "-"
    return [p.name, p.netns or "(host)", str(p.pid), state, str(p.restarts), last]


def _print_nodes(current: ClusterStatus) -> None:
    rows = [[n.name, n.netns, n.ip, n.pod_cidr, "Ready" if n.present else "Missing"] for n in current.nodes]
    print_table(["NODE", "NETNS", "IP", "POD-CIDR", "STATUS"], rows)


def _document(current: ClusterStatus) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(current)
    return doc
