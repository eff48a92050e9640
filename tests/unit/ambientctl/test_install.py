"""The Kubernetes manifests: rendered the same as the checked-in daemonset/ambient-mesh.yaml (golden), every
document valid against a current Kubernetes release's schema (kubernetes-validate, offline), the RBAC is
the Kubernetes store's, and the components get what they need (ports, capabilities, host paths)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.commands.install import DEFAULT_IMAGE, render_manifests, to_yaml
from istiod_lite.ca.secret import CONFIGMAP_VERBS, SECRET_VERBS
from istiod_lite.ca.tokenreview import TOKEN_REVIEW_VERBS
from istiod_lite.leader import LEASE_VERBS
from meshcore.store.kubernetes import node_agent_rbac_rules, rbac_rules
from ztunnel.cni.config import parse_config as parse_node_agent_config
from ztunnel.cni.install import DAEMONSET_VERBS
from ztunnel.config import parse_config as parse_ztunnel_config

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "daemonset" / "ambient-mesh.yaml"
KUBERNETES_VERSION = "1.33"
DOCS = render_manifests()


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)


def test_the_checked_in_manifests_are_the_rendered_ones() -> None:
    assert GOLDEN.read_text() == to_yaml(DOCS), (
        "daemonset/ambient-mesh.yaml is stale: run `ambientctl manifest generate -o daemonset/ambient-mesh.yaml`"
    )


@pytest.mark.parametrize("doc", DOCS, ids=[f"{d['kind']} {d['metadata']['name']} is valid" for d in DOCS])
def test_every_manifest_is_valid_for_a_current_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_an_unknown_field_so_the_check_above_means_something() -> None:
    bad = copy.deepcopy(find("Deployment", "istiod"))
    bad["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_istiod_gets_the_rbac_the_kubernetes_store_needs_bound_to_its_service_account() -> None:
    assert find("ClusterRole", "istiod-lite")["rules"] == rbac_rules()
    binding = find("ClusterRoleBinding", "istiod-lite")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istiod", "namespace": "istio-system"}]
    deployment = find("Deployment", "istiod")["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == "istiod"
    env = {e["name"]: e.get("value") for e in deployment["containers"][0]["env"]}
    assert env["STORE"] == "kubernetes"


def test_istiod_runs_two_replicas_with_a_role_for_exactly_the_lease_and_ca_secret_calls() -> None:
    deployment = find("Deployment", "istiod")["spec"]
    assert deployment["replicas"] == 2
    env = {e["name"]: e for e in deployment["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the Lease identity
    role = find("Role", "istiod-lite")
    assert role["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": list(LEASE_VERBS)},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": list(SECRET_VERBS)},
    ]
    binding = find("RoleBinding", "istiod-lite")
    assert binding["roleRef"]["name"] == "istiod-lite"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istiod", "namespace": "istio-system"}]


def test_istiod_may_keep_the_root_configmap_in_every_namespace_with_exactly_the_publishers_verbs() -> None:
    role = find("ClusterRole", "istiod-lite-ca-root")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": list(CONFIGMAP_VERBS)}]
    binding = find("ClusterRoleBinding", "istiod-lite-ca-root")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "istiod-lite-ca-root"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istiod", "namespace": "istio-system"}]


def test_istiod_may_create_token_reviews_and_nothing_else_through_that_cluster_role() -> None:
    role = find("ClusterRole", "istiod-lite-tokenreview")
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": list(TOKEN_REVIEW_VERBS)}
    ]
    binding = find("ClusterRoleBinding", "istiod-lite-tokenreview")
    assert binding["roleRef"]["name"] == "istiod-lite-tokenreview"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istiod", "namespace": "istio-system"}]


def test_the_istiod_service_exposes_xds_the_token_ca_and_monitoring() -> None:
    ports = {p["port"] for p in find("Service", "istiod")["spec"]["ports"]}
    assert ports == {15012, 15011, 15014}


def test_ztunnel_gets_the_capabilities_istios_ztunnel_needs_and_the_node_agents_socket() -> None:
    pod = find("DaemonSet", "ztunnel")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert sorted(container["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    assert not container["securityContext"]["privileged"]
    assert {"name": "ztunnel-socket", "mountPath": "/var/run/ztunnel"} in container["volumeMounts"]


def test_ztunnel_authenticates_with_its_projected_token_and_no_node_credential() -> None:
    pod = find("DaemonSet", "ztunnel")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (source,) = volumes["istio-token"]["projected"]["sources"]
    assert source["serviceAccountToken"] == {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}
    assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ISTIO_TOKEN_PATH"] == mounts["istio-token"] + "/istio-token"
    assert env["CA_ROOT_CA"] == mounts["istiod-ca-cert"] + "/root-cert.pem"
    # The settings parse as ztunnel will parse them (fieldRefs filled in as the kubelet would).
    config = parse_ztunnel_config({**{k: v for k, v in env.items() if v is not None}, "NODE_NAME": "node-1",
                                   "POD_NAMESPACE": "istio-system", "SERVICE_ACCOUNT": "ztunnel"})
    assert config.ca_auth.value == "token" and config.node_credential_dir is None
    assert config.ca_address == "istiod.istio-system.svc:15011" and config.xds_address == "istiod.istio-system.svc:15012"
    assert pod["serviceAccountName"] == "ztunnel"  # istiod-lite's trusted node account istio-system/ztunnel


def test_the_cni_node_agent_may_read_its_own_daemonset_and_nothing_else() -> None:
    role = find("Role", "istio-cni")
    assert role["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": list(DAEMONSET_VERBS)}]
    binding = find("RoleBinding", "istio-cni")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istio-cni", "namespace": "istio-system"}]
    container = find("DaemonSet", "istio-cni")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {env["MOUNTED_CNI_BIN_DIR"], env["MOUNTED_CNI_NET_DIR"]} <= mounts
    assert env["DAEMONSET_NAME"] == "istio-cni"


def test_the_cni_node_agent_reads_the_api_server_with_the_cluster_role_its_store_calls_need() -> None:
    assert find("ClusterRole", "istio-cni")["rules"] == node_agent_rbac_rules()
    binding = find("ClusterRoleBinding", "istio-cni")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istio-cni"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istio-cni", "namespace": "istio-system"}]
    container = find("DaemonSet", "istio-cni")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The settings parse as the agent will parse them (the fieldRef filled in as the kubelet would).
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    config = parse_node_agent_config({**values, "NODE_NAME": "node-1"})
    assert (config.store, config.kubeconfig, config.node_name) == ("kubernetes", None, "node-1")
    # Host network: /debug/pods (pods' netns paths) stays on the node's loopback; /metrics on istio-cni's 15014.
    assert (str(config.admin_addr), str(config.monitoring_addr)) == ("127.0.0.1:15015", "0.0.0.0:15014")


def test_the_cni_node_agent_runs_on_the_host_network_with_the_hosts_cni_directories() -> None:
    pod = find("DaemonSet", "istio-cni")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    paths = {v["hostPath"]["path"] for v in pod["volumes"]}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/var/run/ztunnel"} <= paths


def test_our_own_kinds_have_crds_with_a_status_subresource() -> None:
    crd = find("CustomResourceDefinition", "httplocalratelimitpolicies.policy.ambientmesh.io")
    version = crd["spec"]["versions"][0]
    assert (crd["spec"]["names"]["kind"], version["name"]) == ("HTTPLocalRateLimitPolicy", "v1alpha1")
    assert version["subresources"] == {"status": {}}


def test_manifest_generate_and_install_dry_run_print_the_same_yaml_with_the_image_given() -> None:
    runner = CliRunner()
    generated = runner.invoke(app, ["manifest", "generate", "--image", "registry.example/mesh:1"])
    dry_run = runner.invoke(app, ["install", "--dry-run", "--image", "registry.example/mesh:1"])
    assert generated.exit_code == 0 and dry_run.exit_code == 0
    assert generated.stdout == dry_run.stdout
    images = {c["image"] for d in yaml.safe_load_all(generated.stdout) if d["kind"] in ("Deployment", "DaemonSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example/mesh:1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["manifest", "generate", "--image", "has space"], "expected an image reference"),
        (["install", "--dry-run", "--image", "has space"], "expected an image reference"),
    ],
    ids=["a malformed image is refused", "a malformed image is refused by install too"],
)
def test_what_cannot_be_done_is_refused_with_the_reason(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and message in result.output


def test_the_default_image_is_what_the_containerfile_builds() -> None:
    assert DEFAULT_IMAGE in (REPO / "daemonset" / "Containerfile").read_text()
