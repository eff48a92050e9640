"""kubectl habits of ``ambientctl get``: several kinds, KIND/NAME, ``all``, ``-o wide|name``, ``nodes``
and ``-w`` (the watch follows the store's change log), on a real store in a temporary state directory."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.cluster.spec import ClusterSpec
from ambientctl.cluster.state import ClusterState, StateFile
from ambientctl.commands.common import CliError
from ambientctl.commands.resources import GetRequest, WatchSpec, parse_get_args, watch_lines
from ambientctl.testing import Ctl, aged, table
from meshcore.store import InvalidResource, Resource, SqliteStore, build_resource, store_path

REPO = Path(__file__).resolve().parents[3]
MESH = REPO / "examples" / "mesh.yaml"
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
"""


@pytest.fixture
def ctl(tmp_path: Path) -> Ctl:
    c = Ctl(tmp_path / "state")
    c.ok("apply", "-f", str(MESH))
    c.ok("apply", "-f", "-", input=DEPLOYMENT)
    return c


@pytest.mark.parametrize(
    ("args", "requests"),
    [
        (["pods"], [GetRequest("Pod")]),
        (["po", "a", "b", "a"], [GetRequest("Pod", ("a", "b"))]),
        (["pods,svc"], [GetRequest("Pod"), GetRequest("Service")]),
        (["all"], [GetRequest("Pod"), GetRequest("Service"), GetRequest("Deployment")]),
        (["pods,all"], [GetRequest("Pod"), GetRequest("Service"), GetRequest("Deployment")]),
        (["pod/a", "svc/b", "po/c"], [GetRequest("Pod", ("a", "c")), GetRequest("Service", ("b",))]),
        (["nodes"], [GetRequest("Node")]),
        (["no/node-1"], [GetRequest("Node", ("node-1",))]),
    ],
    ids=[
        "a kind alone lists every object of it",
        "names after a kind are each looked up once",
        "a comma list asks for several kinds",
        "all is pods, services and deployments",
        "a kind already in all is asked for once",
        "KIND/NAME pairs group the names by kind in first-seen order",
        "nodes are the local cluster's",
        "a node by KIND/NAME",
    ],
)
def test_get_arguments_parse_as_kubectls(args: list[str], requests: list[GetRequest]) -> None:
    assert parse_get_args(args) == requests


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "say what to get"),
        (["pod/a", "b"], "give only KIND/NAME arguments"),
        (["pods,", "a"], "an empty kind in the list"),
        (["pod/"], "give only KIND/NAME arguments"),
    ],
    ids=[
        "nothing to get says what to give",
        "mixing KIND/NAME with a bare name is refused",
        "an empty kind in a list is refused",
        "a KIND/ without a name is refused",
    ],
)
def test_bad_get_arguments_say_what_to_write(args: list[str], words: str) -> None:
    with pytest.raises(CliError, match=words):
        parse_get_args(args)


KIND_NAMES = ["po", "pods", "svc", "Service", "deploy", "ap", "ns", "nodes", "no"]
NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)


@given(st.lists(st.tuples(st.sampled_from(KIND_NAMES), NAMES), min_size=1, max_size=8))
def test_kind_slash_name_pairs_keep_every_name_once_under_its_kind(pairs: list[tuple[str, str]]) -> None:
    requests = parse_get_args([f"{kind}/{name}" for kind, name in pairs])
    got = {(r.kind, name) for r in requests for name in r.names}
    wanted = {(parse_get_args([kind])[0].kind, name) for kind, name in pairs}
    assert got == wanted
    assert all(len(set(r.names)) == len(r.names) for r in requests)
    assert len({r.kind for r in requests}) == len(requests)


@given(st.lists(st.sampled_from([*KIND_NAMES, "all"]), min_size=1, max_size=6), st.lists(NAMES, max_size=4))
def test_a_kind_list_asks_each_kind_once_with_the_same_names(kinds: list[str], names: list[str]) -> None:
    requests = parse_get_args([",".join(kinds), *names])
    assert len({r.kind for r in requests}) == len(requests)
    assert all(r.names == tuple(dict.fromkeys(names)) for r in requests)


def test_get_all_prints_one_block_per_kind_naming_rows_kind_slash_name(ctl: Ctl) -> None:
    out = ctl.ok("get", "all", "-n", "demo")
    blocks = [table(block) for block in out.strip().split("\n\n")]
    assert [block[0][:2] for block in blocks] == [["NAME", "READY"], ["NAME", "TYPE"], ["NAME", "READY"]]
    assert [row[0] for row in blocks[0][1:]] == ["pod/client", "pod/server"]
    assert [row[0] for row in blocks[1][1:]] == ["service/server"]
    assert [row[0] for row in blocks[2][1:]] == ["deployment.apps/web"]


def test_kind_slash_name_arguments_of_two_kinds(ctl: Ctl) -> None:
    out = ctl.ok("get", "pod/server", "svc/server", "-n", "demo")
    assert [table(b)[1][0] for b in out.strip().split("\n\n")] == ["pod/server", "service/server"]
    # One kind: plain names, as kubectl prints them.
    assert table(ctl.ok("get", "pod/server", "-n", "demo"))[1][0] == "server"


def test_output_name_and_a_single_named_object_as_yaml(ctl: Ctl) -> None:
    assert ctl.ok("get", "pods,deploy", "-n", "demo", "-o", "name").splitlines() == [
        "pod/client",
        "pod/server",
        "deployment.apps/web",
    ]
    assert yaml.safe_load(ctl.ok("get", "pod/server", "-n", "demo", "-o", "yaml"))["kind"] == "Pod"
    listing = json.loads(ctl.ok("get", "pods,svc", "-n", "demo", "-o", "json"))
    assert listing["kind"] == "List" and len(listing["items"]) == 3


def test_a_missing_named_object_fails_after_printing_the_others(ctl: Ctl) -> None:
    result = ctl("get", "pod/server", "pod/ghost", "-n", "demo")
    assert result.exit_code == 1
    assert table(result.stdout)[1][0] == "server"
    assert 'pod "ghost" in namespace "demo" not found' in result.stderr


def test_wide_deployments_show_containers_images_and_selector(ctl: Ctl) -> None:
    assert aged(table(ctl.ok("get", "deploy", "-n", "demo", "-o", "wide"))) == [
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        ["web", "0/2", "0", "0", "<age>", "web", "nginx", "app=web"],
    ]


def test_get_nodes_when_the_cluster_is_down_says_so(ctl: Ctl) -> None:
    result = ctl("get", "nodes")
    assert result.exit_code == 1
    assert "the local cluster is not up" in result.stderr and "ambientctl cluster up" in result.stderr


def test_get_nodes_lists_the_recorded_nodes_not_ready_while_their_netns_is_missing(ctl: Ctl) -> None:
    # A cluster recorded up whose namespaces are gone (as after a reboot): its nodes are listed, NotReady.
    spec = ClusterSpec(prefix="zq-", nodes=2)
    StateFile(ctl.state_dir / "cluster").save(ClusterState(phase="up", spec=spec))
    rows = table(ctl.ok("get", "nodes", "-o", "wide"))
    assert rows[0] == [
        "NAME",
        "STATUS",
        "ROLES",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "KERNEL-VERSION",
    ]
    assert [(r[0], r[1]) for r in rows[1:]] == [("node-1", "NotReady"), ("node-2", "NotReady")]
    assert rows[1][4].startswith("v") and re.match(r"^\d+\.\d+\.\d+", rows[1][5])
    assert ctl.ok("get", "no/node-2", "-o", "name") == "node/node-2\n"
    assert 'node "node-9" not found' in ctl("get", "node", "node-9").stderr


def test_watch_prints_the_table_then_a_row_per_change_until_the_deadline(tmp_path: Path) -> None:
    with SqliteStore(store_path(tmp_path)) as store:
        store.apply([build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})])
        store.apply([_pod("a", "Pending")])
        lines = watch_lines(
            store, WatchSpec("Pod", "demo"), deadline=time.monotonic() + 30, poll_interval=0.01
        )
        assert re.split(r"\s{2,}", next(lines)) == [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "DATAPLANE-MODE",
        ]
        assert next(lines).split()[:3] == ["a", "-", "Pending"]
        # Changes made after the listing: each is one row, in order; other namespaces are not followed.
        store.apply([_pod("a", "Running")])
        store.apply([_pod("b", "Pending", namespace="other")])
        store.apply([_pod("c", "Pending")])
        assert next(lines).split()[:3] == ["a", "-", "Running"]
        assert next(lines).split()[:3] == ["c", "-", "Pending"]
        store.delete([_pod("a", "Running").ref])
        assert next(lines).split()[0] == "a"


def test_watch_ends_at_its_deadline(tmp_path: Path) -> None:
    with SqliteStore(store_path(tmp_path)) as store:
        lines = list(
            watch_lines(store, WatchSpec("Pod", None), deadline=time.monotonic() + 0.2, poll_interval=0.01)
        )
    assert lines == ["NAME   READY   STATUS   RESTARTS   AGE   DATAPLANE-MODE"]


def test_watch_through_the_cli_with_a_request_timeout(ctl: Ctl) -> None:
    out = ctl.ok("get", "pods", "-n", "demo", "-w", "--request-timeout", "0.3")
    assert [row[0] for row in table(out)] == ["NAME", "client", "server"]
    result = ctl("get", "pods,svc", "-w")
    assert result.exit_code == 1 and "one kind" in result.stderr


def _pod(name: str, phase: str, namespace: str = "demo") -> Resource:
    return build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "c", "command": ["true"]}]},
            "status": {"phase": phase},
        }
    )


USER_EVENT = """\
apiVersion: v1
kind: Event
metadata: {name: web.deploy-note, namespace: demo}
involvedObject: {kind: Deployment, name: web, namespace: demo}
type: Normal
reason: ScalingReplicaSet
message: Scaled up replica set web-abc to 2
count: 2
firstTimestamp: "2026-01-01T00:00:00Z"
lastTimestamp: "2026-01-01T00:01:00Z"
"""


def test_a_users_event_is_applied_listed_and_described_with_its_object(ctl: Ctl) -> None:
    assert ctl.ok("apply", "-f", "-", input=USER_EVENT) == "event/web.deploy-note created\n"
    rows = table(ctl.ok("get", "events", "-n", "demo"))
    assert rows[0] == ["LAST-SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows[1][1:] == [
        "Normal",
        "ScalingReplicaSet",
        "deployment/web",
        "Scaled up replica set web-abc to 2",
    ]
    doc = yaml.safe_load(ctl.ok("get", "ev", "web.deploy-note", "-n", "demo", "-o", "yaml"))
    assert doc["involvedObject"]["name"] == "web" and doc["count"] == 2 and "spec" not in doc
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["metadata"]["creationTimestamp"])
    described = ctl.ok("describe", "deploy", "web", "-n", "demo")
    assert "ScalingReplicaSet" in described.split("Events:", 1)[1]
    assert "(x2 over" in described


def test_an_event_with_a_typo_is_refused_with_the_field() -> None:
    with pytest.raises(InvalidResource, match='unknown field "reasn"'):
        build_resource(yaml.safe_load(USER_EVENT.replace("reason:", "reasn:")))


def test_describe_leaves_out_the_events_of_an_earlier_object_of_the_same_name(ctl: Ctl) -> None:
    uid = yaml.safe_load(ctl.ok("get", "deploy", "web", "-n", "demo", "-o", "yaml"))["metadata"]["uid"]
    mine = USER_EVENT.replace("namespace: demo}\ntype", f"namespace: demo, uid: {uid}}}\ntype")
    earlier = (
        USER_EVENT.replace("web.deploy-note", "web.earlier")
        .replace("namespace: demo}\ntype", "namespace: demo, uid: 0000-gone}\ntype")
        .replace("Scaled up replica set web-abc to 2", "from the deleted one")
    )
    ctl.ok("apply", "-f", "-", input=mine + "---\n" + earlier)
    events = ctl.ok("describe", "deploy", "web", "-n", "demo").split("Events:", 1)[1]
    assert "Scaled up replica set web-abc to 2" in events and "from the deleted one" not in events
