"""``namespace enable|disable NS``: put a namespace's pods in the mesh (ambient) or take them out.

Enabling sets ``istio.io/dataplane-mode=ambient`` on the Namespace (creating the Namespace if it does
not exist yet, so enrolment can precede the workloads); disabling removes the label. Both are one
read-modify-write transaction in the store, print what changed, and are idempotent ("unchanged").
Pods need no restart: the control plane and the node agents react to the label change.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshcore.store import ResourceNotFound, ResourceRef, name_problem

from .common import CliError, cli_state

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
AMBIENT = "ambient"

NamespaceArg = Annotated[str, typer.Argument(help="Namespace name.")]


def register(app: typer.Typer) -> None:
    namespace_app = typer.Typer(help="Enrol namespaces in the mesh or take them out.", no_args_is_help=True)
    namespace_app.command("enable")(enable)
    namespace_app.command("disable")(disable)
    app.add_typer(namespace_app, name="namespace")


def _ref(name: str) -> ResourceRef:
    problem = name_problem(name, label=True)
    if problem:
        raise CliError(f"namespace {problem}")
    return ResourceRef("Namespace", "", name)


def enable(ctx: typer.Context, name: NamespaceArg) -> None:
    """Label the namespace istio.io/dataplane-mode=ambient (creating it if missing)."""
    label = f"{DATAPLANE_MODE_LABEL}={AMBIENT}"
    result = cli_state(ctx).store().set_labels(_ref(name), {DATAPLANE_MODE_LABEL: AMBIENT}, [], create=True)
    if result.action == "created":
        typer.echo(f"namespace/{name} created with label {label}")
    elif result.action == "configured":
        typer.echo(f"namespace/{name} labeled {label}")
    else:
        typer.echo(f"namespace/{name} already has {label} (unchanged)")


def disable(ctx: typer.Context, name: NamespaceArg) -> None:
    """Remove the istio.io/dataplane-mode label from the namespace."""
    try:
        result = cli_state(ctx).store().set_labels(_ref(name), {}, [DATAPLANE_MODE_LABEL])
    except ResourceNotFound:
        raise CliError(f'namespace "{name}" not found') from None
    if result.action == "configured":
        typer.echo(f"namespace/{name} label {DATAPLANE_MODE_LABEL} removed")
    else:
        typer.echo(f"namespace/{name} has no {DATAPLANE_MODE_LABEL} label (unchanged)")
