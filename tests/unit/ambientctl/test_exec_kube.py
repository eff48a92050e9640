"""``ambientctl --kubeconfig FILE exec POD [-c C] -- CMD`` through the API stand-in's pods/exec (in-process):
the command, container and stdin reach the pod, stdout and stderr come back on their streams, the exit
code is ambientctl's; kubectl's default container with its note; refusals are one error line. The error
channel's Status is read as the API server writes it (a property test over exit codes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.troubleshoot.reach import ReachError
from ambientctl.troubleshoot.remote import exec_exit_code
from meshcore.testing.kube_api import ThreadedKubeApi, exec_status, write_kubeconfig


@dataclass
class Pods:
    api: ThreadedKubeApi
    kubeconfig: Path
    calls: list[tuple[str, str, str, list[str], bytes]] = field(default_factory=list)
    answer: tuple[bytes, bytes, int] = (b"", b"", 0)

    def handler(self, namespace: str, pod: str, container: str, argv: list[str], stdin: bytes) -> tuple[bytes, bytes, int]:
        self.calls.append((namespace, pod, container, argv, stdin))
        return self.answer

    def run(self, *args: str, stdin: bytes | None = None) -> Any:
        return CliRunner().invoke(app, ["--state-dir", str(self.kubeconfig.parent / "local"), "--kubeconfig",
                                        str(self.kubeconfig), *args], input=stdin)  # fmt: skip


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    with ThreadedKubeApi() as api:
        api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        for name, containers, phase in (("web", ["app"], "Running"), ("two", ["main", "istio-proxy"], "Running"),
                                        ("done", ["job"], "Succeeded")):
            api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": "shop"}, "spec": {"containers": [{"name": c} for c in containers]},
                "status": {"phase": phase}})
        found = Pods(api, Path(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
        api.server.exec_handler = found.handler
        yield found


def test_the_command_runs_in_the_pod_with_our_stdin_and_its_output_and_exit_code_are_ours(pods: Pods) -> None:
    pods.answer = (b"HELLO\n", b"a warning\n", 0)
    got = pods.run("exec", "shop/web", "--", "tr", "a-z", "A-Z", stdin=b"hello\n")
    assert got.exit_code == 0, got.output
    assert got.stdout == "HELLO\n" and got.stderr == "a warning\n"
    assert pods.calls == [("shop", "web", "app", ["tr", "a-z", "A-Z"], b"hello\n")]
    assert not (pods.kubeconfig.parent / "local").exists()  # the local cluster was never opened


def test_stdin_larger_than_one_message_arrives_whole(pods: Pods) -> None:
    data = bytes(range(256)) * 800  # 200 KiB: several stdin messages
    got = pods.run("exec", "shop/web", "--", "cat", stdin=data)
    assert got.exit_code == 0, got.output
    assert pods.calls[0][4] == data


def test_a_non_zero_exit_code_is_ambientctls_exit_code(pods: Pods) -> None:
    pods.answer = (b"", b"sh: nope\n", 7)
    got = pods.run("exec", "-n", "shop", "web", "--", "sh", "-c", "exit 7")
    assert got.exit_code == 7 and got.stderr == "sh: nope\n", got.output


def test_without_c_a_pod_of_several_containers_runs_in_the_first_saying_so(pods: Pods) -> None:
    got = pods.run("exec", "shop/two", "--", "true")
    assert got.exit_code == 0, got.output
    assert 'Defaulted container "main" out of: main, istio-proxy' in got.stderr
    assert pods.calls[0][2] == "main"
    assert pods.run("exec", "shop/two", "-c", "istio-proxy", "--", "true").exit_code == 0
    assert pods.calls[1][2] == "istio-proxy"


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["exec", "shop/gone", "--", "true"], 'pods \\"gone\\" not found'),
     (["exec", "shop/web", "-c", "nope", "--", "true"], "container nope is not valid for pod web"),
     (["exec", "shop/done", "--", "true"], "cannot exec into a container in a completed pod; current phase is "
      "Succeeded")],
    ids=["a missing pod is the API server's not found", "an unknown container is refused",
         "a completed pod is refused as kubectl does"],
)
def test_what_goes_wrong_is_one_error_line(pods: Pods, args: list[str], expected: str) -> None:
    got = pods.run(*args)
    assert got.exit_code == 1, got.output
    assert expected.replace("\\", "") in got.output.replace("\\", "") and "Traceback" not in got.output
    assert pods.calls == []


def test_a_failure_other_than_an_exit_code_is_the_api_servers_message(pods: Pods) -> None:
    def broken(*_a: Any) -> tuple[bytes, bytes, int]:
        raise RuntimeError('exec: "nope": executable file not found in $PATH')

    pods.api.server.exec_handler = broken
    got = pods.run("exec", "shop/web", "--", "nope")
    assert got.exit_code == 1 and "executable file not found" in got.output, got.output


@given(st.integers(min_value=0, max_value=255))
def test_the_exit_code_is_read_back_from_the_status_the_api_server_writes(code: int) -> None:
    assert exec_exit_code(json.dumps(exec_status(["sh"], code)).encode(), "exec") == code


@pytest.mark.parametrize(
    "status",
    [b"not json", b"[]", json.dumps({"status": "Failure", "reason": "InternalError", "message": "boom"}).encode(),
     json.dumps({"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": [
         {"reason": "ExitCode", "message": "x"}]}}).encode()],
    ids=["text on the error channel is the error", "a non-object is an error", "a failure without an exit code "
         "is the error", "an exit code that is no number is an error"],
)
def test_an_error_channel_without_an_exit_code_is_an_error(status: bytes) -> None:
    with pytest.raises(ReachError):
        exec_exit_code(status, "exec")
