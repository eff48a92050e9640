"""ambientctl logs POD and exec through Typer's CliRunner on a recorded (not running) local cluster in a
temp dir: which container's log is shown, --tail, --previous, and the errors kubectl users expect."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from ambientctl.cli import app
from ambientctl.cluster.cluster import CLUSTER_DIR, container_log_name
from ambientctl.cluster.plan import build_layout, pod_record
from ambientctl.cluster.spec import ClusterSpec, ContainerSpec, PodSpec
from ambientctl.cluster.state import ClusterState, StateFile
from ambientctl.commands.common import CliError
from ambientctl.commands.pods import choose_container, last_lines, pod_ref

TWO = PodSpec(
    "two",
    "shop",
    "node-1",
    containers=(
        ContainerSpec(name="web", command=("sleep", "9")),
        ContainerSpec(name="side", command=("true",)),
    ),
    init_containers=(ContainerSpec(name="setup", command=("true",)),),
)
ONE = PodSpec("one", "shop", "node-1", command=("sleep", "9"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A cluster recorded as up with pods two and one, and their containers' logs."""
    spec = ClusterSpec(nodes=1)
    layout = build_layout(spec)
    node = layout.nodes[0]
    pods = {
        f"shop/{p.name}": pod_record(layout, node, p, f"10.244.1.{i + 2}") for i, p in enumerate((TWO, ONE))
    }
    StateFile(tmp_path / CLUSTER_DIR).save(ClusterState(phase="up", spec=spec, pods=pods))
    logs = tmp_path / CLUSTER_DIR / "logs"
    logs.mkdir()
    for pod, container, text in (
        (TWO, "web", "web 1\nweb 2\nweb 3\n"),
        (TWO, "side", "side now\n"),
        (ONE, "main", "one says hi\n"),
    ):
        (logs / f"{container_log_name(pod, container)}.log").write_text(text)
    (logs / f"{container_log_name(TWO, 'side')}.log.previous").write_text("side before the restart\n")
    return tmp_path


def ctl(state_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--state-dir", str(state_dir), *args])


LOGS = [
    ("the only container's log is shown without -c", ["logs", "one", "-n", "shop"], "one says hi\n"),
    ("-c picks a container of a pod with several", ["logs", "shop/two", "-c", "side"], "side now\n"),
    (
        "--tail keeps the last lines",
        ["logs", "two", "-n", "shop", "-c", "web", "--tail", "2"],
        "web 2\nweb 3\n",
    ),
    (
        "--previous shows the run before the last restart",
        ["logs", "pod/two", "-n", "shop", "-c", "side", "--previous"],
        "side before the restart\n",
    ),
    ("an init container not started yet has an empty log", ["logs", "shop/two", "-c", "setup"], ""),
]


@pytest.mark.parametrize(("args", "out"), [c[1:] for c in LOGS], ids=[c[0] for c in LOGS])
def test_pod_logs(state_dir: Path, args: list[str], out: str) -> None:
    result = ctl(state_dir, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == out


REFUSED = [
    (
        "a pod with several containers needs -c, listing them as kubectl does",
        ["logs", "two", "-n", "shop"],
        "a container name must be specified for pod two, choose one of: [web side] or one of the init "
        "containers: [setup]",
    ),
    (
        "an unknown container is refused",
        ["logs", "shop/two", "-c", "nope"],
        "container nope is not valid for pod two",
    ),
    ("an unknown pod is refused", ["logs", "shop/nope"], "pods \"nope\" not found in namespace 'shop'"),
    (
        "--previous without a restart is refused",
        ["logs", "shop/two", "-c", "web", "--previous"],
        'previous terminated container "web" in pod "two" not found',
    ),
    (
        "--since is refused for pod logs with the reason",
        ["logs", "shop/one", "--since", "5m"],
        "without timestamps",
    ),
    ("logs without POD or component is refused", ["logs"], "give a POD"),
    (
        "exec with an unknown container is refused",
        ["exec", "shop/two", "-c", "nope", "--", "true"],
        "not valid",
    ),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_pod_commands_refuse_with_the_reason(state_dir: Path, args: list[str], words: str) -> None:
    result = ctl(state_dir, *args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert words in result.stderr


def test_logs_of_a_pod_when_the_cluster_is_down_say_so(tmp_path: Path) -> None:
    result = ctl(tmp_path, "logs", "shop/one")
    assert result.exit_code == 1 and "the local cluster is not up" in result.stderr


def test_without_c_the_only_app_container_is_chosen_and_init_containers_can_be_named() -> None:
    assert choose_container(ONE, None) == "main"
    assert choose_container(TWO, "setup") == "setup"
    with pytest.raises(CliError, match=r"choose one of: \[web side\]"):
        choose_container(TWO, None)


@given(st.text(alphabet="abcdefghij-0123456789.", min_size=1, max_size=20), st.sampled_from([None, "shop"]))
def test_a_plain_pod_name_takes_the_namespace_flag(name: str, namespace: str | None) -> None:
    assert pod_ref(name, namespace) == (namespace or "default", name)
    assert pod_ref(f"pod/{name}", namespace) == (namespace or "default", name)
    assert pod_ref(f"other/{name}", None) == ("other", name)


def test_a_namespace_in_the_name_must_agree_with_the_flag() -> None:
    with pytest.raises(CliError, match="-n says"):
        pod_ref("a/web", "b")
    with pytest.raises(CliError, match="NAMESPACE/NAME"):
        pod_ref("a/b/c", None)


@given(st.lists(st.text(alphabet="xyz ", max_size=5), max_size=8), st.integers(min_value=0, max_value=10))
def test_tail_keeps_exactly_the_last_lines(lines: list[str], tail: int) -> None:
    data = "".join(f"{line}\n" for line in lines).encode()
    kept = last_lines(data, tail)
    assert kept == "".join(f"{line}\n" for line in lines[len(lines) - min(tail, len(lines)) :]).encode()
    assert last_lines(data, None) == data
