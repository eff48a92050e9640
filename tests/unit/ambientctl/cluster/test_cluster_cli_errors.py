"""``ambientctl cluster ...`` errors through Typer's CliRunner: one ``error:`` line that names the fix
(no traceback) for a user who is not root, a ``--prefix`` that is not the recorded cluster's, an unknown
node and an unknown log. No kernel state is touched: the clusters here exist only as recorded state."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.cluster import ClusterSpec
from ambientctl.cluster.state import ClusterState, ProcessRecord, StateFile

CLUSTER_COMMANDS = [
    ("cluster", "status"),
    ("cluster", "logs", "istiod"),
    ("cluster", "down"),
    ("cluster", "up", "--no-mesh"),
    ("cluster", "exec", "web", "--", "true"),
    ("cluster", "capture", "node-1"),
]


def run(state_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--state-dir", str(state_dir), *args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(state_dir: Path, *args: str) -> str:
    code, stdout, stderr = run(state_dir, *args)
    assert code == 1, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def record_cluster(state_dir: Path, prefix: str = "ab-", nodes: int = 2) -> StateFile:
    state = StateFile(state_dir / "cluster")
    state.save(ClusterState(phase="up", spec=ClusterSpec(prefix=prefix, nodes=nodes)))
    return state


@pytest.mark.parametrize(
    "args",
    CLUSTER_COMMANDS,
    ids=[
        "status as a user says it needs root instead of suggesting cluster down",
        "logs as a user says it needs root instead of a traceback",
        "down as a user says it needs root",
        "up as a user says it needs root",
        "exec as a user says it needs root",
        "capture as a user says it needs root",
    ],
)
def test_a_user_who_is_not_root_is_told_to_use_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    record_cluster(tmp_path)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    line = one_error_line(tmp_path, *args)
    assert (
        line == f"error: the local cluster needs root: run with sudo (`sudo ambientctl {' '.join(args[:2])}`)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("cluster", "status", "--prefix", "zz-"),
            "has prefix 'ab-', not 'zz-': drop --prefix (or use --prefix ab-)",
        ),
        (
            ("cluster", "down", "--prefix", "zz-"),
            "has prefix 'ab-', not 'zz-': drop --prefix (or use --prefix ab-)",
        ),
        (
            ("cluster", "status", "--prefix", "Bad_"),
            "--prefix: $.prefix: 'Bad_' is not a valid prefix: use 2 to",
        ),
        (
            ("cluster", "capture", "node-9"),
            "node 'node-9' is not in the cluster (nodes: node-1, node-2): use one of those names",
        ),
        (("cluster", "logs", "ztunnel-node-7"), "no logs for 'ztunnel-node-7': nothing has run yet"),
    ],
    ids=[
        "status with another cluster's prefix names the recorded one",
        "down with another cluster's prefix is refused before anything is removed",
        "a malformed prefix is refused with the rule",
        "capture on an unknown node lists the nodes",
        "logs of a component that never ran says to start the mesh",
    ],
)
def test_cluster_errors_name_the_fix(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    state = record_cluster(tmp_path)
    line = one_error_line(tmp_path, *args)
    assert expected in line, line
    loaded = state.load()
    assert loaded is not None and loaded.phase == "up"  # nothing was removed


def test_status_warns_when_the_supervisor_is_not_running(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "cluster")
    # A pid above the kernel's pid_max: no process has it.
    dead = ProcessRecord(name="supervisor", netns="", pid=2**22 + 1, start_ticks=1, argv=("x",), log="x.log")
    state.save(ClusterState(phase="up", spec=ClusterSpec(prefix="ab-"), processes={"supervisor": dead}))
    code, stdout, stderr = run(tmp_path, "cluster", "status")
    assert code == 0, (stdout, stderr)
    assert "the supervisor is not running" in stderr and "`ambientctl cluster up` starts it again" in stderr
    assert any(line.startswith("supervisor ") and "Exited" in line for line in stdout.splitlines()), stdout
