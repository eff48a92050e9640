"""``ambientctl version`` and ``--version``: the client's version always, istiod-lite's when reachable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.commands.version import build_tag, client_version, version_lines


@pytest.mark.parametrize(
    ("page", "tag"),
    [
        (
            '# HELP istio_build Istio component build info\nistio_build{component="pilot",tag="1.22.0"} 1\n',
            "1.22.0",
        ),
        ('istio_build{tag="0.1.0",component="pilot"} 1\n', "0.1.0"),
        ("pilot_xds 3\n", None),
        ('not_istio_build{tag="9"} 1\n', None),
    ],
    ids=[
        "the tag of Istio's build gauge",
        "the tag in any label position",
        "a page without the gauge names no version",
        "another metric's tag is not taken",
    ],
)
def test_the_server_version_comes_from_istio_build(page: str, tag: str | None) -> None:
    assert build_tag(page) == tag


def test_lines_read_as_kubectls() -> None:
    assert version_lines("0.1.0", "0.1.0", "") == ["Client Version: 0.1.0", "Server Version: 0.1.0"]
    assert version_lines("0.1.0", None, "the local cluster is not up") == [
        "Client Version: 0.1.0",
        "Server Version: unavailable (the local cluster is not up)",
    ]


@pytest.mark.parametrize("args", [["version"], ["--version"]], ids=["the command", "the global option"])
def test_version_without_a_cluster_says_why_the_server_is_unavailable(
    tmp_path: Path, args: list[str]
) -> None:
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Client Version: {client_version()}",
        "Server Version: unavailable (the local cluster is not up; `ambientctl cluster up` starts it)",
    ]
    assert client_version() != "unknown"


def test_client_only_as_yaml(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "version", "--client", "-o", "yaml"])
    assert yaml.safe_load(result.stdout) == {"clientVersion": {"gitVersion": client_version()}}


def test_no_command_is_still_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Missing command" in result.output
