"""``apply``, ``get`` and ``delete``: kubectl's resource verbs on the embedded store.

``apply -f`` reads every file first and, like kubectl, applies each valid object on its own, printing
``created``/``configured``/``unchanged`` per object, then lists every invalid one (the reason, the file,
the document, the field) and exits 1 if there was any; ``--atomic`` writes all or nothing (one problem
anywhere applies nothing). An object in a namespace that neither exists nor is created earlier in the
same apply is refused (kubectl: ``namespaces "x" not found``) with the hint to create it. A Pod or
Service field the local cluster does not implement is named in a ``Warning:`` line on stderr. ``get`` takes kubectl's arguments (``pods``, ``po,svc``, ``all``, ``nodes``, ``pod/a svc/b``), ``-n``/``-A``,
``-l``, ``--show-labels`` and ``-o table|wide|json|yaml|name``; several kinds print one table each, rows
named ``kind/name``; a named object that does not exist fails the command after the others printed.
``get -w`` prints the table, then a row per change from the store's change log, gap-free from the
listing's revision (``watch_lines``), until Ctrl-C or ``--request-timeout``. ``get nodes`` reads the
local cluster's state, not the store. ``delete`` takes ``-f`` or ``KIND NAME...``; it deletes what exists and fails
(exit 1) naming what did not, unless ``--ignore-not-found``. Output lines follow kubectl's wording so
scripts and habits carry over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import typer

from ambientctl.cluster import Cluster
from ambientctl.cluster.deployments import replace_replicas
from ambientctl.cluster.mesh import KUBELET
from ambientctl.cluster.support import unimplemented_fields
from meshcore.store import (
    Resource,
    ResourceError,
    ResourceNotFound,
    ResourceRef,
    Store,
    collect_paths,
    is_namespaced,
    load_paths,
    plural,
    resolve_kind,
)

from .applystatus import report_after_apply
from .columns import (
    NodeRow,
    TableContext,
    build_table,
    event_time,
    labels_text,
    node_table,
    qualified_name,
)
from .common import (
    CliError,
    ListFormat,
    cli_state,
    note,
    print_documents,
    print_table,
    report_error,
)
from .selector import Requirement, SelectorError, parse_selector, selector_matches
from .version import client_version

DEFAULT_NAMESPACE = "default"
# Namespaces every Kubernetes cluster has from the start.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
CLUSTER_DOWN_NOTE = "the local cluster is not up"
# ``get nodes``: the local cluster's nodes (not a store kind), by any of kubectl's names.
NODE = "Node"
NODE_NAMES = frozenset({"node", "nodes", "no"})
# kubectl's ``get all`` as far as the store holds those kinds.
ALL_KINDS = ("Pod", "Service", "Deployment")
WATCH_POLL_S = 0.1

FilenameOption = Annotated[
    list[str],
    typer.Option(
        "-f",
        "--filename",
        help="A YAML file, a directory of *.yaml/*.yml/*.json files, or - for stdin. Repeatable.",
    ),
]
NamespaceOption = Annotated[
    str | None, typer.Option("-n", "--namespace", help="Namespace of namespaced kinds (default: default).")
]


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    app.command("get")(get)
    app.command("delete")(delete)
    app.command("scale")(scale)


def apply(
    ctx: typer.Context,
    filename: FilenameOption,
    atomic: Annotated[
        bool, typer.Option("--atomic", help="All or nothing: any invalid object applies none of them.")
    ] = False,
) -> None:
    """Create or update resources from YAML: each valid object is applied, the invalid ones listed."""
    resources, errors = collect_paths(filename)
    if not resources and not errors:
        raise CliError("no objects passed to apply")
    store = cli_state(ctx).store()
    existing = {ns.name for ns in store.list("Namespace")}
    valid, refused = check_namespaces(resources, existing)
    errors.extend(refused)
    for resource in [] if cli_state(ctx).on_kubernetes else valid:  # kubelet runs them on Kubernetes
        for field in unimplemented_fields(resource):
            note(
                f"Warning: {resource.kind.lower()}/{resource.name}: {field} is not implemented by the local "
                "cluster and is ignored"
            )
    if len(errors) == 1 and not valid:
        raise CliError(str(errors[0]))  # nothing else to report: one line, as for any failed command
    if atomic and errors:
        _report(errors)
        raise CliError(f"nothing applied (--atomic): {_count(len(errors))} invalid")
    if atomic:
        for result in store.apply(valid):
            typer.echo(f"{result.ref.kind.lower()}/{result.ref.name} {result.action}")
        _note_if_cluster_down(ctx, valid)
        report_after_apply(ctx, valid)  # istiod's warnings on the policies just applied
        return
    applied: list[Resource] = []
    for resource in valid:
        try:
            (result,) = store.apply([resource])
        except ResourceError as e:
            errors.append(e)
            continue
        applied.append(resource)
        typer.echo(f"{result.ref.kind.lower()}/{result.ref.name} {result.action}")
    _note_if_cluster_down(ctx, valid)
    report_after_apply(ctx, applied)  # istiod's warnings on the policies just applied
    if errors:
        _report(errors)
        raise CliError(f"{_count(len(errors))} not applied (listed above); the others were")


def _cluster_up(ctx: typer.Context) -> bool:
    if cli_state(ctx).on_kubernetes:
        return True  # --kubeconfig/--context: the cluster's kubelets run the pods
    return Cluster(cli_state(ctx).state_dir()).is_up()


def _note_if_cluster_down(ctx: typer.Context, applied: list[Resource]) -> None:
    if any(r.kind == "Pod" for r in applied) and not _cluster_up(ctx):
        note(f"note: {CLUSTER_DOWN_NOTE}: these pods are not running; `ambientctl cluster up` starts them")


def check_namespaces(
    resources: list[Resource], existing: set[str]
) -> tuple[list[Resource], list[ResourceError]]:
    """Split ``resources`` into those whose namespace exists (in ``existing``, built in, or a Namespace
    earlier in the list) and an error for each of the others, in order."""
    known = set(existing) | BUILTIN_NAMESPACES
    valid: list[Resource] = []
    errors: list[ResourceError] = []
    for r in resources:
        if r.kind == "Namespace":
            known.add(r.name)
        elif r.namespace and r.namespace not in known:
            errors.append(
                ResourceError(
                    f'{r.kind} {r.namespace}/{r.name}: namespaces "{r.namespace}" not found: create it '
                    f"first (a Namespace document before this one: apiVersion: v1, kind: Namespace, "
                    f"metadata: {{name: {r.namespace}}})"
                )
            )
            continue
        valid.append(r)
    return valid, errors


def _report(errors: list[ResourceError]) -> None:
    for error in errors:
        report_error(str(error))


def _count(n: int) -> str:
    return f"{n} object{'s' if n != 1 else ''}"


class GetRequest(NamedTuple):
    """One kind a ``get`` asks for (``NODE`` for the local cluster's nodes) and the names given (none:
    every object)."""

    kind: str
    names: tuple[str, ...] = ()


def parse_get_args(args: Sequence[str]) -> list[GetRequest]:
    """kubectl's ``get`` arguments: ``KIND[,KIND...] [NAME...]`` (``all`` = pods, services,
    deployments), or only ``KIND/NAME`` pairs. Kinds in the order first given, each once."""
    if not args:
        raise CliError("say what to get: a kind (pods, svc, deploy, ap, nodes, ...), KIND/NAME, or all")
    wanted: dict[str, list[str]] = {}
    if any("/" in a for a in args):
        for arg in args:
            kind_text, slash, name = arg.partition("/")
            if not slash or not kind_text or not name or "/" in name:
                raise CliError(
                    f"{arg!r}: give only KIND/NAME arguments once one is given that way "
                    "(get pod/web svc/web), or KIND NAME... (get pods web)"
                )
            names = wanted.setdefault(_get_kind(kind_text), [])
            if name not in names:
                names.append(name)
        return [GetRequest(kind, tuple(names)) for kind, names in wanted.items()]
    kinds_text, given = args[0], tuple(dict.fromkeys(args[1:]))
    for part in kinds_text.split(","):
        if not part.strip():
            raise CliError(f"{kinds_text!r}: an empty kind in the list (write pods,svc)")
        for kind in ALL_KINDS if part.strip().lower() == "all" else (_get_kind(part),):
            wanted.setdefault(kind, [])
    return [GetRequest(kind, given) for kind in wanted]


def _get_kind(text: str) -> str:
    return NODE if text.strip().lower() in NODE_NAMES else resolve_kind(text)


def get(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="KIND[,KIND...] [NAME...] (pods, svc, deploy, ap, nodes, all, ...) or KIND/NAME...",
            show_default=False,
        ),
    ] = None,
    namespace: NamespaceOption = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="List across all namespaces.")
    ] = False,
    output: Annotated[
        ListFormat,
        typer.Option("-o", "--output", help="Output format (wide: more columns; name: kind/name)."),
    ] = ListFormat.table,
    selector: Annotated[
        str | None,
        typer.Option(
            "-l", "--selector", help="Label selector: a=b,c!=d,e in (x,y),f,!g.", show_default=False
        ),
    ] = None,
    show_labels: Annotated[bool, typer.Option("--show-labels", help="Add a LABELS column.")] = False,
    watch: Annotated[
        bool,
        typer.Option("-w", "--watch", help="After the table, print a line per change until Ctrl-C."),
    ] = False,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout", help="With -w: stop watching after this many seconds.", show_default=False
        ),
    ] = None,
) -> None:
    """Show resources as a table (-o wide for more columns), JSON, YAML or kind/name lines."""
    try:
        requirements = parse_selector(selector or "")
    except SelectorError as e:
        raise CliError(f"invalid selector: {e}") from None
    requests = parse_get_args(args or [])
    if all_namespaces and any(r.names for r in requests):
        raise CliError("a resource cannot be retrieved by name across all namespaces (drop -A)")
    ns_flag = namespace or DEFAULT_NAMESPACE
    if watch:
        _watch(ctx, requests, ns_flag, all_namespaces, requirements, output, show_labels, request_timeout)
        return
    # kubectl: several kinds (get pods,svc / get all / pod/a svc/b) name each row kind/name.
    with_kind = len(requests) > 1
    blocks: list[tuple[str, list[Resource]]] = []
    missing: list[str] = []
    node_docs: list[dict[str, Any]] = []
    node_rows: list[NodeRow] = []
    store = cli_state(ctx).store(with_events=any(r.kind == "Event" for r in requests))
    for request in requests:
        if request.kind == NODE:
            node_rows = _nodes(ctx, request.names, missing)
            node_docs = [node_document(n, _node_version()) for n in node_rows]
            continue
        found, lost = _fetch(store, request, ns_flag, all_namespaces)
        if request.kind == "Event":  # kubectl's events table, oldest first (the store lists by name)
            found.sort(key=lambda e: (event_time(e), e.namespace, e.name))
        missing.extend(lost)
        blocks.append((request.kind, [r for r in found if selector_matches(requirements, r.labels)]))

    documents = output.documents()
    if documents is not None:
        docs = [r.to_dict() for _, found in blocks for r in found] + node_docs
        single = len(requests) == 1 and len(requests[0].names) == 1 and len(docs) == 1
        if docs or not missing:
            print_documents(docs, documents, single=single)
    elif output is ListFormat.name:
        for _, found in blocks:
            for r in found:
                typer.echo(qualified_name(r))
        for n in node_rows:
            typer.echo(f"node/{n.name}")
    else:
        _print_blocks(ctx, store, blocks, node_rows, output, show_labels, all_namespaces, with_kind)
        if not node_rows and not any(found for _, found in blocks) and not missing:
            namespaced = any(is_namespaced(kind) for kind, _ in blocks)
            note(
                f"No resources found in {ns_flag} namespace."
                if namespaced and not all_namespaces
                else "No resources found"
            )
    if missing:
        raise ResourceNotFound("; ".join(missing))


def _fetch(
    store: Store, request: GetRequest, ns_flag: str, all_namespaces: bool
) -> tuple[list[Resource], list[str]]:
    """The objects of one request, and the description of each named one that does not exist."""
    ns = ns_flag if is_namespaced(request.kind) else ""
    if not request.names:
        return store.list(request.kind, None if all_namespaces or not ns else ns), []
    found, missing = [], []
    for name in request.names:
        got = store.get(ResourceRef(request.kind, ns, name))
        if got is None:
            missing.append(_describe(request.kind, ns, name))
        else:
            found.append(got)
    return found, missing


def _print_blocks(
    ctx: typer.Context,
    store: Store,
    blocks: list[tuple[str, list[Resource]]],
    node_rows: list[NodeRow],
    output: ListFormat,
    show_labels: bool,
    all_namespaces: bool,
    with_kind: bool,
) -> None:
    """One table per kind, a blank line between them (kubectl's ``get all``)."""
    table_ctx = _table_context(ctx, store, blocks)
    printed = False
    for kind, found in blocks:
        if not found:
            continue
        if printed:
            typer.echo("")
        headers, rows = build_table(
            kind,
            found,
            table_ctx,
            all_namespaces=all_namespaces,
            wide=output is ListFormat.wide,
            with_kind=with_kind,
        )
        if show_labels:
            headers = [*headers, "LABELS"]
            rows = [[*row, labels_text(r.labels)] for row, r in zip(rows, found, strict=True)]
        print_table(headers, rows)
        printed = True
    if node_rows:
        if printed:
            typer.echo("")
        headers, rows = node_table(
            node_rows, version=_node_version(), wide=output is ListFormat.wide, kernel=os.uname().release
        )
        print_table(headers, rows)


def _table_context(
    ctx: typer.Context, store: Store, blocks: list[tuple[str, list[Resource]]]
) -> TableContext:
    pods = any(kind == "Pod" and found for kind, found in blocks)
    local = not getattr(cli_state(ctx), "on_kubernetes", False)
    if pods and local and not _cluster_up(ctx):
        note(f"warning: {CLUSTER_DOWN_NOTE}: no pod is running; `ambientctl cluster up` starts them")
    namespaces = {n.name: n for n in store.list("Namespace")} if pods else {}
    return TableContext(namespaces, datetime.now(UTC))


# --- nodes ------------------------------------------------------------------------------------------------


def _node_version() -> str:
    """A node's VERSION: the kubelet's, which here is this installation's (the local cluster's kubelet
    runs from it)."""
    return f"v{client_version()}"


def _nodes(ctx: typer.Context, names: tuple[str, ...], missing: list[str]) -> list[NodeRow]:
    """The local cluster's nodes from its state; a cluster that is not up is an error naming the fix."""
    status = Cluster(cli_state(ctx).state_dir()).status()
    if status.phase == "down" or not status.nodes:
        raise CliError(
            f"{CLUSTER_DOWN_NOTE}: it has no nodes (state {cli_state(ctx).state_dir()}); "
            "`ambientctl cluster up` creates them"
        )
    kubelet = next((p for p in status.processes if p.name == KUBELET), None)
    rows = [
        NodeRow(
            n.name,
            status.phase in ("up", "degraded") and n.present and (kubelet is None or kubelet.running),
            n.ip,
        )
        for n in status.nodes
    ]
    if not names:
        return rows
    known = {r.name: r for r in rows}
    missing.extend(f'node "{name}" not found' for name in names if name not in known)
    return [known[name] for name in names if name in known]


def node_document(node: NodeRow, version: str) -> dict[str, Any]:
    """A node as ``get nodes -o yaml`` shows it: Kubernetes' Node shape, the fields the cluster knows."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node.internal_ip}],
            "conditions": [{"type": "Ready", "status": "True" if node.ready else "False"}],
            "nodeInfo": {"kubeletVersion": version, "kernelVersion": os.uname().release},
        },
    }


# --- watch ------------------------------------------------------------------------------------------------


def _watch(
    ctx: typer.Context,
    requests: list[GetRequest],
    ns_flag: str,
    all_namespaces: bool,
    requirements: tuple[Requirement, ...],
    output: ListFormat,
    show_labels: bool,
    request_timeout: float | None,
) -> None:
    if len(requests) != 1 or requests[0].kind == NODE:
        raise CliError("-w watches one kind of the store at a time (get pods -w), not several or nodes")
    if output.documents() is not None or output is ListFormat.name:
        raise CliError("-w prints table rows: use -o table or -o wide")
    store = cli_state(ctx).store(with_events=requests[0].kind == "Event")
    deadline = None if request_timeout is None else time.monotonic() + request_timeout
    spec = WatchSpec(
        requests[0].kind,
        None if all_namespaces or not is_namespaced(requests[0].kind) else ns_flag,
        requests[0].names,
        requirements,
        wide=output is ListFormat.wide,
        show_labels=show_labels,
        all_namespaces=all_namespaces,
    )
    try:
        for line in watch_lines(store, spec, deadline=deadline):
            typer.echo(line)
    except KeyboardInterrupt:
        pass


class WatchSpec(NamedTuple):
    """What ``get -w`` follows: one kind, a namespace (None: all), names (none: all), a selector."""

    kind: str
    namespace: str | None
    names: tuple[str, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    wide: bool = False
    show_labels: bool = False
    all_namespaces: bool = False

    def selects(self, r: Resource) -> bool:
        return (
            r.kind == self.kind
            and (self.namespace is None or r.namespace == self.namespace)
            and (not self.names or r.name in self.names)
            and selector_matches(self.requirements, r.labels)
        )


def watch_lines(
    store: Store,
    spec: WatchSpec,
    *,
    deadline: float | None = None,
    poll_interval: float = WATCH_POLL_S,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Iterator[str]:
    """``get -w``: the table's lines, then one row per change the store's change log reports (the object
    after the change; a deleted one as it was last), in the table's column widths, until ``deadline``
    (monotonic; None: forever). List and watch are gap-free: the watch starts at the listing's revision."""
    revision, current = store.snapshot(spec.kind, spec.namespace)
    selected = [r for r in current if spec.selects(r)]
    namespaces = {n.name: n for n in store.list("Namespace")} if spec.kind == "Pod" else {}

    def render(resources: list[Resource]) -> tuple[list[str], list[list[str]]]:
        headers, rows = build_table(
            spec.kind,
            resources,
            TableContext(namespaces, now()),
            all_namespaces=spec.all_namespaces,
            wide=spec.wide,
        )
        if spec.show_labels:
            headers = [*headers, "LABELS"]
            rows = [[*row, labels_text(r.labels)] for row, r in zip(rows, resources, strict=True)]
        return headers, rows

    headers, rows = render(selected)
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    yield format_row(headers, widths)
    for row in rows:
        yield format_row(row, widths)
    while deadline is None or time.monotonic() < deadline:
        events = store.changes_since(revision)
        for event in events:
            revision = event.revision
            if event.resource.kind == "Namespace" and spec.kind == "Pod":
                namespaces[event.resource.name] = event.resource
            if spec.selects(event.resource):
                yield format_row(render([event.resource])[1][0], widths)
        if not events:
            wait = (
                poll_interval if deadline is None else min(poll_interval, max(deadline - time.monotonic(), 0))
            )
            time.sleep(wait)


def format_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells padded to ``widths`` with kubectl's three blanks between columns, no trailing blanks."""
    return "   ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip()


def scale(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="deploy/NAME (or deployment NAME with a second argument).")],
    name: Annotated[str | None, typer.Argument(help="NAME when the kind is given alone.")] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="The number of pods wanted (0 or more).")] = -1,
    namespace: NamespaceOption = None,
) -> None:
    """Set a Deployment's replicas (kubectl scale); the local cluster adds or removes pods."""
    kind_name, slash, rest = target.partition("/")
    if slash:
        if name:
            raise CliError("give deploy/NAME or deploy NAME, not both")
        name = rest
    if not name:
        raise CliError("say what to scale: deploy/NAME --replicas N")
    if replicas < 0:
        raise CliError("--replicas N is required (0 or more)")
    kind = resolve_kind(kind_name)
    if kind != "Deployment":
        raise CliError(f"{plural(kind)} cannot be scaled: only deployments can")
    store = cli_state(ctx).store()
    ref = ResourceRef(kind, namespace or DEFAULT_NAMESPACE, name)
    found = store.get(ref)
    if found is None:
        raise ResourceNotFound(_describe(kind, ref.namespace, name))
    (result,) = store.apply([replace_replicas(found, replicas)])
    typer.echo(f"deployment.apps/{name} {'scaled' if result.action != 'unchanged' else 'unchanged'}")


def delete(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None, typer.Argument(help="KIND NAME... (or use -f)", show_default=False)
    ] = None,
    filename: Annotated[
        list[str] | None,
        typer.Option(
            "-f", "--filename", help="Delete the resources these files describe.", show_default=False
        ),
    ] = None,
    namespace: NamespaceOption = None,
    ignore_not_found: Annotated[
        bool, typer.Option("--ignore-not-found", help="Succeed when something is already gone.")
    ] = False,
) -> None:
    """Delete resources named on the command line or described in files."""
    if filename and args:
        raise CliError("give either -f FILE or KIND NAME..., not both")
    if filename:
        refs = list(dict.fromkeys(r.ref for r in load_paths(filename)))
        if not refs:
            raise CliError("no objects passed to delete")
    elif args and len(args) >= 2:
        kind = resolve_kind(args[0])
        ns = (namespace or DEFAULT_NAMESPACE) if is_namespaced(kind) else ""
        refs = [ResourceRef(kind, ns, name) for name in dict.fromkeys(args[1:])]
    else:
        raise CliError("say what to delete: -f FILE, or KIND NAME... (e.g. delete pod web -n demo)")

    deleted = set(cli_state(ctx).store().delete(refs))
    missing: list[str] = []
    for ref in refs:
        if ref in deleted:
            where = f" from {ref.namespace} namespace" if ref.namespace else ""
            typer.echo(f'{ref.kind.lower()} "{ref.name}" deleted{where}')
        else:
            missing.append(_describe(ref.kind, ref.namespace, ref.name))
    if missing and not ignore_not_found:
        raise CliError("; ".join(f"{m} not found" for m in missing))


def _describe(kind: str, namespace: str, name: str) -> str:
    return f'{kind.lower()} "{name}"' + (f' in namespace "{namespace}"' if namespace else "")
