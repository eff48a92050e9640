"""Admin documents: config_dump in ztunnel's shapes (what istioctl and ambientctl read), /logging."""

from __future__ import annotations

import base64
import json

from meshcore.aio.httpserver import Request
from meshcore.aio.secrets import CertificateStatus, CertState
from meshcore.identity import SpiffeId
from meshcore.model import Action, GatewayAddress, IpNet, Match, NetworkAddress, Port, StringMatch
from meshcore.state import ProxyState
from meshcore.testing import builders as b
from meshcore.testing.fake_ca import FakeCa
from ztunnel.admin import LogLevel, admin_routes, config_dump, policy_json, service_json, workload_json
from ztunnel.config import ZtunnelConfig

SERVER = b.workload(
    "server", "10.0.0.2", services={"default/echo.default.svc.cluster.local": (Port(80, 8080),)},
    waypoint=GatewayAddress(address=NetworkAddress("10.0.0.50")),
)
ECHO = b.service("echo", "10.96.0.10", {80: 8080})
POLICY = b.policy(
    "deny", Match(principals=(StringMatch("prefix", "cluster.local/"),), source_ips=(IpNet("10.1.0.0", 16),)),
    action=Action.DENY,
)


def test_a_workload_has_istioctls_fields():
    w = workload_json(SERVER)
    assert {k: w[k] for k in ("uid", "workloadIps", "protocol", "name", "namespace", "serviceAccount", "node", "status")} == {
        "uid": "Kubernetes//Pod/default/server", "workloadIps": ["10.0.0.2"], "protocol": "HBONE", "name": "server",
        "namespace": "default", "serviceAccount": "server", "node": "node-1", "status": "Healthy",
    }
    assert w["waypoint"] == {"destination": "/10.0.0.50", "hboneMtlsPort": 15008}
    assert w["services"] == {"default/echo.default.svc.cluster.local": {"80": 8080}}


def test_a_service_lists_its_vips_ports_and_endpoints():
    s = service_json(ECHO, ProxyState.of(SERVER, ECHO))
    assert (s["hostname"], s["vips"], s["ports"], s["ipFamilies"]) == (
        "echo.default.svc.cluster.local", ["/10.96.0.10"], {"80": 8080}, "IPv4"
    )
    assert s["endpoints"] == {SERVER.uid: {"workloadUid": SERVER.uid, "service": "", "port": {"80": 8080}, "status": "Healthy"}}


def test_a_policy_nests_rules_clauses_and_matches():
    p = policy_json(POLICY)
    assert (p["name"], p["namespace"], p["scope"], p["action"]) == ("deny", "default", "Namespace", "Deny")
    assert p["rules"] == [[[{"principals": [{"Prefix": "cluster.local/"}], "sourceIps": ["10.1.0.0/16"]}]]]


def test_config_dump_has_ztunnels_top_level_keys_and_only_public_certificate_material():
    bundle = FakeCa().issue(SERVER.identity)
    status = CertificateStatus(
        identity=SERVER.identity, state=CertState.AVAILABLE, serial=bundle.serial, not_before=bundle.not_before,
        not_after=bundle.not_after, refresh_at=bundle.refresh_at, error=None, next_attempt_at=None, failures=0,
        chain_pem=bundle.chain_pem, roots_pem=bundle.roots_pem,
    )
    dump = config_dump(
        ProxyState.of(SERVER, ECHO, POLICY), [status],
        local_workloads={SERVER.uid: (SERVER, "Up")}, connections=[],
        config=ZtunnelConfig(node_name="node-1"),
    )
    text = json.dumps(dump)
    assert {"workloads", "services", "policies", "certificates", "workloadState", "config"} <= dump.keys()
    [cert] = dump["certificates"]
    assert (cert["identity"], cert["state"]) == (str(SERVER.identity), "Available")
    assert cert["certChain"][0]["serialNumber"] == str(bundle.serial)
    assert base64.b64decode(cert["certChain"][0]["pem"]).decode() == bundle.chain_pem[0]
    assert len(cert["rootCerts"]) == 1 and "PRIVATE KEY" not in text
    assert dump["workloadState"][SERVER.uid] == {
        "state": "Up", "connections": {"inbound": [], "outbound": []},
        "info": {"name": "server", "namespace": "default", "trustDomain": "cluster.local", "serviceAccount": "server"},
    }
    assert dump["config"]["nodeName"] == "node-1" and dump["config"]["adminAddr"] == "127.0.0.1:15000"


def test_an_unavailable_certificate_says_why():
    status = CertificateStatus(
        identity=SpiffeId("cluster.local", "default", "x"), state=CertState.UNAVAILABLE, serial=None,
        not_before=None, not_after=None, refresh_at=None, error="CA unreachable", next_attempt_at=None,
        failures=3, chain_pem=(), roots_pem=None,
    )
    dump = config_dump(ProxyState.empty(), [status], local_workloads={}, connections=[])
    assert dump["certificates"][0]["state"] == "Unavailable: CA unreachable"
    assert dump["certificates"][0]["certChain"] == []


async def test_logging_shows_changes_and_resets_the_level():
    applied = []
    level = LogLevel("info", applied.append)
    routes = admin_routes(dump=dict, connections=list, log_level=level)
    handler = routes["/logging"]

    def req(method, query):
        return Request(method, "/logging", query, {}, b"")

    assert json.loads((await handler(req("GET", {}))).body) == {"level": "info"}
    assert json.loads((await handler(req("POST", {"level": ["debug"]}))).body) == {"level": "debug"}
    bad = await handler(req("POST", {"level": ["loud"]}))
    assert bad.status == 400 and b"debug" in bad.body
    assert json.loads((await handler(req("POST", {"reset": [""]}))).body) == {"level": "info"}
    assert applied == ["debug", "info"]


async def test_quitquitquit_needs_post_and_calls_the_shutdown_hook():
    calls = []
    routes = admin_routes(dump=dict, connections=list, log_level=LogLevel("info", lambda _: None), quit=lambda: calls.append(1))
    assert (await routes["/quitquitquit"](Request("GET", "/quitquitquit", {}, {}, b""))).status == 405
    assert (await routes["/quitquitquit"](Request("POST", "/quitquitquit", {}, {}, b""))).status == 200
    assert calls == [1]
