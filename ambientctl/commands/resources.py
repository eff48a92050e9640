"""``apply``, ``get`` and ``delete``: kubectl's resource verbs on the embedded store.

``apply -f`` reads every file first and, like kubectl, applies each valid object on its own, printing
``created``/``configured``/``unchanged`` per object, then lists every invalid one (the reason, the file,
the document, the field) and exits 1 if there was any; ``--atomic`` writes all or nothing (one problem
anywhere applies nothing). An object in a namespace that neither exists nor is created earlier in the
same apply is refused (kubectl: ``namespaces "x" not found``) with the hint to create it. A Pod or
Service field the local cluster does not implement is named in a ``Warning:`` line on stderr. ``get`` takes kubectl's kind names (``pods``, ``po``, ``svc``, ``ap`` ...), ``-n``/``-A`` and
``-o table|json|yaml``. ``delete`` takes ``-f`` or ``KIND NAME...``; it deletes what exists and fails
(exit 1) naming what did not, unless ``--ignore-not-found``. Output lines follow kubectl's wording so
scripts and habits carry over.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ambientctl.cluster import Cluster
from ambientctl.cluster.deployments import replace_replicas
from ambientctl.cluster.support import unimplemented_fields
from meshcore.store import (
    Resource,
    ResourceError,
    ResourceNotFound,
    ResourceRef,
    collect_paths,
    is_namespaced,
    load_paths,
    plural,
    resolve_kind,
)

from .applystatus import report_after_apply
from .columns import build_table
from .common import CliError, OutputFormat, cli_state, note, print_documents, print_table, report_error
from .selector import SelectorError, parse_selector, selector_matches

DEFAULT_NAMESPACE = "default"
# Namespaces every Kubernetes cluster has from the start.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
CLUSTER_DOWN_NOTE = "the local cluster is not up"

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


def get(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="Kind: pods (po), services (svc), namespaces (ns), ...")],
    name: Annotated[str | None, typer.Argument(help="Only this object.")] = None,
    namespace: NamespaceOption = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="List across all namespaces.")
    ] = False,
    output: Annotated[
        OutputFormat, typer.Option("-o", "--output", help="Output format.")
    ] = OutputFormat.table,
    selector: Annotated[
        str | None,
        typer.Option(
            "-l", "--selector", help="Label selector: a=b,c!=d,e in (x,y),f,!g.", show_default=False
        ),
    ] = None,
    show_labels: Annotated[bool, typer.Option("--show-labels", help="Add a LABELS column.")] = False,
) -> None:
    """Show resources as a table, JSON or YAML."""
    try:
        requirements = parse_selector(selector or "")
    except SelectorError as e:
        raise CliError(f"invalid selector: {e}") from None
    kind = resolve_kind(kind)
    namespaced = is_namespaced(kind)
    if name and all_namespaces:
        raise CliError("a resource cannot be retrieved by name across all namespaces (drop -A)")
    store = cli_state(ctx).store()
    ns = (namespace or DEFAULT_NAMESPACE) if namespaced else ""

    if name:
        found = store.get(ResourceRef(kind, ns, name))
        if found is None:
            raise ResourceNotFound(_describe(kind, ns, name))
        resources = [found]
    else:
        resources = store.list(kind, None if all_namespaces or not namespaced else ns)
    resources = [r for r in resources if selector_matches(requirements, r.labels)]

    if output is not OutputFormat.table:
        print_documents([r.to_dict() for r in resources], output, single=bool(name))
        return
    if not resources:
        note(
            f"No resources found in {ns} namespace."
            if namespaced and not all_namespaces
            else "No resources found"
        )
        return
    namespaces = {n.name: n for n in store.list("Namespace")} if kind == "Pod" else {}
    if kind == "Pod" and not _cluster_up(ctx):
        note(f"warning: {CLUSTER_DOWN_NOTE}: no pod is running; `ambientctl cluster up` starts them")
    headers, rows = build_table(kind, resources, namespaces, all_namespaces=all_namespaces)
    if show_labels:
        headers = [*headers, "LABELS"]
        rows = [
            [*row, ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "<none>"]
            for row, r in zip(rows, resources, strict=True)
        ]
    print_table(headers, rows)


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
