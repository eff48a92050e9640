"""``manifest generate`` and ``install --dry-run``: the Kubernetes manifests of the mesh, rendered.

Role: one pure renderer (``render_manifests``) for everything the mesh needs on a cluster: the
``istio-system`` Namespace, this mesh's CRDs, service accounts, istiod-lite's ClusterRole (its rules are
``meshcore.store.kubernetes.rbac_rules()``, derived from the calls the Kubernetes store makes; another,
``istiod-lite-ca-root``, for the mesh root's ConfigMap it keeps in every namespace), its
Deployment and Service (15012 xDS + CA, 15011 token CA, 15014 monitoring), the ztunnel DaemonSet (the
capabilities Istio's ztunnel needs) and the CNI node agent DaemonSet (host network, the host's CNI
directories; ``STORE=kubernetes``, its ClusterRole ``meshcore.store.kubernetes.node_agent_rbac_rules()``,
derived from the calls its store makes: Namespaces and its node's Pods read, Pod annotations patched). ``daemonset/ambient-mesh.yaml`` is this output checked in (a golden test keeps them equal).

Invariants: rendering is deterministic (same settings, same bytes) and does no I/O; every document is a
valid object of a current Kubernetes release (a unit test validates each one offline).

``install`` applies the rendered documents in order with server-side apply (field manager
``ambientctl``, conflicts forced, as ``kubectl apply --server-side --force-conflicts``), after checking
that the upstream CRDs the mesh reads (``upstream_crds``, derived from the store's kinds) exist: when
one is missing nothing is applied and the message names it with its install hint. Not atomic (the API
has no multi-object transaction): a failure names the object and how many were applied before it;
running install again continues (apply is idempotent). ``uninstall`` deletes them in reverse order,
already-deleted ones named as such, and keeps the ``istio-system`` Namespace and so the CA root Secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from .common import CliError

JSON = dict[str, Any]

NAMESPACE = "istio-system"
DEFAULT_IMAGE = "ambient-mesh:0.1.0"
PART_OF = {"app.kubernetes.io/part-of": "ambient-mesh"}
# Where the node agent and ztunnel meet on every node (Istio's path), and the host's CNI directories.
ZTUNNEL_SOCKET_DIR = "/var/run/ztunnel"
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"


def _meta(name: str, namespace: str | None = NAMESPACE, **labels: str) -> JSON:
    meta: JSON = {"name": name, "labels": {**PART_OF, **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _crd(kind: str, plural: str, group: str, version: str, short_names: list[str] | None = None) -> JSON:
    names: JSON = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if short_names:
        names["shortNames"] = short_names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": _meta(f"{plural}.{group}", None),
        "spec": {
            "group": group,
            "names": names,
            "scope": "Namespaced",
            "versions": [{
                "name": version,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": f"{kind}: validated in full by istiod-lite, which reports problems in status.",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def _service_account(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, app=name)}


def _env(values: dict[str, str]) -> list[JSON]:
    return [{"name": k, "value": v} for k, v in values.items()]


_NODE_NAME_ENV = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}


_POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
_POD_NAMESPACE_ENV = {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
_SERVICE_ACCOUNT_ENV = {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}

# ztunnel's projected service-account token and the mesh root (Istio's paths, audience and lifetime).
TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_AUDIENCE = "istio-ca"
TOKEN_SECONDS = 43200
ROOT_CERT_DIR = "/var/run/secrets/istio"
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"  # Istio's name; key root-cert.pem


def _istiod_role_rules() -> list[JSON]:
    """istiod-lite's namespaced rules in istio-system: the leader Lease and the CA root's Secret. The verbs
    are those ``istiod_lite.leader.LEASE_VERBS`` and ``istiod_lite.ca.secret.SECRET_VERBS`` name
    (ambientctl cannot import istiod_lite; a test keeps them equal, and others check them against the
    calls made on the API stand-in)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    ]


# The mesh root published in every namespace (istio-ca-root-cert, as Istio's namespace controller does):
# istiod_lite.ca.secret.CONFIGMAP_VERBS, cluster-wide (kept equal by a test, checked against the calls).
_CA_ROOT_RULES: list[JSON] = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update"]},
]


def _istiod(image: str) -> list[JSON]:
    from meshcore.store.kubernetes import rbac_rules  # the Kubernetes client only when rendering

    labels = {"app": "istiod"}
    container: JSON = {
        "name": "discovery",
        "image": image,
        "command": ["istiod-lite"],
        "env": _env({
            "STORE": "kubernetes",
            "AMBIENT_STATE_DIR": "/var/lib/istiod",
            "ISTIOD_XDS_ADDRESS": "0.0.0.0:15012",
            "ISTIOD_TOKEN_CA_ADDRESS": "0.0.0.0:15011",
            "ISTIOD_MONITORING_ADDRESS": "0.0.0.0:15014",
            "LOG_FORMAT": "json",
            "WAYPOINT_IMAGE": image,  # the waypoint Deployments istiod-lite makes run the same image
        }) + [_POD_NAME_ENV],
        "ports": [
            {"name": "grpc-xds", "containerPort": 15012, "protocol": "TCP"},
            {"name": "grpc-token-ca", "containerPort": 15011, "protocol": "TCP"},
            {"name": "http-monitoring", "containerPort": 15014, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 15014}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1337, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/istiod"}],
    }
    return [
        _service_account("istiod"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("istiod-lite", None), "rules": rbac_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("istiod-lite", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istiod-lite"},
         "subjects": [{"kind": "ServiceAccount", "name": "istiod", "namespace": NAMESPACE}]},
        # TokenReview (cluster-scoped) for the token CA port: istiod_lite.ca.tokenreview.TOKEN_REVIEW_VERBS.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("istiod-lite-tokenreview", None),
         "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("istiod-lite-tokenreview", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istiod-lite-tokenreview"},
         "subjects": [{"kind": "ServiceAccount", "name": "istiod", "namespace": NAMESPACE}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("istiod-lite-ca-root", None), "rules": _CA_ROOT_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("istiod-lite-ca-root", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istiod-lite-ca-root"},
         "subjects": [{"kind": "ServiceAccount", "name": "istiod", "namespace": NAMESPACE}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta("istiod-lite"), "rules": _istiod_role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta("istiod-lite"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "istiod-lite"},
         "subjects": [{"kind": "ServiceAccount", "name": "istiod", "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("istiod", **labels),
         "spec": {
             # Two replicas: both serve xDS and the CA; the Lease holder alone runs the controllers and
             # writes status (istiod_lite.leader).
             "replicas": 2,
             "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": {**PART_OF, **labels}}, "spec": {
                 "serviceAccountName": "istiod",
                 "containers": [container],
                 # Scratch state only: the CA root is kept in the Secret istio-ca-secret (or cacerts).
                 "volumes": [{"name": "state", "emptyDir": {}}],
             }},
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("istiod", **labels),
         "spec": {"selector": labels, "ports": [
             {"name": "grpc-xds", "port": 15012, "targetPort": 15012, "protocol": "TCP"},
             {"name": "grpc-token-ca", "port": 15011, "targetPort": 15011, "protocol": "TCP"},
             {"name": "http-monitoring", "port": 15014, "targetPort": 15014, "protocol": "TCP"},
         ]}},
    ]


def _socket_volume() -> JSON:
    return {"name": "ztunnel-socket", "hostPath": {"path": ZTUNNEL_SOCKET_DIR, "type": "DirectoryOrCreate"}}


def _daemonset(name: str, pod_spec: JSON) -> JSON:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, **labels), "spec": {
        "selector": {"matchLabels": labels},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "template": {"metadata": {"labels": {**PART_OF, **labels}}, "spec": {
            "serviceAccountName": name,
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            **pod_spec,
        }},
    }}


def _ztunnel(image: str) -> list[JSON]:
    container: JSON = {
        "name": "istio-proxy",
        "image": image,
        "command": ["ztunnel"],
        "env": [
            *_env({
                "PROXY_MODE": "shared",
                "XDS_ADDRESS": f"istiod.{NAMESPACE}.svc:15012",
                # No pre-shared node credential: the projected token on the token CA port, bound to this
                # node through the token's pod claims (ztunnel.credentials).
                "CA_ADDRESS": f"istiod.{NAMESPACE}.svc:15011",
                "CA_AUTH": "token",
                "ISTIO_TOKEN_PATH": f"{TOKEN_DIR}/istio-token",
                "CA_ROOT_CA": f"{ROOT_CERT_DIR}/root-cert.pem",
                "INPOD_UDS": f"{ZTUNNEL_SOCKET_DIR}/ztunnel.sock",
                "LOG_FORMAT": "json",
            }),
            _NODE_NAME_ENV,
            _POD_NAMESPACE_ENV,
            _SERVICE_ACCOUNT_ENV,
        ],
        "ports": [{"name": "http-readiness", "containerPort": 15021, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
        # What Istio's ztunnel needs: enter pod network namespaces (SYS_ADMIN), set socket marks and
        # transparent sockets there (NET_ADMIN), and raw sockets for transparent proxying (NET_RAW).
        "securityContext": {
            "privileged": False, "runAsUser": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]},
        },
        "volumeMounts": [
            {"name": "ztunnel-socket", "mountPath": ZTUNNEL_SOCKET_DIR},
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": True},
        ],
    }
    volumes = [
        _socket_volume(),
        # The kubelet rewrites the token before it expires; ztunnel reads the file at every CA call.
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "istio-token"}}]}},
        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
    ]
    return [
        _service_account("ztunnel"),
        _daemonset("ztunnel", {"containers": [container], "volumes": volumes}),
    ]


def _cni_role_rules() -> list[JSON]:
    """The node agent reads its own DaemonSet at SIGTERM (uninstall or restart?): the verbs are
    ``ztunnel.cni.install.DAEMONSET_VERBS`` (a test keeps them equal; ambientctl cannot import ztunnel)."""
    return [{"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]}]


def _cni_agent(image: str) -> list[JSON]:
    from meshcore.store.kubernetes import node_agent_rbac_rules  # the Kubernetes client only when rendering

    container: JSON = {
        "name": "install-cni",
        "image": image,
        "command": ["ztunnel-node-agent"],
        "env": [
            *_env({
                "LOG_FORMAT": "json",
                # Namespaces and this node's Pods (NODE_NAME below) from the API server, in-cluster config.
                "STORE": "kubernetes",
                # Install ambient-cni into the host's CNI directories; remove it at SIGTERM only when this
                # DaemonSet is being deleted (ztunnel.cni.install).
                "MOUNTED_CNI_BIN_DIR": "/host/opt/cni/bin",
                "MOUNTED_CNI_NET_DIR": "/host/etc/cni/net.d",
                "DAEMONSET_NAME": "istio-cni",
            }),
            _NODE_NAME_ENV,
            _POD_NAMESPACE_ENV,
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        # Host network and privileged: it writes the host's CNI directories and programs nftables in
        # every enrolled pod's network namespace.
        "securityContext": {"privileged": True, "runAsUser": 0},
        "volumeMounts": [
            {"name": "cni-bin-dir", "mountPath": "/host/opt/cni/bin"},
            {"name": "cni-net-dir", "mountPath": "/host/etc/cni/net.d"},
            {"name": "ztunnel-socket", "mountPath": ZTUNNEL_SOCKET_DIR},
            {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"},
        ],
    }
    return [
        _service_account("istio-cni"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("istio-cni", None), "rules": node_agent_rbac_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("istio-cni", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "istio-cni"},
         "subjects": [{"kind": "ServiceAccount", "name": "istio-cni", "namespace": NAMESPACE}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta("istio-cni"), "rules": _cni_role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta("istio-cni"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "istio-cni"},
         "subjects": [{"kind": "ServiceAccount", "name": "istio-cni", "namespace": NAMESPACE}]},
        _daemonset("istio-cni", {
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "containers": [container],
            "volumes": [
                {"name": "cni-bin-dir", "hostPath": {"path": CNI_BIN_DIR, "type": "Directory"}},
                {"name": "cni-net-dir", "hostPath": {"path": CNI_CONF_DIR, "type": "DirectoryOrCreate"}},
                _socket_volume(),
                {"name": "netns", "hostPath": {"path": "/var/run/netns", "type": "DirectoryOrCreate"}},
            ],
        }),
    ]


def render_manifests(image: str = DEFAULT_IMAGE) -> list[JSON]:
    """Every object the mesh needs on a cluster, in the order to apply them."""
    if not image or any(c.isspace() for c in image):
        raise CliError(f"--image {image!r}: expected an image reference such as {DEFAULT_IMAGE}")
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE, None)},
        _crd("HTTPLocalRateLimitPolicy", "httplocalratelimitpolicies", "policy.ambientmesh.io", "v1alpha1"),
        *_istiod(image),
        *_ztunnel(image),
        *_cni_agent(image),
    ]


def to_yaml(documents: list[JSON]) -> str:
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in documents)


ImageOpt = Annotated[str, typer.Option("--image", help="The container image of every component.")]
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")]


def register(app: typer.Typer) -> None:
    manifest_app = typer.Typer(help="Kubernetes manifests of the mesh.", no_args_is_help=True)
    manifest_app.command("generate")(generate)
    app.add_typer(manifest_app, name="manifest")
    app.command("install")(install)
    app.command("uninstall")(uninstall)


def generate(image: ImageOpt = DEFAULT_IMAGE, output: OutOpt = None) -> None:
    """Print the manifests that install the mesh on a Kubernetes cluster (kubectl apply -f -)."""
    text = to_yaml(render_manifests(image))
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as e:
        raise CliError(f"cannot write {output}: {e.strerror}") from None


KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", help="The kubeconfig file (default: "
                                                 "$KUBECONFIG or ~/.kube/config; in a pod, its service account).")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="The kubeconfig context (default: its current one).")]
FIELD_MANAGER = "ambientctl"
# Where the kinds the manifests hold live in the API: plural and whether namespaced.
_API_PATHS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False), "CustomResourceDefinition": ("customresourcedefinitions", False),
    "ServiceAccount": ("serviceaccounts", True), "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False), "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True), "Deployment": ("deployments", True), "Service": ("services", True),
    "DaemonSet": ("daemonsets", True),
}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def object_path(doc: JSON) -> str:
    """The API path of one rendered object."""
    api_version, kind, meta = doc["apiVersion"], doc["kind"], doc["metadata"]
    plural, namespaced = _API_PATHS[kind]
    prefix = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    scope = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{scope}/{plural}/{meta['name']}"


def upstream_crds() -> dict[str, str]:
    """The CRDs the mesh reads but does not install (Istio's, Gateway API's): name -> install hint. Derived
    from the kinds the Kubernetes store watches, so a kind added there is checked here too."""
    from meshcore.store.kubernetes import DEFAULT_KINDS, INSTALL_HINTS, kind_path

    ours = {d["metadata"]["name"] for d in render_manifests() if d["kind"] == "CustomResourceDefinition"}
    out: dict[str, str] = {}
    for kind in DEFAULT_KINDS:
        path = kind_path(kind)
        name = f"{path.plural}.{path.group}"
        if path.group in INSTALL_HINTS and name not in ours:
            out[name] = INSTALL_HINTS[path.group]
    return out


def _connect(kubeconfig: str | None, context: str | None) -> Any:
    from typer._click.globals import get_current_context

    from meshcore.store.errors import StoreUnavailable
    from meshcore.store.kubernetes import load_configuration

    from .common import cli_state

    ctx = get_current_context(silent=True)
    if ctx is not None:  # the global --kubeconfig/--context when the command's own are not given
        state = cli_state(ctx)
        kubeconfig, context = kubeconfig or state.kubeconfig, context or state.kube_context
    try:
        return load_configuration(kubeconfig=kubeconfig, context=context)
    except StoreUnavailable as e:
        raise CliError(str(e)) from None


async def _apply_all(configuration: Any, documents: list[JSON]) -> list[str]:
    """Check the upstream CRDs, then server-side apply every document in order; the lines to print."""
    from kubernetes_asyncio.client import ApiClient

    from meshcore.store.kubernetes import APPLY_PATCH, ApiFailure, api_call

    lines: list[str] = []
    async with ApiClient(configuration) as api:
        missing: dict[str, list[str]] = {}
        for name, hint in upstream_crds().items():
            try:
                await api_call(api, "GET", f"{CRDS}/{name}")
            except ApiFailure as e:
                if e.status != 404:
                    raise CliError(f"cannot check CRD {name}: {e}") from None
                missing.setdefault(hint, []).append(name)
        if missing:
            raise CliError("nothing applied: CRDs the mesh needs are not installed: " + "; ".join(
                f"{', '.join(names)}: {hint}" for hint, names in missing.items()))
        for doc in documents:
            what = _describe(doc)
            try:
                await api_call(api, "PATCH", object_path(doc), body=doc, content_type=APPLY_PATCH,
                               query={"fieldManager": FIELD_MANAGER, "force": "true"})
            except ApiFailure as e:
                done = f" ({len(lines)} applied before it: run install again once fixed)" if lines else ""
                raise CliError(f"applying {what} failed: {e}{done}") from None
            lines.append(f"{what} applied")
    return lines


async def _delete_all(configuration: Any, documents: list[JSON]) -> list[str]:
    from kubernetes_asyncio.client import ApiClient

    from meshcore.store.kubernetes import ApiFailure, api_call

    lines: list[str] = []
    async with ApiClient(configuration) as api:
        for doc in reversed(documents):
            what = _describe(doc)
            try:
                await api_call(api, "DELETE", object_path(doc))
            except ApiFailure as e:
                if e.status != 404:
                    raise CliError(f"deleting {what} failed: {e}") from None
                lines.append(f"{what} not found (already deleted)")
                continue
            lines.append(f"{what} deleted")
    return lines


def _describe(doc: JSON) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']} {meta['namespace'] + '/' if meta.get('namespace') else ''}{meta['name']}"


def install(
    image: ImageOpt = DEFAULT_IMAGE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the YAML instead of applying it.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Install (or upgrade) the mesh on a Kubernetes cluster: server-side apply of the manifests.

    Istio's and Gateway API's CRDs must be installed first (checked: nothing is applied when one is
    missing). --dry-run prints the YAML instead."""
    documents = render_manifests(image)
    if dry_run:
        typer.echo(to_yaml(documents), nl=False)
        return
    import asyncio

    for line in asyncio.run(_apply_all(_connect(kubeconfig, context), documents)):
        typer.echo(line)


def uninstall(kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """Remove the mesh from the Kubernetes cluster: every object install applied, except the istio-system
    Namespace (it keeps the CA root's Secret, so a later install keeps the mesh's identities)."""
    import asyncio

    documents = [d for d in render_manifests() if d["kind"] != "Namespace"]
    for line in asyncio.run(_delete_all(_connect(kubeconfig, context), documents)):
        typer.echo(line)
    typer.echo(f"Namespace {NAMESPACE} kept (it holds the CA root Secret istio-ca-secret); delete it to remove "
               "the root too")
