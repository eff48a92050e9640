"""The CNI plugin: env and stdin parsing, CNI error JSON, and what each command does with the store and
the agent (both boundaries replaced by recorders; the real store is used where it is the point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshcore.store import SqliteStore, build_resource
from ztunnel.cni.config import PluginConfig
from ztunnel.cni.errors import AgentUnreachable, CniEnvInvalid, CniStoreUnavailable
from ztunnel.cni.events import EventReply, PluginEvent
from ztunnel.cni.plugin import parse_cni_args, run, store_enrollment

REPO = Path(__file__).resolve().parents[4]
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.244.1.5/24"}]}
CONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "prevResult": PREV}
ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_UID=abc"


def env(command: str = "ADD", **over: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/cni-1234",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": ARGS,
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v != "<unset>"}


class Agent:
    """Records events; answers with ``reply`` or raises ``error``."""

    def __init__(self, reply: EventReply | None = None, error: Exception | None = None) -> None:
        self.reply = reply or EventReply(ok=True, captured=True)
        self.error = error
        self.events: list[tuple[PluginEvent, float]] = []

    def __call__(self, config: PluginConfig, event: PluginEvent, timeout: float) -> EventReply:
        self.events.append((event, timeout))
        if self.error is not None:
            raise self.error
        return self.reply


def enrolled_is(value: bool | None, error: Exception | None = None):
    def decide(config: PluginConfig, namespace: str, name: str) -> bool | None:
        assert (namespace, name) == ("demo", "web")
        if error is not None:
            raise error
        return value

    return decide


def call(environ: dict[str, str], stdin: Any = CONF, *, enrolled=None, agent: Agent | None = None):
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    agent = agent or Agent()
    out, status = run(environ, data, enrollment=enrolled or enrolled_is(True), notify=agent)
    return out, status, agent


def error_of(out: bytes) -> dict[str, Any]:
    doc = json.loads(out)
    assert set(doc) <= {"cniVersion", "code", "msg", "details"} and {"cniVersion", "code", "msg"} <= set(doc)
    return doc


# -- parsing and errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "stdin", "code", "words"),
    [
        (env("ADD"), b"", 6, "stdin is empty"),
        (env("ADD"), b"{not json", 6, "cannot decode"),
        (env("ADD"), b"[1, 2]", 6, "expected a JSON object"),
        (env("ADD"), {"name": "x"}, 7, "cniVersion"),
        (env("ADD"), {**CONF, "event_timeout": "soon"}, 7, "event_timeout"),
        (env("ADD"), {**CONF, "event_timeout": 0}, 7, "event_timeout"),
        (env("ADD"), {**CONF, "cniVersion": "0.2.0"}, 1, "0.2.0"),
        (env("ADD", CNI_NETNS="<unset>"), CONF, 4, "CNI_NETNS"),
        (env("ADD", CNI_NETNS="cni-1234"), CONF, 4, "absolute"),
        (env("ADD", CNI_CONTAINERID="<unset>"), CONF, 4, "CNI_CONTAINERID"),
        (env("ADD", CNI_IFNAME=""), CONF, 4, "CNI_IFNAME"),
        (env("ADD", CNI_ARGS="K8S_POD_NAME"), CONF, 4, "KEY=VALUE"),
        (env("<unset>"), CONF, 4, "CNI_COMMAND"),
        (env("UPDATE"), CONF, 4, "UPDATE"),
    ],
    ids=[
        "empty stdin is a decode error",
        "garbage stdin is a decode error",
        "a JSON array is not a network config",
        "a config without cniVersion is invalid",
        "a non-numeric timeout is invalid",
        "a zero timeout is invalid",
        "an unsupported CNI version is reported as such",
        "ADD without a netns path is refused",
        "a relative netns path is refused",
        "a missing container id is refused",
        "an empty interface name is refused",
        "CNI_ARGS that are not KEY=VALUE are refused",
        "no CNI_COMMAND is refused",
        "an unknown command is refused",
    ],
)
def test_bad_calls_give_cni_error_json_and_a_failure_status(environ, stdin, code, words) -> None:
    out, status, agent = call(environ, stdin)
    doc = error_of(out)
    assert status == 1
    assert doc["code"] == code
    assert words in doc["msg"] + doc.get("details", "")
    assert agent.events == []


def test_cni_args_parse_as_key_value_pairs() -> None:
    assert parse_cni_args("IgnoreUnknown=1; K8S_POD_NAME=web;;K8S_POD_NAMESPACE=demo") == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAME": "web",
        "K8S_POD_NAMESPACE": "demo",
    }
    with pytest.raises(CniEnvInvalid):
        parse_cni_args("=x")


def test_version_lists_the_supported_versions_without_reading_config() -> None:
    out, status, _ = call(env("VERSION"), b"")
    assert status == 0
    doc = json.loads(out)
    assert doc["cniVersion"] == "1.0.0" and "1.0.0" in doc["supportedVersions"]


# -- ADD -------------------------------------------------------------------------------------------------


def test_add_for_an_enrolled_pod_waits_for_the_agent_and_passes_prev_result_through() -> None:
    out, status, agent = call(env("ADD"), CONF)
    assert status == 0
    assert json.loads(out) == PREV
    ((event, timeout),) = agent.events
    assert event == PluginEvent(
        cmd="add",
        pod_namespace="demo",
        pod_name="web",
        container_id="c0ffee",
        netns="/var/run/netns/cni-1234",
        ifname="eth0",
        pod_uid="abc",
        pod_ips=("10.244.1.5",),
        wait=True,
    )
    assert timeout == 30.0


def test_prev_result_bytes_are_passed_through_exactly() -> None:
    raw = b'{"cniVersion":"1.0.0","prevResult":{"cniVersion":"1.0.0", "ips": [], "x-extra": {"k": [1,2]}}}'
    out, status, _ = call(env("ADD"), raw)
    assert (status, out) == (0, b'{"cniVersion":"1.0.0", "ips": [], "x-extra": {"k": [1,2]}}')


@pytest.mark.parametrize(
    ("agent", "code", "words"),
    [
        (Agent(error=AgentUnreachable("/run/x.sock", "no such socket")), 11, "not reachable"),
        (Agent(EventReply(ok=False, error="pod demo/web: ztunnel refused it: boom")), 100, "boom"),
    ],
    ids=[
        "an unreachable agent fails the ADD of an enrolled pod with try-again-later",
        "a capture the agent reports failed fails the ADD with its reason",
    ],
)
def test_add_for_an_enrolled_pod_fails_when_capture_fails(agent: Agent, code: int, words: str) -> None:
    out, status, _ = call(env("ADD"), CONF, agent=agent)
    doc = error_of(out)
    assert (status, doc["code"]) == (1, code)
    assert words in doc["msg"]


@pytest.mark.parametrize(
    ("enrolled", "agent"),
    [
        (enrolled_is(False), Agent()),
        (enrolled_is(None), Agent()),
        (enrolled_is(False), Agent(error=AgentUnreachable("/run/x.sock", "no such socket"))),
        (enrolled_is(False), Agent(EventReply(ok=False, error="whatever"))),
    ],
    ids=[
        "a pod outside the mesh passes through",
        "a pod not in the store yet passes through",
        "a pod outside the mesh passes through even with no agent running",
        "a pod outside the mesh passes through whatever the agent answers",
    ],
)
def test_add_never_breaks_a_pod_that_is_not_enrolled(enrolled, agent: Agent) -> None:
    out, status, agent = call(env("ADD"), CONF, enrolled=enrolled, agent=agent)
    assert (status, json.loads(out)) == (0, PREV)
    ((event, timeout),) = agent.events
    assert event.wait is False and timeout <= 1.0  # best effort, so the agent learns the netns


def test_add_for_a_non_kubernetes_container_passes_through_untouched() -> None:
    out, status, agent = call(env("ADD", CNI_ARGS="IgnoreUnknown=1"), CONF, enrolled=enrolled_is(True))
    assert (status, json.loads(out), agent.events) == (0, PREV, [])


def test_add_without_prev_result_returns_a_minimal_result() -> None:
    out, status, _ = call(env("ADD"), {"cniVersion": "0.4.0", "name": "n", "type": "ambient-cni"})
    assert (status, json.loads(out)) == (0, {"cniVersion": "0.4.0"})


def test_an_unreadable_store_fails_the_add_rather_than_start_the_pod_uncaptured() -> None:
    out, status, agent = call(
        env("ADD"),
        CONF,
        enrolled=enrolled_is(None, error=CniStoreUnavailable("/x/store.db", "no store file there")),
    )
    doc = error_of(out)
    assert (status, doc["code"], agent.events) == (1, 11, [])
    assert "/x/store.db" in doc["msg"]


# -- ADD with enrollment: agent (Kubernetes: the node agent decides) ------------------------------------

AGENT_CONF = {**CONF, "enrollment": "agent"}


def never_read_the_store(config: PluginConfig, namespace: str, name: str) -> bool | None:
    raise AssertionError("the plugin read the store in agent mode")


@pytest.mark.parametrize(
    "reply",
    [EventReply(ok=True, captured=True, enrolled=True), EventReply(ok=True, enrolled=False), EventReply(ok=True)],
    ids=[
        "an enrolled pod the agent captured passes prevResult through",
        "a pod the agent found not enrolled passes prevResult through",
        "an ok reply without the enrolled field (an older agent) passes too",
    ],
)
def test_in_agent_mode_the_plugin_sends_no_decision_and_waits_for_the_agents(reply: EventReply) -> None:
    out, status, agent = call(env("ADD"), AGENT_CONF, enrolled=never_read_the_store, agent=Agent(reply))
    assert (status, json.loads(out)) == (0, PREV)
    ((event, timeout),) = agent.events
    assert (event.agent_decides, event.wait, event.pod_uid, timeout) == (True, True, "abc", 30.0)


@pytest.mark.parametrize(
    ("agent", "code", "words"),
    [
        (Agent(error=AgentUnreachable("/run/x.sock", "no such socket")), 11, "not reachable"),
        (Agent(EventReply(ok=False, error="cannot read it from the Kubernetes API: 403 Forbidden")), 11,
         "could not decide whether pod demo/web is enrolled"),
        (Agent(EventReply(ok=False, error="ztunnel refused it: boom", enrolled=True)), 100, "boom"),
    ],
    ids=[
        "an unreachable agent fails the ADD (fail closed, whatever the pod is)",
        "an agent that could not decide fails the ADD with try-again-later and its reason",
        "an enrolled pod the agent could not capture fails the ADD with the capture's reason",
    ],
)
def test_in_agent_mode_the_add_fails_closed_when_the_agent_does_not_say_ok(
    agent: Agent, code: int, words: str
) -> None:
    out, status, _ = call(env("ADD"), AGENT_CONF, enrolled=never_read_the_store, agent=agent)
    doc = error_of(out)
    assert (status, doc["code"]) == (1, code)
    assert words in doc["msg"]


def test_in_agent_mode_a_non_kubernetes_container_still_passes_without_the_agent() -> None:
    out, status, agent = call(env("ADD", CNI_ARGS="IgnoreUnknown=1"), AGENT_CONF, enrolled=never_read_the_store)
    assert (status, json.loads(out), agent.events) == (0, PREV, [])


def test_an_unknown_enrollment_mode_is_refused_as_invalid_config() -> None:
    out, status, agent = call(env("ADD"), {**CONF, "enrollment": "cluster"}, enrolled=never_read_the_store)
    doc = error_of(out)
    assert (status, doc["code"], agent.events) == (1, 7, [])
    assert "enrollment" in doc["msg"]


# -- DEL and CHECK ---------------------------------------------------------------------------------------


def test_del_tells_the_agent_and_succeeds_even_when_it_cannot() -> None:
    agent = Agent(error=AgentUnreachable("/run/x.sock", "refused"))
    out, status, agent = call(env("DEL", CNI_NETNS=""), CONF, agent=agent)
    assert (out, status) == (b"", 0)
    ((event, _),) = agent.events
    assert (event.cmd, event.netns, event.container_id) == ("del", "", "c0ffee")


def test_check_validates_the_call_and_prints_nothing() -> None:
    assert call(env("CHECK"), CONF)[:2] == (b"", 0)
    assert call(env("CHECK", CNI_NETNS="<unset>"), CONF)[1] == 1


# -- enrollment from the real store ----------------------------------------------------------------------


def _store(tmp_path: Path, ns_labels: dict[str, str], pod_labels: dict[str, str] | None) -> PluginConfig:
    with SqliteStore(tmp_path / "store.db") as store:
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": ns_labels}}]
        if pod_labels is not None:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "web", "namespace": "demo", "labels": pod_labels},
                    "spec": {"nodeName": "node-1"},
                }
            )
        store.apply([build_resource(d) for d in docs])
    return PluginConfig(cni_version="1.0.0", state_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("ns_labels", "pod_labels", "expected"),
    [
        ({"istio.io/dataplane-mode": "ambient"}, {}, True),
        ({"istio.io/dataplane-mode": "ambient"}, {"istio.io/dataplane-mode": "none"}, False),
        ({}, {}, False),
        ({}, None, None),
    ],
    ids=[
        "a pod in an ambient namespace is enrolled",
        "a pod that opts out is not",
        "a pod in a plain namespace is not",
        "a pod the store does not know is unknown",
    ],
)
def test_store_enrollment(tmp_path: Path, ns_labels, pod_labels, expected) -> None:
    assert store_enrollment(_store(tmp_path, ns_labels, pod_labels), "demo", "web") is expected


def test_store_enrollment_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(CniStoreUnavailable, match="no store file"):
        store_enrollment(PluginConfig(cni_version="1.0.0", state_dir=str(tmp_path)), "demo", "web")
    assert list(tmp_path.iterdir()) == []


# -- the process -----------------------------------------------------------------------------------------


def test_the_plugin_process_reports_garbage_stdin_as_cni_error_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ztunnel.cni.plugin"],
        input=b"\x00garbage",
        env={**env("ADD"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert error_of(done.stdout)["code"] == 6
    # The failure is logged as one JSON line on stderr, as the mesh's JSON logs are (without structlog).
    (line,) = done.stderr.splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"], logged["code"]) == ("CNI call failed", "warning", 6)
    assert logged["timestamp"].endswith("Z") and "cannot decode" in logged["error"]


def test_the_example_conflist_configures_this_plugin() -> None:
    conflist = json.loads((REPO / "daemonset" / "cni-conflist.json").read_text())
    (entry,) = [p for p in conflist["plugins"] if p["type"] == "ambient-cni"]
    entry = {**entry, "cniVersion": conflist["cniVersion"], "name": conflist["name"], "prevResult": PREV}
    out, status, agent = call(env("ADD"), entry, enrolled=enrolled_is(False))
    assert (status, json.loads(out)) == (0, PREV)
    ((event, _),) = agent.events
    assert event.pod_name == "web"
    assert conflist["plugins"][-1]["type"] == "ambient-cni"  # chained last, after the pod network
