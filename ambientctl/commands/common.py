"""Plumbing every ambientctl command shares: the per-invocation state, errors and output helpers.

``CliState`` is created by the root callback and reached with ``cli_state(ctx)``; it resolves the
state directory and opens the store only when a command asks (``--help`` creates nothing), and closes
it when the command ends. Commands raise ``CliError`` (or let a ``StoreError`` through) for anything
the user can fix: the root group prints one red line on stderr and exits 1, never a traceback.
Output goes to stdout (data) and stderr (errors, notes), so ``-o json | jq`` stays clean.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from meshcore.store import SqliteStore, Store, resolve_state_dir, store_path

# kubectl's exit code for a failed command.
EXIT_FAILURE = 1
# With --kubeconfig/--context: the field manager of ambientctl's writes, and how long the first list of
# every kind the store watches may take.
KUBE_FIELD_MANAGER = "ambientctl"
KUBE_SYNC_TIMEOUT_S = 20.0
KUBE_SYNC_ATTEMPTS = 2  # a wrong address or missing RBAC fails the command at once, not after the timeout


class CliError(Exception):
    """A failure the user can fix; its message is printed as one line, then ambientctl exits 1."""


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class ListFormat(StrEnum):
    """``-o`` of the get-like commands (``get``): kubectl's ``table|wide|json|yaml|name``."""

    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"

    def documents(self) -> OutputFormat | None:
        """The document format (json/yaml) this asks for, None for the line formats."""
        return OutputFormat(self.value) if self in (ListFormat.json, ListFormat.yaml) else None


@dataclass
class CliState:
    """What the global options decided, plus the store once a command opened it.

    With ``--kubeconfig`` or ``--context`` the commands work on that Kubernetes cluster: ``store()`` is the
    Kubernetes store (listed from the API server, writes by field manager ``ambientctl``), and
    ``state_dir()`` refuses, naming the command, because what needs it (processes, network namespaces,
    log files) exists only on the local cluster. The Kubernetes store watches ``DEFAULT_KINDS``; a command
    that shows Events asks ``store(with_events=True)``, which adds ``EVENT_KINDS`` (reopening a store opened
    without them), so no other command lists the cluster's Events."""

    state_dir_flag: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    _store: Store | None = field(default=None, repr=False)
    _store_has_events: bool = field(default=False, repr=False)

    @property
    def on_kubernetes(self) -> bool:
        return self.kubeconfig is not None or self.kube_context is not None

    def state_dir(self) -> Path:
        if self.on_kubernetes:
            raise CliError(f"{_command_name()} works only on the local cluster (it reads its processes, network "
                           "namespaces or files); run it without --kubeconfig/--context")
        return resolve_state_dir(self.state_dir_flag)

    def store(self, *, with_events: bool = False) -> Store:
        if self._store is not None and with_events and self.on_kubernetes and not self._store_has_events:
            self.close()  # opened without Events: reopened with them
        if self._store is None:
            if self.on_kubernetes:
                # the Kubernetes client only when asked
                from meshcore.store.kubernetes import DEFAULT_KINDS, EVENT_KINDS, KubernetesStore

                self._store = KubernetesStore.connect(
                    kubeconfig=self.kubeconfig, context=self.kube_context, field_manager=KUBE_FIELD_MANAGER,
                    sync_timeout=KUBE_SYNC_TIMEOUT_S, max_sync_failures=KUBE_SYNC_ATTEMPTS,
                    kinds=(*DEFAULT_KINDS, *EVENT_KINDS) if with_events else DEFAULT_KINDS,
                )
                self._store_has_events = with_events
            else:
                self._store = SqliteStore(store_path(self.state_dir()))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _command_name() -> str:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return f"`{ctx.command_path}`" if ctx is not None else "this command"


def cli_state(ctx: typer.Context) -> CliState:
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked without the root callback (only in odd embeddings)
        state = ctx.ensure_object(CliState)
        ctx.call_on_close(state.close)
    return state


def stdout_console() -> Console:
    # Not a terminal (pipes, tests): never wrap or truncate table rows at 80 columns.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=100_000)
    return console


def report_error(message: str) -> None:
    Console(stderr=True, highlight=False).print(
        f"error: {message}", style="red", markup=False, soft_wrap=True
    )


def note(message: str) -> None:
    """A remark for the person, not the data (kubectl's "No resources found"): stderr."""
    Console(stderr=True, highlight=False).print(message, markup=False, soft_wrap=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """kubectl-style columns: no borders, upper-case headers, left-aligned, never wrapped."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0))
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    console = stdout_console()
    with console.capture() as captured:
        console.print(table, markup=False)
    # Rich pads every cell to its column's width; kubectl leaves no trailing blanks (friendlier to diff).
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()), color=console.is_terminal)


def print_documents(docs: list[dict[str, Any]], fmt: OutputFormat, *, single: bool) -> None:
    """``-o json|yaml``: one object as itself, several as a ``kind: List`` (what kubectl prints)."""
    doc: dict[str, Any] = (
        docs[0] if single else {"apiVersion": "v1", "kind": "List", "items": docs, "metadata": {}}
    )
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(doc, indent=4))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n"))
