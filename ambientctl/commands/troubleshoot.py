"""Troubleshooting commands: ``fetch``, ``check``, ``proxy-status``, ``explain``, ``logs``, ``tap``,
``stat``, ``graph`` and ``dashboard``.

- ``fetch TARGET :PORT/PATH``: GET any endpoint of the local cluster from the host (istiod's monitoring,
  a node's ztunnel admin/metrics/readiness and node agent, a waypoint pod's admin), through
  ``troubleshoot.reach`` (the netns is entered by the tool, no ``ip netns exec``).
- ``check`` (``--pre`` for the machine alone): one line per check with ✔/‼/✖ and, on failure, what was
  seen and the remediation, grouped as ``linkerd check`` prints them; exit 1 on any failure;
  ``-o json``.
- ``proxy-status`` (alias ``ps``): one row per proxy connected to istiod-lite, istioctl's columns.
- ``explain FROM TO[:PORT]``: what the data plane decides for a connection (``troubleshoot.explain``) and,
  beside it, the last such connection as the ztunnels' and waypoints' access logs recorded it (with a
  denial's reason).
- ``logs --component C [--node] [--pod] [-f] [--since] [--denied]``: a component's logs on every node,
  merged by time; ``tap TARGET``: live access records of a pod or service (``troubleshoot.logs``).
- ``stat`` (alias ``top``) and ``graph`` (text, DOT, json): golden signals per service and the edges
  between workloads, from every ztunnel's and waypoint's metrics (``troubleshoot.traffic``).
- ``dashboard``: the same on a local web page (``troubleshoot.dashboard``).
- ``bug-report [--out PATH]``: one tar.gz of every component's config dump, logs, metrics, versions and
  the cluster's resources, key material redacted (``troubleshoot.bugreport``); prints where it wrote it.
Formatting lives here; verdicts are computed by the pure functions of ``ambientctl.troubleshoot``.

With ``--kubeconfig``/``--context`` every command here works on that Kubernetes cluster: the source is
chosen once, by ``troubleshoot.remote.reach_for`` (``_view``): ``KubeReach`` (the API server's pod list,
pod port-forward and pods/log) instead of the local cluster's ``Reach``, log files and store; the commands
call the same methods on either (``MeshView``). ``check --pre`` and ``exec`` stay local-only.
"""

from __future__ import annotations

import json
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from ambientctl.cluster import Cluster, ClusterError
from ambientctl.troubleshoot.bugreport import default_path, gather, secrets_in, write_archive
from ambientctl.troubleshoot.checks import CheckResult, gather_kubernetes, gather_mesh, gather_pre, kube_rows
from ambientctl.troubleshoot.dashboard import DashboardServer, LiveSource
from ambientctl.troubleshoot.explain import (
    ExplainInputError,
    RequestSpec,
    describe_pod,
    explain,
    last_seen,
    last_seen_json,
    mesh_config_from_registry,
    record_query,
    render,
    render_last_seen,
    render_pod,
    resolve_destination,
    resolve_source,
)
from ambientctl.troubleshoot.explain import to_json as explain_json
from ambientctl.troubleshoot.logs import (
    COMPONENTS,
    TAP_HEADERS,
    LogRecord,
    component_files,
    concerns,
    denied,
    follow,
    parse_duration,
    parse_line,
    read,
    record_json,
    since,
    tap_row,
)
from ambientctl.troubleshoot.reach import (
    ZTUNNEL_STATS,
    Reach,
    ReachError,
    parse_location,
    parse_target,
)
from ambientctl.troubleshoot.remote import (
    KubeReach,
    LogSource,
    MeshView,
    component_sources,
    merge_logs,
    parse_remote_target,
    reach_for,
)
from ambientctl.troubleshoot.syncstatus import ProxyRow, proxy_rows, row_json, status_table
from ambientctl.troubleshoot.traffic import (
    Edge,
    Sample,
    edge_json,
    graph_dot,
    graph_table,
    parse_metrics,
    stat_json,
    stat_table,
    stats,
    tag,
    traffic,
)

from . import pods
from .common import EXIT_FAILURE, CliError, cli_state, note, print_table

OK, WARN, FAIL, SKIP = "✔", "‼", "✖", "-"


class Format(StrEnum):
    text = "text"
    json = "json"


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (ReachError, ClusterError) as e:
        raise CliError(str(e)) from None


def _view(ctx: typer.Context) -> MeshView:
    """This command's source (``reach_for``: the Kubernetes cluster with --kubeconfig/--context, else the
    local cluster)."""
    with _errors():
        return reach_for(cli_state(ctx))


def _reach(ctx: typer.Context) -> Reach:
    return Reach(Cluster(cli_state(ctx).state_dir()))


def _kube_reach(ctx: typer.Context) -> KubeReach | None:
    """The Kubernetes cluster's endpoints with --kubeconfig/--context, else None (the local cluster)."""
    return _view(ctx).kube if cli_state(ctx).on_kubernetes else None


# --- fetch -------------------------------------------------------------------------------------------


def fetch(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(metavar="TARGET", help="istiod, node/<node> or pod/<namespace>/<name> (or --node/--pod).",
                       show_default=False),
    ] = None,
    location: Annotated[
        str | None,
        typer.Argument(metavar=":PORT/PATH", help=":PORT/PATH, e.g. :15014/debug/syncz or :15000/config_dump.",
                       show_default=False),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="That node's ztunnel (and node agent): TARGET node/<node>.")
    ] = None,
    pod: Annotated[str | None, typer.Option("--pod", help="<namespace>/<name>: TARGET pod/<ns>/<name>.")] = None,
) -> None:
    """GET an endpoint of the local cluster from the host (it is entered in its network namespace); with
    --kubeconfig/--context, of that cluster's pods through the API server's port-forward (also
    waypoint/<namespace>/<gateway>)."""
    if node is not None or pod is not None:
        if node is not None and pod is not None:
            raise CliError("pass either --node or --pod, not both")
        if location is not None:
            raise CliError("with --node or --pod give only :PORT/PATH, not a TARGET too")
        location, target = target, f"node/{node}" if node is not None else "pod/{}/{}".format(*_pod_ref(pod or ""))
    if target is None or location is None:
        raise CliError("give TARGET :PORT/PATH (TARGET: istiod, node/<node>, pod/<namespace>/<name>), or "
                       "--node NAME or --pod NAMESPACE/NAME with :PORT/PATH")
    kube = _kube_reach(ctx)
    with _errors():
        port, path = parse_location(location)
        if kube is not None:
            answer = kube.get(parse_remote_target(target), port, path)
        else:
            answer = _reach(ctx).get(parse_target(target), port, path)
    sys.stdout.write(answer.text)
    if answer.text and not answer.text.endswith("\n"):
        sys.stdout.write("\n")
    if answer.status >= 400:
        raise CliError(f"{target} :{port}{path} answered HTTP {answer.status}")


# --- check -------------------------------------------------------------------------------------------


def format_results(results: Sequence[CheckResult]) -> list[str]:
    """``linkerd check``'s layout: a heading per category, a mark per check, detail and fix indented."""
    lines: list[str] = []
    category = None
    for r in results:
        if r.category != category:
            if lines:
                lines.append("")
            lines += [r.category.value, "-" * len(r.category.value)]
            category = r.category
        if r.skipped:
            lines.append(f"{SKIP} {r.description}: skipped ({r.detail})")
            continue
        mark = FAIL if not r.ok else (WARN if r.warning else OK)
        lines.append(
            f"{mark} {r.description}" + (f" ({r.detail})" if r.ok and r.detail and not r.warning else "")
        )
        if not r.ok or r.warning:
            if r.detail:
                lines.append(f"    {r.detail}")
            if r.remediation:
                lines.append(f"    fix: {r.remediation}")
    failures = sum(1 for r in results if not r.ok)
    lines.append("")
    lines.append(
        f"Status check results are {FAIL if failures else OK}" + (f" ({failures} failed)" if failures else "")
    )
    return lines


def check(
    ctx: typer.Context,
    pre: Annotated[bool, typer.Option("--pre", help="Only check this machine can host the mesh.")] = False,
    output: Annotated[Format, typer.Option("-o", "--output", help="text or json.")] = Format.text,
) -> None:
    """Check the machine and the mesh; exit 1 if any check fails. With --kubeconfig/--context: the checks
    that apply to a Kubernetes cluster (the others are listed as skipped, with why)."""
    started = time.monotonic()
    kube = _kube_reach(ctx)
    if kube is not None:
        if pre:
            raise CliError("--pre checks this machine as a host of the local cluster; run it without "
                           "--kubeconfig/--context")
        results, _ = gather_kubernetes(kube)
    else:
        results = gather_pre()
    if not pre and kube is None:
        state = cli_state(ctx)
        cluster = Cluster(state.state_dir())
        mesh_results, _ = gather_mesh(cluster, state.store(), Reach(cluster))
        results += mesh_results
    took = time.monotonic() - started
    failures = sum(1 for r in results if not r.ok)
    if output is Format.json:
        typer.echo(json.dumps({"success": not failures, "seconds": round(took, 3),
                               "results": [r.to_json() for r in results]}, indent=2, ensure_ascii=False))  # fmt: skip
    else:
        for line in format_results(results):
            typer.echo(line)
    if failures:
        raise typer.Exit(EXIT_FAILURE)


# --- proxy-status ------------------------------------------------------------------------------------


def proxy_status(
    ctx: typer.Context,
    output: Annotated[Format, typer.Option("-o", "--output", help="text or json.")] = Format.text,
) -> None:
    """One row per proxy connected to istiod-lite and the sync state of each of its types (with
    --kubeconfig/--context: of every istiod replica, through the API server's port-forward)."""
    kube = _kube_reach(ctx)
    if kube is not None:
        with _errors():
            try:
                rows, problems = kube_rows(kube)
            except ValueError as e:
                raise CliError(str(e)) from None
        for problem in problems:
            note(f"warning: {problem}; its proxies are not listed")
        _print_rows(rows, output)
        return
    with _errors():
        reach = _reach(ctx)
        place = reach.place(parse_target("istiod"))
        try:
            rows = proxy_rows(reach.istiod("/debug/syncz"), f"istiod-lite@{place.host}")
        except ValueError as e:
            raise CliError(str(e)) from None
    _print_rows(rows, output)


def _print_rows(rows: Sequence[ProxyRow], output: Format) -> None:
    if output is Format.json:
        typer.echo(json.dumps([row_json(r) for r in rows], indent=2))
        return
    headers, table = status_table(rows)
    print_table(headers, table)


# --- explain -----------------------------------------------------------------------------------------


def _request(method: str | None, path: str | None, headers: list[str]) -> RequestSpec | None:
    if method is None and path is None and not headers:
        return None
    parsed: dict[str, list[str]] = {}
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {h!r}: write it as NAME:VALUE")
        parsed.setdefault(name.strip(), []).append(value.strip())
    return RequestSpec(method=(method or "GET").upper(), path=path or "/", headers=parsed)


def explain_cmd(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="FROM", help="The client pod: <namespace>/<name> or pod/<ns>/<name>.")
    ],
    destination: Annotated[
        str | None,
        typer.Argument(
            metavar="[TO[:PORT]]",
            help="svc/<ns>/<name>, <name>.<ns>, pod/<ns>/<name>:PORT or IP:PORT; without it: what applies to FROM.",
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option("-n", "--namespace", help="Namespace of names given without one.")
    ] = "default",
    method: Annotated[
        str | None, typer.Option("--method", help="HTTP method (evaluated at a waypoint).")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="HTTP path (evaluated at a waypoint).")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", help="NAME:VALUE, repeatable.")] = None,
    output: Annotated[Format, typer.Option("-o", "--output", help="text or json.")] = Format.text,
) -> None:
    """Explain what the mesh does with a connection: route, expected identities, every policy and the verdict."""
    view = _view(ctx)
    with _errors():
        registry = view.reach.istiod("/debug/registryz")
        try:
            config = mesh_config_from_registry(registry)
        except (msgspec.ValidationError, TypeError) as e:
            raise CliError(f"istiod-lite's /debug/registryz could not be read as mesh config: {e}") from None
        try:
            src = resolve_source(config.state, source, namespace)
            target = resolve_destination(config.state, destination, namespace) if destination else None
        except ExplainInputError as e:
            raise CliError(str(e)) from None
        sync = _sync_of(view, src.node)
    if target is None:
        summary = describe_pod(config, src)
        if output is Format.json:
            typer.echo(json.dumps({"pod": src.uid, "services": [x.key for x in summary.services],
                                   "waypoint": summary.waypoint or None,
                                   "l4Policies": [p.key for p in summary.l4_policies],
                                   "l7Policies": [p.key for p in summary.l7_policies],
                                   "missingPolicies": list(summary.missing_policies), "config": sync}, indent=2))  # fmt: skip
            return
        typer.echo(f"config:       istiod-lite's registry; {sync}")
        for line in render_pod(summary):
            typer.echo(line)
        return
    ip, port = target
    result = explain(config, src, ip, port, _request(method, path, header or []))
    seen = last_seen(_access_records(view), record_query(result))
    if output is Format.json:
        typer.echo(json.dumps({**explain_json(result), "config": sync, "lastSeen": last_seen_json(seen)}, indent=2))
        return
    typer.echo(f"config:       istiod-lite's registry; {sync}")
    for line in render(result) + render_last_seen(seen):
        typer.echo(line)


# Of each ztunnel and waypoint log, explain reads at most this much of the end (the recent records).
EXPLAIN_LOG_TAIL = 4 << 20


def _access_records(view: MeshView, max_bytes: int = EXPLAIN_LOG_TAIL) -> list[LogRecord]:
    """The access records at the end of every ztunnel's and waypoint's log (what ``tap`` follows); a log
    that could not be read is named on stderr."""
    with _errors():
        records, problems = view.access_records(lambda r: r.is_access, tail_bytes=max_bytes)
    for problem in problems:
        note(f"warning: {problem}; its access records are not searched")
    return records


def _sync_of(view: MeshView, node: str) -> str:
    """Whether the source node's ztunnel holds what istiod-lite has (so the answer is what it decides);
    on Kubernetes over every istiod replica."""
    try:
        rows = kube_rows(view.kube)[0] if view.kube else proxy_rows(view.reach.istiod("/debug/syncz"), "istiod-lite")
    except (ReachError, ValueError) as e:
        return f"sync state unknown ({e})"
    for r in rows:
        if r.kind == "ztunnel" and r.node == node:
            return f"ztunnel on {node} is {'SYNCED' if r.synced else 'NOT in sync: ' + ', '.join(f'{t} {s}' for t, s in r.statuses.items())}"
    return f"no ztunnel on {node or '?'} is connected to istiod-lite (it may hold older config)"


# --- logs and tap -------------------------------------------------------------------------------------


def _pod_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.removeprefix("pod/").partition("/")
    if not sep or not ns or not name:
        raise CliError(f"{text!r}: name the pod as <namespace>/<name>")
    return ns, name


def _log_dir_and_nodes(ctx: typer.Context) -> tuple[Path, list[str]]:
    cluster = Cluster(cli_state(ctx).state_dir())
    with _errors():
        nodes = [n.name for n in cluster.layout().nodes]
    return cluster.procs.log_dir, nodes


def logs(
    ctx: typer.Context,
    pod_name: Annotated[
        str | None,
        typer.Argument(metavar="[POD]", help="A pod: its container's log (-c picks the container)."),
    ] = None,
    component: Annotated[
        str | None,
        typer.Option("--component", "-c", help=f"One of {', '.join(COMPONENTS)}; with POD: the container."),
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node's component.")] = None,
    pod: Annotated[
        str | None, typer.Option("--pod", help="<ns>/<name>: that waypoint pod, or lines about that pod.")
    ] = None,
    follow_: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    since_: Annotated[
        str | None, typer.Option("--since", help="Only lines newer than this (30s, 10m, 2h).")
    ] = None,
    denied_: Annotated[bool, typer.Option("--denied", help="Only refused connections and requests.")] = False,
    output: Annotated[
        Format, typer.Option("-o", "--output", help="text or json (one object per line).")
    ] = Format.text,
    namespace: Annotated[
        str | None, typer.Option("-n", "--namespace", help="With POD: its namespace.")
    ] = None,
    tail: Annotated[int | None, typer.Option("--tail", help="With POD: only the last N lines.")] = None,
    previous: Annotated[
        bool, typer.Option("--previous", "-p", help="With POD: the container's run before its last restart.")
    ] = False,
) -> None:
    """Logs of a component on every node (or one), merged by time, each line prefixed with its source;
    with POD, that pod's container log (as kubectl logs)."""
    if pod_name is not None:
        return pods.show_pod_logs(
            ctx,
            pod_name,
            namespace=namespace,
            container=component,
            follow=follow_,
            since=since_,
            tail=tail,
            previous=previous,
        )
    if component is None:
        raise CliError(f"give a POD (its container's log) or -c/--component ({', '.join(COMPONENTS)})")
    kube = _kube_reach(ctx)
    if kube is not None:
        return _kube_logs(kube, component, node=node, pod=pod, follow_=follow_, since_=since_, denied_=denied_,
                          output=output, tail=tail)
    log_dir, nodes = _log_dir_and_nodes(ctx)
    pod_ref = _pod_ref(pod) if pod else None
    waypoints = _view(ctx).waypoints() if component == "waypoint" else []
    narrowed = pod_ref if component == "waypoint" and pod_ref in waypoints else None
    try:
        files = component_files(log_dir, component, nodes, waypoints, node=node, pod=narrowed)
        cutoff = datetime.now(UTC) - parse_duration(since_) if since_ else None
    except ValueError as e:
        raise CliError(str(e)) from None

    keep = _log_filter(cutoff, denied_, pod_ref, narrowed)
    emit = _log_printer(output)

    for record in read(files, keep):
        emit(record)
    if follow_:
        try:
            for record in follow(files, keep):
                emit(record)
        except KeyboardInterrupt:
            return


def _log_filter(
    cutoff: datetime | None, denied_: bool, pod_ref: tuple[str, str] | None, narrowed: tuple[str, str] | None
) -> Callable[[LogRecord], bool]:
    """``logs --component``'s record filter, local or on Kubernetes: at or after ``cutoff`` (untimed lines
    follow the line before), only refusals with ``--denied``, and with ``--pod`` only records about that
    pod unless the logs were already narrowed to its own (a waypoint pod's)."""

    def keep(r: LogRecord) -> bool:
        if cutoff is not None and not since(r, cutoff):
            return False
        if denied_ and not denied(r):
            return False
        return not (pod_ref is not None and narrowed is None and not concerns(r, pod=pod_ref))

    return keep


def _log_printer(output: Format) -> Callable[[LogRecord], None]:
    def emit(r: LogRecord) -> None:
        typer.echo(json.dumps(record_json(r)) if output is Format.json else f"[{r.source}] {r.raw}")

    return emit


def _kube_logs(
    kube: KubeReach, component: str, *, node: str | None, pod: str | None, follow_: bool, since_: str | None,
    denied_: bool, output: Format, tail: int | None,
) -> None:
    """``logs --component`` on Kubernetes: each pod's container log through the API server's pods/log."""
    if tail is not None and tail < 0:
        raise CliError("--tail must be 0 or more")
    pod_ref = _pod_ref(pod) if pod else None
    try:
        cutoff_delta = parse_duration(since_) if since_ else None
    except ValueError as e:
        raise CliError(str(e)) from None
    with _errors():
        waypoints = kube.waypoint_pods() if component == "waypoint" else []
        refs = [((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name")) for p in waypoints]
        narrowed = pod_ref if component == "waypoint" and pod_ref in refs else None
        try:
            sources = component_sources(component, kube.pods(), waypoints, node=node, pod=narrowed)
        except ValueError as e:
            raise CliError(str(e)) from None
    cutoff = datetime.now(UTC) - cutoff_delta if cutoff_delta is not None else None
    since_seconds = -int(-cutoff_delta.total_seconds() // 1) if cutoff_delta is not None else None

    keep = _log_filter(cutoff, denied_, pod_ref, narrowed)
    emit = _log_printer(output)

    if not follow_:
        texts: list[tuple[LogSource, str]] = []
        with _errors():
            for source in sources:
                texts.append((source, kube.log(source, since_seconds=since_seconds, tail_lines=tail)))
        for record in merge_logs(texts, keep):
            emit(record)
        return
    lines = kube.follow_logs(sources, since_seconds=since_seconds, tail_lines=tail)
    try:
        with _errors():
            for source, line in lines:
                if (record := parse_line(line, source.label)) and keep(record):
                    emit(record)
    except KeyboardInterrupt:
        return
    finally:
        lines.close()


def tap(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="pod/<ns>/<name> (or <ns>/<name>) or svc/<ns>/<name>.")],
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    max_records: Annotated[
        int | None, typer.Option("--max", help="Stop after this many records.", min=1)
    ] = None,
    output: Annotated[
        Format, typer.Option("-o", "--output", help="text or json (one object per line).")
    ] = Format.text,
) -> None:
    """Live access records (ztunnels and waypoints) of a pod or a service, from now on."""
    view = _view(ctx)
    pod_ref: tuple[str, str] | None = None
    service: str | None = None
    if target.startswith(("svc/", "service/")):
        ns, _, name = target.split("/", 1)[1].partition("/")
        if not ns or not name:
            raise CliError(f"{target!r}: name the service as svc/<namespace>/<name>")
        service = f"{name}.{ns}"
    else:
        pod_ref = _pod_ref(target)

    def keep(r: LogRecord) -> bool:
        return r.is_access and concerns(r, pod=pod_ref, service=service)

    deadline = None if duration is None else time.monotonic() + duration
    widths = [12, 16, 24, 36, 44, 10, 12, 8]
    with _errors():
        records = view.follow_access(keep, until=lambda: deadline is not None and time.monotonic() >= deadline)
    # Printed once following: everything written from now on is shown.
    if output is Format.text:
        typer.echo("  ".join(h.ljust(w) for h, w in zip(TAP_HEADERS, widths, strict=True)).rstrip())
    else:
        note(f"tapping {target}")
    seen = 0
    try:
        for record in records:
            if output is Format.json:
                typer.echo(json.dumps(record_json(record)))
            else:
                typer.echo(
                    "  ".join(c.ljust(w) for c, w in zip(tap_row(record), widths, strict=True)).rstrip()
                )
            seen += 1
            if max_records is not None and seen >= max_records:
                return
    except KeyboardInterrupt:
        return
    except ReachError as e:
        raise CliError(str(e)) from None
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


# --- stat and graph -----------------------------------------------------------------------------------


def scrape(view: MeshView) -> list[Sample]:
    """Every ztunnel's and waypoint's metrics, each series tagged with the proxy it came from."""
    samples: list[Sample] = []
    view.refresh()
    with _errors():
        targets = view.proxy_targets()
    for label, target in targets:
        try:
            answer = view.reach.get(target, ZTUNNEL_STATS, "/metrics")
            if answer.status == 200:
                samples += tag(parse_metrics(answer.text), label)
            else:
                note(f"warning: {label} answered HTTP {answer.status} for /metrics; left out")
        except (ReachError, ValueError) as e:
            note(f"warning: {label}'s metrics left out: {e}")
    return samples


def _window(view: MeshView, interval: float) -> list[Edge]:
    if interval <= 0:
        return traffic(None, scrape(view))
    before = scrape(view)
    started = time.monotonic()
    time.sleep(interval)
    after = scrape(view)
    return traffic(before, after, time.monotonic() - started)


IntervalOption = Annotated[
    float,
    typer.Option("--interval", help="Seconds between two scrapes for rates; 0: totals since start.", min=0),
]


def stat(
    ctx: typer.Context,
    interval: IntervalOption = 2.0,
    watch: Annotated[
        bool, typer.Option("-w", "--watch", help="Refresh every interval until Ctrl-C.")
    ] = False,
    output: Annotated[Format, typer.Option("-o", "--output", help="text or json.")] = Format.text,
) -> None:
    """Golden signals per destination service: rate, success rate, denials, latency p50/p95/p99, bytes."""
    view = _view(ctx)
    try:
        while True:
            rows = stats(_window(view, interval))
            if output is Format.json:
                typer.echo(json.dumps([stat_json(r) for r in rows], indent=2))
            else:
                if watch:
                    typer.echo("\x1b[2J\x1b[H", nl=False)
                headers, table = stat_table(rows)
                print_table(headers, table)
            if not watch or interval <= 0:
                return
    except KeyboardInterrupt:
        return


class GraphFormat(StrEnum):
    text = "text"
    dot = "dot"
    json = "json"


def graph(
    ctx: typer.Context,
    interval: IntervalOption = 2.0,
    output: Annotated[
        GraphFormat, typer.Option("-o", "--output", help="text, dot (Graphviz) or json.")
    ] = GraphFormat.text,
) -> None:
    """Who talks to whom: edges with rate, success rate, mTLS and the source principal (dot | dot -Tsvg)."""
    edges = _window(_view(ctx), interval)
    if output is GraphFormat.json:
        typer.echo(json.dumps([edge_json(e) for e in edges], indent=2))
    elif output is GraphFormat.dot:
        typer.echo(graph_dot(edges), nl=False)
    else:
        headers, table = graph_table(edges)
        print_table(headers, table)


# --- dashboard ---------------------------------------------------------------------------------------


def dashboard(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free one).", min=0, max=65535)
    ] = 15100,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open it in the default browser.")
    ] = True,
) -> None:
    """Serve the dashboard (service graph, golden signals, proxies, recent denials) on localhost until Ctrl-C."""
    view = _view(ctx)
    with _errors():
        view.nodes()  # a clear error now rather than on every poll

    try:
        server = DashboardServer(LiveSource(view), port=port)
    except OSError as e:
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}; pick another with --port") from None
    typer.echo(f"dashboard on {server.url} (Ctrl-C stops)")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


# --- bug-report --------------------------------------------------------------------------------------


def bug_report(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the archive (default: ./ambient-bug-report-<time>.tar.gz)."),
    ] = None,
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="Include `check`'s results.")] = True,
) -> None:
    """Write one archive with every component's config dump, logs, metrics, versions and the cluster's
    resources (private keys never included) and print its path."""
    state = cli_state(ctx)
    view = _view(ctx)
    created = datetime.now(UTC)
    path = (out or default_path(created)).resolve()
    if path.is_dir():
        path = path / default_path(created).name
    report = gather(view, state.store, with_checks=checks)
    # The local cluster's key files are cut out of every member; a Kubernetes cluster's keys are not on
    # this machine (Secrets' values and PEM private keys are redacted all the same).
    secrets = secrets_in(state.state_dir()) if view.cluster is not None else []
    try:
        withheld = write_archive(report, path, secrets, created=created)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}; pick another place with --out") from None
    gaps = len(report.missing) + len(withheld)
    note(f"{len(report.members) - len(withheld)} file(s) gathered"
         + (f"; {gaps} part(s) could not be (listed in MANIFEST.txt)" if gaps else ""))  # fmt: skip
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("bug-report")(bug_report)
    app.command("dashboard")(dashboard)
    app.command("stat")(stat)
    app.command("top", hidden=True)(stat)
    app.command("graph")(graph)
    app.command("logs")(logs)
    app.command("tap")(tap)
    app.command("explain")(explain_cmd)
    app.command("fetch")(fetch)
    app.command("check")(check)
    app.command("proxy-status")(proxy_status)
    app.command("ps", hidden=True)(proxy_status)
