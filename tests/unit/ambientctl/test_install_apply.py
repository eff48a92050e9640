"""``ambientctl install`` and ``uninstall`` against the API stand-in (a kubeconfig pointing at it): install
server-side applies every rendered object in order after checking the upstream CRDs (nothing applied
when one is missing), a second install changes nothing, and uninstall deletes what install applied but
the istio-system Namespace (which keeps the CA root Secret)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.commands.install import render_manifests, upstream_crds
from meshcore.testing.kube_api import ApiResource, KubeApiServer, ThreadedKubeApi, mesh_resources

# What the manifests hold, beside the mesh's own kinds, served by the stand-in for these tests.
INSTALL_KINDS = [
    ApiResource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ApiResource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, False),
    ApiResource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, False),
    ApiResource("rbac.authorization.k8s.io", "v1", "roles", "Role", True, False),
    ApiResource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, False),
    ApiResource("apps", "v1", "daemonsets", "DaemonSet", True),
]


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    known = {(r.group, r.plural) for r in mesh_resources()}
    kinds = mesh_resources() + [r for r in INSTALL_KINDS if (r.group, r.plural) not in known]
    with ThreadedKubeApi(KubeApiServer(kinds)) as server:
        yield server


@pytest.fixture
def kubeconfig(api: ThreadedKubeApi, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: other\n"
        "clusters: [{name: standin, cluster: {server: '" + api.url + "'}},"
        " {name: nowhere, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        "contexts: [{name: standin, context: {cluster: standin, user: tester}},"
        " {name: other, context: {cluster: nowhere, user: tester}}]\n"
    )
    return path


def install_upstream_crds(api: ThreadedKubeApi, skip: str = "") -> None:
    for name in upstream_crds():
        if name == skip:
            continue
        plural, _, group = name.partition(".")
        api.call(api.server.put_object, {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                                         "metadata": {"name": name}, "spec": {"group": group}})


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def test_the_upstream_crds_checked_are_istios_and_gateway_apis_not_ours() -> None:
    crds = upstream_crds()
    assert {"authorizationpolicies.security.istio.io", "httproutes.gateway.networking.k8s.io",
            "virtualservices.networking.istio.io"} <= set(crds)
    assert not any(name.endswith("ambientmesh.io") for name in crds)


def test_install_applies_every_object_and_uninstall_removes_them_but_the_namespace(
    api: ThreadedKubeApi, kubeconfig: Path
) -> None:
    install_upstream_crds(api)
    result = run("install", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert result.exit_code == 0, result.output
    docs = render_manifests()
    for doc in docs:
        stored = api.call(api.server.get_object, doc["kind"], doc["metadata"].get("namespace", ""),
                          doc["metadata"]["name"])
        assert stored is not None, f"{key(doc)} was not applied"
        assert stored.get("spec", stored.get("rules")) == doc.get("spec", doc.get("rules"))
        assert "ambientctl" in {f["manager"] for f in stored["metadata"]["managedFields"]}
    assert result.output.count(" applied") == len(docs)
    applies = [r for r in api.server.requests if r.verb == "patch"]
    assert [(r.resource, r.name) for r in applies][0] == ("namespaces", "istio-system")  # the Namespace first

    revision = api.server.revision
    again = run("install", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert again.exit_code == 0, again.output
    assert api.server.revision == revision  # re-applying the same manifests changes nothing (an upgrade would)

    gone = run("uninstall", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert gone.exit_code == 0, gone.output
    for doc in docs:
        stored = api.call(api.server.get_object, doc["kind"], doc["metadata"].get("namespace", ""),
                          doc["metadata"]["name"])
        assert (stored is not None) == (doc["kind"] == "Namespace"), key(doc)
    assert "istio-ca-secret" in gone.output
    twice = run("uninstall", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert twice.exit_code == 0 and "already deleted" in twice.output


def test_a_missing_upstream_crd_is_named_with_its_install_hint_and_nothing_is_applied(
    api: ThreadedKubeApi, kubeconfig: Path
) -> None:
    install_upstream_crds(api, skip="httproutes.gateway.networking.k8s.io")
    result = run("install", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert result.exit_code != 0
    assert "httproutes.gateway.networking.k8s.io" in result.output and "standard-install.yaml" in result.output
    assert "nothing applied" in result.output
    assert not [r for r in api.server.requests if r.verb == "patch"]


def test_a_failed_apply_names_the_object_and_how_far_install_got(api: ThreadedKubeApi, kubeconfig: Path) -> None:
    install_upstream_crds(api)
    api.call(api.server.fail_next, 500, 1, "patch")
    result = run("install", "--kubeconfig", str(kubeconfig), "--context", "standin")
    assert result.exit_code != 0
    assert "applying Namespace istio-system failed" in result.output


def test_an_unreadable_kubeconfig_is_refused_naming_it(tmp_path: Path) -> None:
    result = run("install", "--kubeconfig", str(tmp_path / "missing"))
    assert result.exit_code != 0 and "missing" in result.output
