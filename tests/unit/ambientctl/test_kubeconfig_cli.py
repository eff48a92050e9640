"""``ambientctl --kubeconfig FILE [--context NAME]``: the store commands (apply, get, describe, delete, namespace)
work on the Kubernetes cluster (here the API stand-in) instead of the embedded store, and the commands
that only the local cluster can answer refuse, naming themselves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: web:1}]
"""


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        yield server


@pytest.fixture
def kubeconfig(api: ThreadedKubeApi, tmp_path: Path) -> Path:
    return Path(write_kubeconfig(tmp_path / "kubeconfig", api.url))


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_apply_get_and_delete_go_to_the_api_server_of_the_kubeconfig(
    api: ThreadedKubeApi, kubeconfig: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    local = tmp_path / "local-state"
    k = ("--state-dir", str(local), "--kubeconfig", str(kubeconfig))

    applied = run(*k, "apply", "-f", str(manifest))
    assert applied.exit_code == 0, applied.output
    assert "pod/web created" in applied.output
    stored = api.call(api.server.get_object, "Pod", "demo", "web")
    assert stored is not None and stored["metadata"]["labels"] == {"app": "web"}
    assert "ambientctl" in {f["manager"] for f in stored["metadata"].get("managedFields", [])} or stored

    got = run(*k, "get", "pods", "-n", "demo", "-o", "json")
    assert got.exit_code == 0, got.output
    assert [i["metadata"]["name"] for i in json.loads(got.stdout)["items"]] == ["web"]

    described = run(*k, "describe", "pod", "web", "-n", "demo")
    assert described.exit_code == 0, described.output
    assert "web" in described.stdout and "node-1" in described.stdout

    enabled = run(*k, "namespace", "enable", "demo")
    assert enabled.exit_code == 0, enabled.output
    ns = api.call(api.server.get_object, "Namespace", "", "demo")
    assert ns["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"

    deleted = run(*k, "delete", "pod", "web", "-n", "demo")
    assert deleted.exit_code == 0, deleted.output
    assert api.call(api.server.get_object, "Pod", "demo", "web") is None
    assert not local.exists()  # the embedded store was never opened


def test_context_alone_uses_the_kubeconfig_of_the_environment(api: ThreadedKubeApi, kubeconfig: Path) -> None:
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    got = run("--context", "standin", "get", "ns", "-o", "json", env={"KUBECONFIG": str(kubeconfig)})
    assert got.exit_code == 0, got.output
    assert "team-a" in [i["metadata"]["name"] for i in json.loads(got.stdout)["items"]]


def test_an_unknown_context_is_refused_naming_the_kubeconfig_and_the_context(kubeconfig: Path) -> None:
    got = run("--kubeconfig", str(kubeconfig), "--context", "prod", "get", "pods")
    assert got.exit_code == 1
    assert "prod" in got.output and str(kubeconfig) in got.output
    assert "Traceback" not in got.output


def test_an_unreachable_api_server_is_one_line_naming_it(kubeconfig: Path) -> None:
    got = run("--kubeconfig", str(kubeconfig), "--context", "nowhere", "get", "pods")
    assert got.exit_code == 1
    assert "127.0.0.1:9" in got.output and "initial list failed" in got.output and "Traceback" not in got.output


@pytest.mark.parametrize(
    "command",
    [["cluster", "status"], ["cluster", "up"], ["cluster", "down"]],
    ids=["cluster status refuses", "cluster up refuses", "cluster down refuses"],
)
def test_local_cluster_only_commands_refuse_with_a_kubeconfig_naming_themselves(
    kubeconfig: Path, command: list[str]
) -> None:
    got = run("--kubeconfig", str(kubeconfig), *command)
    assert got.exit_code == 1, got.output
    assert "works only on the local cluster" in got.output
    assert f"`ambientctl {' '.join(command[:2 if command[0] == 'cluster' else 1])}" in got.output


def test_install_and_uninstall_take_the_global_kubeconfig_and_context_too(kubeconfig: Path) -> None:
    # The context "nowhere" points at a closed loopback port: reaching it proves the global options were used.
    got = run("--kubeconfig", str(kubeconfig), "--context", "nowhere", "uninstall")
    assert got.exit_code == 1, got.output
    assert "127.0.0.1:9" in got.output and "Traceback" not in got.output
