"""The ``ambientctl`` command line: global options, command registration, error reporting.

Each module in ``COMMAND_MODULES`` adds its commands with ``register(app)``; adding a command group is
one import and one list entry. ``ErrorReportingGroup`` turns the errors a user can fix
(``CliError``, ``StoreError``) into one red line on stderr and exit code 1, for every command and
sub-command; anything else is a bug and keeps its traceback. Global options only record choices in
``CliState``: nothing is created or opened until a command needs it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from meshcore.logs import LEVELS, configure_logging
from meshcore.store import STATE_DIR_ENV, StoreError

from .commands import (
    cluster,
    demo,
    describe,
    install,
    namespace,
    pods,
    resources,
    troubleshoot,
    version,
    waypoint,
    ztunnel_config,
)
from .commands.common import EXIT_FAILURE, CliError, CliState, OutputFormat, report_error

COMMAND_MODULES = (
    resources,
    describe,
    namespace,
    waypoint,
    demo,
    cluster,
    ztunnel_config,
    troubleshoot,
    install,
    version,
    pods,
)


class ErrorReportingGroup(TyperGroup):
    """The root group: user-fixable errors from any sub-command end as one line and exit 1."""

    def invoke(self, ctx: Any) -> Any:  # ctx: a Context of Typer's vendored (private) click
        try:
            return super().invoke(ctx)
        except (CliError, StoreError) as e:
            report_error(str(e))
            raise typer.Exit(EXIT_FAILURE) from None


def _root(
    ctx: typer.Context,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            envvar=STATE_DIR_ENV,
            help="State directory holding the embedded store "
            "(default: /var/lib/ambient-mesh as root, else ~/.local/state/ambient-mesh).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help=f"Log level on stderr: {', '.join(LEVELS)}.")
    ] = "warning",
    kubeconfig: Annotated[
        str | None,
        typer.Option("--kubeconfig", help="Work on the Kubernetes cluster of this kubeconfig instead of the "
                     "local cluster (get, apply, delete, namespace, waypoint, zc).", show_default=False),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option("--context", help="The kubeconfig context to use (implies the Kubernetes cluster; "
                     "default kubeconfig: KUBECONFIG or ~/.kube/config).", show_default=False),
    ] = None,
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the client's and istiod-lite's versions, then exit.")
    ] = False,
) -> None:
    """Operate an ambient-mode service mesh: apply config, enrol namespaces, inspect state."""
    if log_level not in LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--log-level")
    configure_logging(level=log_level)
    state = CliState(state_dir_flag=state_dir, kubeconfig=kubeconfig, kube_context=context)
    ctx.obj = state
    ctx.call_on_close(state.close)
    if show_version:
        version.show_versions(state, client_only=False, output=OutputFormat.table)
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        ctx.fail("Missing command.")


def build_app() -> typer.Typer:
    """A fresh application with every command module registered."""
    application = typer.Typer(
        cls=ErrorReportingGroup,
        name="ambientctl",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    # Invoked without a command only for --version; anything else without one fails as before.
    application.callback(invoke_without_command=True)(_root)
    for module in COMMAND_MODULES:
        module.register(application)
    return application


app = build_app()
