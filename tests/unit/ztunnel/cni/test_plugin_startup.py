"""The CNI plugin runs as a fresh process for every pod's ADD and DEL, so what it imports is paid per pod:
it must load neither the node agent's kernel side (``ztunnel.redirect``, pyroute2) nor the heavy shared
machinery (structlog and rich, asyncio, YAML, the store's schema and writer, ztunnel's settings), on any
path of a call: the import itself, an ADD that reads the store, one whose agent is unreachable (the
error paths log), a DEL, and an ADD in ``enrollment: agent`` mode (Kubernetes: no store read at all, the
agent decides; here no agent, so the ADD fails closed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshcore.store import SqliteStore, build_resource

# Top-level packages and our own modules that a plugin call must never load.
HEAVY_PACKAGES = ("structlog", "rich", "asyncio", "yaml", "pyroute2", "grpc")
HEAVY_MODULES = (
    "ztunnel.redirect",
    "ztunnel.config",
    "ztunnel.cni.config",
    "ztunnel.cni.events",
    "ztunnel.cni.agent",
    "meshcore.logs",
    "meshcore.config",
    "meshcore.store.sqlite",
    "meshcore.store.schema",
    "meshcore.store.load",
    "meshcore.store.kubernetes",
)

# argv: the heavy lists (JSON), the state directory, then the commands to run in this one process
# (COMMAND or COMMAND:ENROLLMENT, e.g. ADD:agent).
PROBE = """
import json, sys
packages, modules = json.loads(sys.argv[1])
from ztunnel.cni.plugin import run
env = {
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web", "CNI_PATH": "/opt/cni/bin",
}
results = []
for given in sys.argv[3:]:
    command, _, enrollment = given.partition(":")
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "ambient-cni", "state_dir": sys.argv[2],
            "cni_event_address": sys.argv[2] + "/no-agent.sock", "event_timeout": 1,
            "enrollment": enrollment or "store"}
    out, status = run({**env, "CNI_COMMAND": command}, json.dumps(conf).encode())
    results.append([given, status, json.loads(out)["code"] if status else 0])
heavy = [m for m in sys.modules if m.split(".")[0] in packages or m in modules or m.startswith(tuple(x + "." for x in modules))]
print(json.dumps({"results": results, "heavy": sorted(heavy)}))
"""


def _store(state_dir: Path, namespace_labels: dict[str, str]) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": namespace_labels}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo"}, "spec": {}},
    ]
    with SqliteStore(state_dir / "store.db") as store:
        store.apply([build_resource(d) for d in docs])


def _probe(state_dir: Path, *commands: str, also: tuple[str, ...] = ()) -> dict[str, list]:
    heavy = [[*HEAVY_PACKAGES, *also], [*HEAVY_MODULES, *also]]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(heavy), str(state_dir), *commands],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_plugin_module_loads_nothing_heavy(tmp_path: Path) -> None:
    assert _probe(tmp_path) == {"results": [], "heavy": []}


@pytest.mark.parametrize(
    ("namespace_labels", "expected"),
    [
        ({}, [["ADD", 0, 0], ["DEL", 0, 0]]),
        ({"istio.io/dataplane-mode": "ambient"}, [["ADD", 1, 11], ["DEL", 0, 0]]),
    ],
    ids=[
        "a pass-through ADD and a DEL, both finding no agent, load nothing heavy",
        "an enrolled pod's ADD failing closed on an unreachable agent loads nothing heavy either",
    ],
)
def test_a_plugin_call_loads_nothing_heavy_on_any_path(
    tmp_path: Path, namespace_labels: dict[str, str], expected: list
) -> None:
    _store(tmp_path, namespace_labels)
    seen = _probe(tmp_path, "ADD", "DEL")
    assert seen["results"] == expected  # the paths above really ran, error logging included
    assert seen["heavy"] == []


def test_an_unreadable_store_still_fails_the_add_closed_without_loading_the_store_writer(
    tmp_path: Path,
) -> None:
    (tmp_path / "store.db").write_bytes(b"not a database" * 100)
    seen = _probe(tmp_path, "ADD")
    assert seen["results"] == [["ADD", 1, 11]]
    assert seen["heavy"] == []


def test_an_add_the_agent_decides_reads_no_store_and_loads_nothing_heavy(tmp_path: Path) -> None:
    # No store file at all (a Kubernetes node): agent mode never looks for one; no agent: fail closed.
    seen = _probe(tmp_path, "ADD:agent", "DEL:agent", also=("sqlite3", "meshcore.store.sqlite_read", "ztunnel.cni.enroll"))
    assert seen["results"] == [["ADD:agent", 1, 11], ["DEL:agent", 0, 0]]
    assert seen["heavy"] == []
    assert not (tmp_path / "store.db").exists()


def test_the_agent_settings_still_carry_the_redirect_options() -> None:
    from ztunnel.cni.config import parse_config

    config = parse_config({"NODE_NAME": "node-1", "AMBIENT_DNS_CAPTURE": "true"}, {})
    assert config.redirect.dns_capture is True and config.redirect.ipv6 is False
