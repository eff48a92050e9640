"""``apply``, ``get`` and ``delete``: kubectl's resource verbs on the embedded store.

``apply -f`` reads every file first and writes all or nothing (one invalid document anywhere applies
nothing). ``get`` takes kubectl's kind names (``pods``, ``po``, ``svc``, ``ap`` ...), ``-n``/``-A`` and
``-o table|json|yaml``. ``delete`` takes ``-f`` or ``KIND NAME...``; it deletes what exists and fails
(exit 1) naming what did not, unless ``--ignore-not-found``. Output lines follow kubectl's wording so
scripts and habits carry over.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshcore.store import (
    ResourceNotFound,
    ResourceRef,
    is_namespaced,
    load_paths,
    resolve_kind,
)

from .columns import build_table
from .common import CliError, OutputFormat, cli_state, note, print_documents, print_table

DEFAULT_NAMESPACE = "default"

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


def apply(ctx: typer.Context, filename: FilenameOption) -> None:
    """Create or update resources from YAML (all or nothing)."""
    resources = load_paths(filename)
    if not resources:
        raise CliError("no objects passed to apply")
    for result in cli_state(ctx).store().apply(resources):
        typer.echo(f"{result.ref.kind.lower()}/{result.ref.name} {result.action}")


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
) -> None:
    """Show resources as a table, JSON or YAML."""
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
    headers, rows = build_table(kind, resources, namespaces, all_namespaces=all_namespaces)
    print_table(headers, rows)


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
