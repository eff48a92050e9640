"""ambientctl apply/get/delete/namespace through Typer's CliRunner on a real store in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ambientctl import testing
from ambientctl.cli import app
from ambientctl.testing import aged, table
from meshcore.store import STATE_DIR_ENV, ResourceRef, SqliteStore, store_path

REPO = Path(__file__).resolve().parents[3]
MESH = REPO / "examples" / "mesh.yaml"

BAD = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: http}]
"""


class Ctl(testing.Ctl):
    """Runs ambientctl against one state directory; also reads a namespace's labels from its store."""

    def fails(self, *args: str) -> str:
        """Exit code 1 and exactly one line on stderr (no traceback); returns that line."""
        result = self(*args)
        assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    def labels(self, namespace: str) -> dict[str, str]:
        with SqliteStore(store_path(self.state_dir)) as store:
            ns = store.get(ResourceRef("Namespace", "", namespace))
            assert ns is not None
            return ns.labels


@pytest.fixture
def ctl(tmp_path: Path) -> Ctl:
    return Ctl(tmp_path / "state")


def test_apply_reports_created_then_unchanged_then_configured(ctl: Ctl, tmp_path: Path) -> None:
    out = ctl.ok("apply", "-f", str(MESH))
    assert out.splitlines()[:4] == [
        "namespace/demo created",
        "serviceaccount/client created",
        "serviceaccount/server created",
        "pod/client created",
    ]
    assert set(ctl.ok("apply", "-f", str(MESH)).split("\n")[:-1]) == {
        line.replace("created", "unchanged") for line in out.splitlines()
    }
    changed = tmp_path / "ns.yaml"
    changed.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {team: a}}\n")
    assert ctl.ok("apply", "-f", str(changed)) == "namespace/demo configured\n"


def test_apply_from_stdin_and_a_directory(ctl: Ctl, tmp_path: Path) -> None:
    assert ctl.ok("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n") == (
        "namespace/a created\n"
    )
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "1.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    (d / "2.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n")
    assert ctl.ok("apply", "-f", str(d)) == "namespace/b created\nnamespace/c created\n"


def test_a_file_with_one_bad_document_applies_the_others_and_exits_1_naming_it(
    ctl: Ctl, tmp_path: Path
) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text(BAD)
    result = ctl("apply", "-f", str(bad))
    assert result.exit_code == 1
    assert result.stdout == "namespace/shop created\n"
    assert result.stderr.splitlines() == [
        f"error: {bad}: document 2 (Service shop/web): $.spec.ports[0].port: Expected int, got str",
        "error: 1 object not applied (listed above); the others were",
    ]


def test_atomic_apply_with_one_bad_document_applies_nothing(ctl: Ctl, tmp_path: Path) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text(BAD)
    result = ctl("apply", "--atomic", "-f", str(bad))
    assert result.exit_code == 1 and result.stdout == ""
    assert "nothing applied (--atomic): 1 object invalid" in result.stderr
    assert ctl.ok("get", "ns", "-o", "json").count('"name"') == 0


TYPO_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-details, namespace: default}
spec:
  selectr: {matchLabels: {app: details}}
  action: DENY
  rules: [{}]
"""


def test_a_typo_in_a_policy_is_refused_instead_of_denying_the_whole_namespace(ctl: Ctl) -> None:
    result = ctl("apply", "-f", "-", input=TYPO_POLICY)
    assert result.exit_code == 1 and result.stdout == ""
    assert 'strict decoding error: unknown field "spec.selectr" (did you mean "selector"?)' in result.stderr
    assert ctl.ok("get", "ap", "-o", "json").count('"name"') == 0


def test_an_object_in_a_missing_namespace_is_refused_with_the_hint_to_create_it(ctl: Ctl) -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n"
    result = ctl("apply", "-f", "-", input=pod)
    assert result.exit_code == 1
    assert 'Pod shop/web: namespaces "shop" not found: create it first' in result.stderr
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
    assert ctl.ok("apply", "-f", "-", input=ns + pod) == "namespace/shop created\npod/web created\n"
    assert ctl.ok("apply", "-f", "-", input=pod) == "pod/web unchanged\n"


def test_pod_fields_the_local_cluster_ignores_are_named_in_warnings(ctl: Ctl) -> None:
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n"
        "  - {name: a, command: [sleep, '9'], resources: {limits: {cpu: '1'}}}\n"
        "  - {name: b, image: nginx}\n"
    )
    result = ctl("apply", "-f", "-", input=pod)
    assert result.exit_code == 0 and result.stdout == "pod/web created\n"
    assert result.stderr.splitlines() == [
        "Warning: pod/web: spec.containers[1].image nginx (images are not run: the stand-in HTTP server answers "
        "on its containerPorts; give command/args to run a host command) is not implemented by the local "
        "cluster and is ignored",
        "Warning: pod/web: spec.containers[0].resources is not implemented by the local cluster and is ignored",
        "note: the local cluster is not up: these pods are not running; `ambientctl cluster up` starts them",
    ]


def test_get_pods_table_shows_node_ip_service_account_and_dataplane_mode(ctl: Ctl) -> None:
    ctl.ok("apply", "-f", str(MESH))
    ctl.ok("namespace", "enable", "demo")
    assert aged(table(ctl.ok("get", "po", "-n", "demo", "-o", "wide"))) == [
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "SERVICE-ACCOUNT", "DATAPLANE-MODE"],
        ["client", "-", "Running", "0", "<age>", "10.244.1.10", "node-1", "client", "ambient"],
        ["server", "-", "Running", "0", "<age>", "10.244.2.10", "node-2", "server", "ambient"],
    ]
    assert table(ctl.ok("get", "po", "-n", "demo"))[0] == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "DATAPLANE-MODE",
    ]
    rows = table(ctl.ok("get", "pods", "-A"))
    assert rows[0][:2] == ["NAMESPACE", "NAME"] and rows[1][:2] == ["demo", "client"]


def test_get_services_policies_and_namespaces_tables(ctl: Ctl) -> None:
    ctl.ok("apply", "-f", str(MESH))
    assert aged(table(ctl.ok("get", "svc", "-n", "demo", "-o", "wide"))) == [
        ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE", "SELECTOR"],
        ["server", "ClusterIP", "10.96.0.10", "80/TCP", "<age>", "app=server"],
    ]
    assert aged(table(ctl.ok("get", "authorizationpolicies", "-n", "demo")))[1] == [
        "server-allow-client",
        "ALLOW",
        "app=server",
        "1",
        "-",
        "<age>",
    ]
    ctl.ok("namespace", "enable", "demo")
    assert aged(table(ctl.ok("get", "namespaces"))) == [
        ["NAME", "LABELS", "AGE"],
        ["demo", "istio.io/dataplane-mode=ambient", "<age>"],
    ]


def test_get_json_and_yaml_are_kubernetes_shaped(ctl: Ctl) -> None:
    ctl.ok("apply", "-f", str(MESH))
    listing = json.loads(ctl.ok("get", "pods", "-n", "demo", "-o", "json"))
    assert listing["kind"] == "List"
    assert [p["metadata"]["name"] for p in listing["items"]] == ["client", "server"]
    one = yaml.safe_load(ctl.ok("get", "svc", "server", "-n", "demo", "-o", "yaml"))
    assert one["kind"] == "Service" and one["spec"]["ports"][0]["targetPort"] == "http"
    assert one["metadata"]["resourceVersion"] == "6"


def test_get_of_nothing_notes_it_on_stderr_and_succeeds(ctl: Ctl) -> None:
    result = ctl("get", "pods")
    assert result.exit_code == 0 and result.stdout == ""
    assert "No resources found in default namespace." in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "statefulsets"], "error: unknown kind 'statefulsets': supported kinds are Namespace"),
        (["get", "pod", "ghost", "-n", "demo"], 'error: pod "ghost" in namespace "demo" not found'),
        (
            ["get", "pod", "ghost", "-A"],
            "error: a resource cannot be retrieved by name across all namespaces",
        ),
        (["delete", "pod", "ghost"], 'error: pod "ghost" in namespace "default" not found'),
        (["delete"], "error: say what to delete"),
        (["apply", "-f", "/nonexistent/x.yaml"], "error: /nonexistent/x.yaml: no such file or directory"),
        (["namespace", "disable", "ghost"], 'error: namespace "ghost" not found'),
        (["namespace", "enable", "Bad_Name"], "error: namespace 'Bad_Name' is not a valid name"),
    ],
    ids=[
        "an unknown kind lists the supported kinds",
        "getting a missing pod names it and its namespace",
        "getting by name across all namespaces is refused",
        "deleting a missing pod names it",
        "delete without a target says what to give",
        "applying a missing file names it",
        "disabling a missing namespace names it",
        "enabling an invalid namespace name explains the rule",
    ],
)
def test_user_errors_are_one_line_and_exit_1(ctl: Ctl, args: list[str], message: str) -> None:
    assert ctl.fails(*args).startswith(message)


def test_delete_by_name_and_by_file(ctl: Ctl) -> None:
    ctl.ok("apply", "-f", str(MESH))
    assert ctl.ok("delete", "po", "client", "-n", "demo") == 'pod "client" deleted from demo namespace\n'
    assert (
        ctl.fails("delete", "po", "client", "-n", "demo")
        == 'error: pod "client" in namespace "demo" not found'
    )
    assert ctl.ok("delete", "po", "client", "-n", "demo", "--ignore-not-found") == ""
    out = ctl.ok("delete", "-f", str(MESH), "--ignore-not-found")
    assert out.splitlines()[0] == 'namespace "demo" deleted'
    assert 'pod "client" deleted' not in out
    assert json.loads(ctl.ok("get", "pods", "-A", "-o", "json"))["items"] == []


def test_namespace_enable_and_disable_print_what_they_did(ctl: Ctl) -> None:
    label = "istio.io/dataplane-mode=ambient"
    assert ctl.ok("namespace", "enable", "shop") == f"namespace/shop created with label {label}\n"
    assert ctl.ok("namespace", "enable", "shop") == f"namespace/shop already has {label} (unchanged)\n"
    assert ctl.labels("shop") == {"istio.io/dataplane-mode": "ambient"}
    assert ctl.ok("namespace", "disable", "shop") == "namespace/shop label istio.io/dataplane-mode removed\n"
    assert ctl.labels("shop") == {}
    assert ctl.ok("namespace", "disable", "shop") == (
        "namespace/shop has no istio.io/dataplane-mode label (unchanged)\n"
    )
    ctl.ok("apply", "-f", str(MESH))
    assert ctl.ok("namespace", "enable", "demo") == f"namespace/demo labeled {label}\n"


def test_state_dir_comes_from_the_environment(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {STATE_DIR_ENV: str(tmp_path / "env-state")}
    result = runner.invoke(app, ["namespace", "enable", "demo"], env=env)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env-state" / "store.db").exists()


def test_a_state_dir_holding_something_else_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_text("not a database at all, not even close" * 50)
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "get", "ns"])
    assert result.exit_code == 1
    assert "is not an ambient-mesh store" in result.stderr and "--state-dir" in result.stderr


def test_after_cluster_down_no_pod_claims_to_run_or_to_have_an_ip(ctl: Ctl) -> None:
    from ambientctl.cluster.kubelet import mark_pods_stopped

    ctl.ok("apply", "-f", str(MESH))
    with SqliteStore(store_path(ctl.state_dir)) as store:
        assert sorted(mark_pods_stopped(store)) == ["demo/client", "demo/server"]
        assert mark_pods_stopped(store) == []  # nothing changes the second time
    result = ctl("get", "po", "-n", "demo", "-o", "wide")
    assert [row[:4] + row[5:6] for row in table(result.stdout)[1:]] == [
        ["client", "-", "Pending", "0", "<none>"],
        ["server", "-", "Pending", "0", "<none>"],
    ]
    assert "warning: the local cluster is not up: no pod is running" in result.stderr


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: details-v1, labels: {app: details}}
spec:
  replicas: 1
  selector: {matchLabels: {app: details, version: v1}}
  template:
    metadata: {labels: {app: details, version: v1}}
    spec:
      containers:
      - name: details
        image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 9080}]
"""


def test_scale_sets_a_deployments_replicas_and_get_shows_its_columns(ctl: Ctl) -> None:
    applied = ctl("apply", "-f", "-", input=DEPLOYMENT)
    assert applied.exit_code == 0 and applied.stdout == "deployment/details-v1 created\n"
    assert (
        "spec.template.spec.containers[0].image docker.io/istio/examples-bookinfo-details-v1"
        in applied.stderr
    )
    assert ctl.ok("scale", "deploy/details-v1", "--replicas", "3") == "deployment.apps/details-v1 scaled\n"
    assert (
        ctl.ok("scale", "deployment", "details-v1", "--replicas", "3")
        == "deployment.apps/details-v1 unchanged\n"
    )
    assert aged(table(ctl.ok("get", "deploy"))) == [
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["details-v1", "0/3", "0", "0", "<age>"],
    ]


SCALE_ERRORS = [
    (
        "scaling a pod is refused",
        ["scale", "pod/web", "--replicas", "2"],
        "pods cannot be scaled: only deployments can",
    ),
    (
        "scaling a missing deployment names it",
        ["scale", "deploy/nope", "--replicas", "2"],
        'deployment "nope" in namespace "default" not found',
    ),
    ("scaling without --replicas says so", ["scale", "deploy/nope"], "--replicas N is required"),
]


@pytest.mark.parametrize(("args", "words"), [s[1:] for s in SCALE_ERRORS], ids=[s[0] for s in SCALE_ERRORS])
def test_scale_errors(ctl: Ctl, args: list[str], words: str) -> None:
    assert words in ctl.fails(*args)


def test_get_filters_by_label_selector_and_shows_labels(ctl: Ctl) -> None:
    ctl.ok("apply", "-f", str(MESH))
    rows = table(ctl.ok("get", "po", "-n", "demo", "-l", "app=server,version in (v1)", "--show-labels"))
    assert [row[0] for row in rows[1:]] == ["server"]
    assert rows[0][-1] == "LABELS" and rows[1][-1] == "app=server,version=v1"
    assert "invalid selector" in ctl.fails("get", "po", "-l", "app in (x")
