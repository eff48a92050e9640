"""Test kit for ambientctl's command line (not used by ambientctl itself): ``Ctl`` runs the CLI in-process
(Typer's CliRunner) against one state directory; ``table`` splits kubectl-style output into cells and
``aged`` checks each AGE cell and reads it as ``<age>``, so tables compare whole.

Invariant: ``Ctl.ok``/``succeeds`` fail the test on a non-zero exit with stdout, stderr and the exception
in the message.
"""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner, Result

from ambientctl.cli import app


class Ctl:
    """Runs ambientctl against one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(app, ["--state-dir", str(self.state_dir), *args], input=input)

    def succeeds(self, *args: str, input: str | None = None) -> Result:
        """The command's result; fails the test unless it exits 0."""
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def ok(self, *args: str, input: str | None = None) -> str:
        """The command's stdout; fails the test unless it exits 0."""
        return self.succeeds(*args, input=input).stdout


def table(text: str) -> list[list[str]]:
    """kubectl-style output split into cells: columns are separated by at least two blanks (a cell such as
    'TRAFFIC TYPE' holds one)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def aged(rows: list[list[str]]) -> list[list[str]]:
    """The table with each AGE cell (seconds since the store created the object) checked and read as <age>."""
    if "AGE" not in rows[0]:
        return rows
    i = rows[0].index("AGE")
    assert all(re.fullmatch(r"\d+s", row[i]) for row in rows[1:]), rows
    return [rows[0]] + [[*row[:i], "<age>", *row[i + 1 :]] for row in rows[1:]]
