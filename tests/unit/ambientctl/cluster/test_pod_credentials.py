"""What the local cluster gives a pod at start: its projected service-account token and the mesh root
(written, refreshed, re-issued for a new pod), its manifest's env, and istiod's addresses for waypoints."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from ambientctl.cluster import Cluster
from ambientctl.cluster.errors import ClusterError, InvalidClusterSpec
from ambientctl.cluster.kubelet import PodCredentials, container_env, pod_spec_from_resource
from ambientctl.cluster.mesh import base_env, istiod_command
from ambientctl.cluster.plan import AddRoute, build_layout, plan_cluster
from ambientctl.cluster.spec import ClusterSpec
from istiod_lite.config import parse_config as parse_istiod_config
from istiod_lite.waypoints.objects import ControllerSettings, desired
from meshcore import satoken
from meshcore.testing import resources as r

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def _pod(uid: str = "uid-1", sa: str = "waypoint"):
    return r.pod("waypoint-x7k2p", sa=sa, node="node-1", uid=uid)


def _read(cluster: Cluster, clock: Clock):
    path = cluster.pod_dir("demo", "waypoint-x7k2p") / "istio-token"
    return satoken.verify_token(
        path.read_text(), satoken.load_issuer_public_key(cluster.directory.parent), now=clock.now
    ), path


def test_a_pod_gets_a_private_token_bound_to_it(cluster: Cluster):
    clock = Clock()
    assert PodCredentials(cluster, wall_clock=clock).ensure(_pod(), "node-1")
    token, path = _read(cluster, clock)
    assert (token.namespace, token.service_account) == ("demo", "waypoint")
    assert token.pod == satoken.BoundObject("waypoint-x7k2p", "uid-1")
    assert token.node == satoken.BoundObject("node-1")
    assert token.audiences == ("istio-ca",)
    assert token.expires_at - token.issued_at == timedelta(hours=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_fresh_token_is_kept_and_one_past_80_percent_is_reissued(cluster: Cluster):
    clock = Clock()
    creds = PodCredentials(cluster, wall_clock=clock)
    creds.ensure(_pod(), "node-1")
    clock.now = T0 + timedelta(minutes=47)
    assert not creds.ensure(_pod(), "node-1")
    clock.now = T0 + timedelta(minutes=49)
    assert creds.ensure(_pod(), "node-1")
    token, _ = _read(cluster, clock)
    assert token.issued_at == clock.now.replace(microsecond=0)


REISSUED = [
    ("a re-created pod of the same name (new uid) gets its own token", _pod(uid="uid-2"), "node-1"),
    ("a pod now running as another service account gets a token for it", _pod(sa="other"), "node-1"),
    ("a pod on another node gets a token naming that node", _pod(), "node-2"),
]


@pytest.mark.parametrize(("pod", "node"), [c[1:] for c in REISSUED], ids=[c[0] for c in REISSUED])
def test_a_token_of_another_pod_is_replaced(cluster: Cluster, pod, node):
    clock = Clock()
    creds = PodCredentials(cluster, wall_clock=clock)
    creds.ensure(_pod(), "node-1")
    assert creds.ensure(pod, node)
    token, _ = _read(cluster, clock)
    assert (token.pod.uid, token.service_account, token.node.name) == (pod.uid, pod.spec["serviceAccountName"], node)


def test_a_damaged_token_file_is_replaced(cluster: Cluster):
    clock = Clock()
    creds = PodCredentials(cluster, wall_clock=clock)
    creds.ensure(_pod(), "node-1")
    (cluster.pod_dir("demo", "waypoint-x7k2p") / "istio-token").write_text("garbage")
    assert creds.ensure(_pod(), "node-1")
    _read(cluster, clock)


def test_the_root_comes_from_the_nodes_credential_else_the_state_dirs_ca(cluster: Cluster):
    root = cluster.pod_dir("demo", "waypoint-x7k2p") / "root-cert.pem"
    creds = PodCredentials(cluster, wall_clock=Clock())
    creds.ensure(_pod(), "node-1")
    assert not root.exists(), "no mesh yet: no root file rather than a wrong one"
    ca = cluster.directory.parent / "ca"
    ca.mkdir()
    (ca / "root-cert.pem").write_text("STATE DIR ROOT")
    creds.ensure(_pod(), "node-1")
    assert root.read_text() == "STATE DIR ROOT"
    node_cred = cluster.nodes_dir / "node-1" / "credential"
    node_cred.mkdir(parents=True)
    (node_cred / "root-cert.pem").write_text("ROOTS ISTIOD GAVE THE NODE")
    creds.ensure(_pod(), "node-1")
    assert root.read_text() == "ROOTS ISTIOD GAVE THE NODE"


def test_a_damaged_issuer_key_fails_the_pod_with_the_reason(cluster: Cluster):
    satoken.ensure_issuer_key(cluster.directory.parent)
    (cluster.directory.parent / "sa-issuer" / "key.pem").write_text("garbage")
    with pytest.raises(ClusterError, match="no service-account token.*key.pem"):
        PodCredentials(cluster, wall_clock=Clock()).ensure(_pod(), "node-1")


# --- env from the manifest -------------------------------------------------------------------------

ENV_OK = [
    ("literal values are passed", [{"name": "A", "value": "1"}, {"name": "B", "value": "x y"}], {"A": "1", "B": "x y"}),
    ("a missing value is empty", [{"name": "A"}], {"A": ""}),
    ("a later entry of the same name wins", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], {"A": "2"}),
    ("no env is no variables", None, {}),
]


@pytest.mark.parametrize(("entries", "want"), [c[1:] for c in ENV_OK], ids=[c[0] for c in ENV_OK])
def test_container_env(entries, want):
    assert container_env(entries, "pod demo/p") == (want, {})


ENV_REFUSED = [
    ("valueFrom is refused, naming the entry", [{"name": "A", "value": "1"},
     {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}], r"env\[1\]\.valueFrom.*IP"),
    ("a number value is refused", [{"name": "N", "value": 3}], r"env\[0\]\.value.*quote"),
    ("a name with '=' is refused", [{"name": "A=B", "value": "1"}], r"env\[0\]\.name"),
    ("an entry without a name is refused", [{"value": "1"}], r"env\[0\]\.name"),
    ("env that is not a list is refused", {"A": "1"}, r"\$\.spec\.containers\[0\]\.env.*list"),
]


@pytest.mark.parametrize(("entries", "words"), [c[1:] for c in ENV_REFUSED], ids=[c[0] for c in ENV_REFUSED])
def test_container_env_refuses(entries, words):
    with pytest.raises(InvalidClusterSpec, match=words):
        container_env(entries, "pod demo/p")


def test_the_waypoint_controllers_pod_runs_with_its_env():
    settings = ControllerSettings(xds_address="172.30.0.254:15012", ca_address="172.30.0.254:15011")
    made = desired(r.waypoint("waypoint", "demo", uid="gw-uid"), settings).pod
    pod = pod_spec_from_resource(msgspec.structs.replace(made, uid="pod-uid"), "node-1")
    assert pod.command == ("waypoint",)
    assert pod.service_account == "waypoint"
    assert pod.env["XDS_ADDRESS"] == "172.30.0.254:15012"
    assert pod.env["CA_ADDRESS"] == "172.30.0.254:15011"
    assert pod.env["GATEWAY_NAME"] == "waypoint"


# --- istiod on the local cluster ---------------------------------------------------------------------


def test_istiod_serves_the_token_ca_and_tells_waypoints_its_cluster_address(tmp_path: Path):
    layout = build_layout(ClusterSpec(nodes=2, prefix="am-"))
    command = istiod_command("/py", tmp_path, layout, base_env({"PATH": "/usr/bin"}, "/py"), "info")
    argv = dict(zip(command.argv[3::2], command.argv[4::2], strict=False))
    config = parse_istiod_config(
        state_dir=str(tmp_path), xds_address=argv["--xds-address"], token_ca_address=argv["--token-ca-address"],
        env=command.env,
    )
    assert (config.token_ca_host, config.token_ca_port) == (layout.istiod_ip, 15011)
    assert config.waypoint_xds_address == f"{layout.istiod_ip}:15012"
    assert config.waypoint_ca_address == f"{layout.istiod_ip}:15011"


def test_istiod_on_the_fabric_can_answer_every_nodes_pods():
    layout = build_layout(ClusterSpec(nodes=2, prefix="am-"))
    steps = plan_cluster(layout)
    for node in layout.nodes:
        assert AddRoute(layout.fabric_netns, node.pod_cidr, gateway=node.ip) in steps
