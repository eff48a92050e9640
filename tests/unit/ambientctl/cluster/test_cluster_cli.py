"""`ambientctl cluster` paths that need no root: refusals are one `error:` line, never a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from ambientctl.cli import app


def run(state_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--state-dir", str(state_dir), "cluster", *args])


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_bad_cluster_file_names_file_and_field(tmp_path: Path) -> None:
    file = tmp_path / "cluster.yaml"
    file.write_text("nodes: 2\nnetworking: {podSubnet: 10.244.0.0/25}\n")
    line = one_error_line(run(tmp_path, "up", "-f", str(file)))
    assert f"{file}: $.networking.podSubnet:" in line and "too small" in line


def test_a_missing_cluster_file_is_named(tmp_path: Path) -> None:
    line = one_error_line(run(tmp_path, "up", "-f", str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in line and "cannot read" in line


def test_an_out_of_range_node_count_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    assert "out of range" in one_error_line(run(tmp_path, "up", "--nodes", "0"))
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_status_without_a_cluster_says_how_to_make_one(tmp_path: Path) -> None:
    result = run(tmp_path, "status", "--prefix", "zz9q-")
    assert result.exit_code == 0, result.stderr
    assert "no local cluster is up" in result.stdout


def test_status_as_json_reports_phase_down(tmp_path: Path) -> None:
    result = run(tmp_path, "status", "-o", "json", "--prefix", "zz9q-")
    assert result.exit_code == 0, result.stderr
    assert '"phase": "down"' in result.stdout


def test_exec_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(run(tmp_path, "exec", "web", "-n", "shop", "--", "true"))
    assert "no local cluster is up" in line and "ambientctl cluster up" in line


def test_logs_of_an_unknown_component_lists_the_known_ones(tmp_path: Path) -> None:
    logs = tmp_path / "cluster" / "logs"
    logs.mkdir(parents=True)
    (logs / "istiod.log").write_text("one\ntwo\nthree\n")
    (logs / "shop-web.log").write_text("hello\n")
    line = one_error_line(run(tmp_path, "logs", "ztunnel-node-9"))
    assert "known: istiod, shop-web" in line


def test_logs_prints_a_component_or_pod_log_with_tail(tmp_path: Path) -> None:
    logs = tmp_path / "cluster" / "logs"
    logs.mkdir(parents=True)
    (logs / "istiod.log").write_text("one\ntwo\nthree\n")
    (logs / "shop-web.log").write_text("hello\n")
    assert run(tmp_path, "logs", "istiod", "--tail", "2").stdout == "two\nthree\n"
    assert run(tmp_path, "logs", "shop/web").stdout == "hello\n"
