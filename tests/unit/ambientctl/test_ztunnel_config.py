"""ambientctl ztunnel-config: pure dump -> row tables, and the CLI against a tiny local admin server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from ambientctl.cli import app
from ambientctl.commands import ztunnel_config as zc
from meshcore.model import GatewayAddress, NamespacedHostname, NetworkAddress
from meshcore.state import ProxyState
from meshcore.testing import builders as b
from ztunnel.admin import service_json, workload_json

NOW = datetime(2026, 6, 1, tzinfo=UTC)

# Shaped like ztunnel's /config_dump (istioctl's configdump/api.go): lists, "network/ip" VIPs, enum words.
DUMP: dict[str, Any] = {
    "workloads": [
        {
            "uid": "cluster1//v1/pod/shop/web-0",
            "workloadIps": ["127.0.0.11"],
            "protocol": "HBONE",
            "name": "web-0",
            "namespace": "shop",
            "serviceAccount": "web",
            "node": "node-1",
            "status": "Healthy",
        },
        {
            "uid": "cluster1//v1/pod/shop/db-0",
            "workloadIps": ["127.0.0.12"],
            "waypoint": {"destination": "/127.0.0.50"},
            "protocol": "HBONE",
            "name": "db-0",
            "namespace": "shop",
            "serviceAccount": "db",
            "node": "node-2",
            "status": "Healthy",
        },
        {
            "uid": "cluster1//v1/pod/shop/db-1",
            "workloadIps": ["127.0.0.13"],
            "protocol": "TCP",
            "name": "db-1",
            "namespace": "shop",
            "serviceAccount": "db",
            "node": "node-2",
            "status": "Unhealthy",
        },
        {
            "uid": "cluster1//v1/pod/legacy/app-0",
            "workloadIps": [],
            "protocol": "NONE",
            "name": "app-0",
            "namespace": "legacy",
            "node": "node-1",
            "status": "Healthy",
        },
    ],
    "services": [
        {
            "name": "db",
            "namespace": "shop",
            "hostname": "db.shop.svc.cluster.local",
            "vips": ["/10.96.0.20"],
            "ports": {"5432": 5432},
            "waypoint": {"destination": "/10.96.0.50"},
            "endpoints": {
                "cluster1//v1/pod/shop/db-0": {
                    "workloadUid": "cluster1//v1/pod/shop/db-0",
                    "port": {"5432": 5432},
                },
                "cluster1//v1/pod/shop/db-1": {
                    "workloadUid": "cluster1//v1/pod/shop/db-1",
                    "port": {"5432": 5432},
                },
                "cluster1//v1/pod/shop/db-9": {
                    "workloadUid": "cluster1//v1/pod/shop/db-9",
                    "port": {"5432": 5432},
                },
            },
        },
        {
            "name": "waypoint",
            "namespace": "shop",
            "hostname": "waypoint.shop.svc.cluster.local",
            "vips": ["/10.96.0.50", "/fd00::50"],
            "ports": {"15008": 15008},
            "endpoints": {},
        },
        {
            "name": "web",
            "namespace": "shop",
            "hostname": "web.shop.svc.cluster.local",
            "vips": ["/10.96.0.10"],
            "ports": {"80": 8080},
            "endpoints": {
                "cluster1//v1/pod/shop/web-0": {
                    "workloadUid": "cluster1//v1/pod/shop/web-0",
                    "port": {"80": 8080},
                }
            },
        },
    ],
    "policies": [
        {"name": "deny-legacy", "namespace": "shop", "scope": "Namespace", "action": "Deny", "rules": []},
        {
            "name": "allow-web",
            "namespace": "shop",
            "scope": "WorkloadSelector",
            "action": "Allow",
            "rules": [],
        },
        {"name": "mesh-wide", "namespace": "istio-system", "scope": "Global", "action": "Allow", "rules": []},
    ],
    "certificates": [
        {
            "identity": "spiffe://cluster.local/ns/shop/sa/web",
            "state": "Available",
            "certChain": [
                {
                    "pem": "",
                    "serialNumber": "255",
                    "validFrom": "2026-05-31T12:00:00Z",
                    "expirationTime": "2026-06-01T12:00:00Z",
                }
            ],
            "rootCerts": [
                {
                    "pem": "",
                    "serialNumber": "4096",
                    "validFrom": "2025-01-01T00:00:00Z",
                    "expirationTime": "2035-01-01T00:00:00Z",
                }
            ],
        },
        {
            "identity": "spiffe://cluster.local/ns/shop/sa/db",
            "state": "Initializing",
            "certChain": [],
            "rootCerts": [],
        },
    ],
}

# Shaped like ztunnel's /connections (ztunnel/proxy/connections.py TrackedConnection.to_json).
CONNECTIONS = [
    {
        "workload": "web-0.shop",
        "direction": "outbound",
        "local": "127.0.42.1:15080",
        "remote": "127.0.0.11:40000",
        "target": "127.0.0.12:15008",
        "originalDst": "10.96.0.20:5432",
        "protocol": "HBONE",
        "identity": None,
        "bytesReceived": 10,
        "bytesSent": 20,
    },
    {
        "workload": "db-0.shop",
        "direction": "inbound",
        "local": "127.0.0.12:15008",
        "remote": "127.0.0.11:50000",
        "target": "127.0.0.12:5432",
        "originalDst": "db.shop.svc.cluster.local",
        "protocol": "HBONE",
        "identity": "spiffe://cluster.local/ns/shop/sa/web",
    },
]
RECORDS = [zc.connection_from_admin(c) for c in CONNECTIONS]


# --- pure tables ----------------------------------------------------------------------------------


def test_workload_rows_are_sorted_by_namespace_then_name_with_istio_columns() -> None:
    headers, rows = zc.workload_table(zc.filter_workloads(DUMP), DUMP["services"])
    assert headers == ["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    assert rows == [
        ["legacy", "app-0", "None", "node-1", "None", "TCP"],
        ["shop", "db-0", "127.0.0.12", "node-2", "127.0.0.50", "HBONE"],
        ["shop", "db-1", "127.0.0.13", "node-2", "None", "TCP"],
        ["shop", "web-0", "127.0.0.11", "node-1", "None", "HBONE"],
    ]


@pytest.mark.parametrize(
    ("waypoint", "expected"),
    [
        (None, "None"),
        ({"destination": "/10.96.0.50"}, "waypoint"),
        ({"destination": "net1/fd00::50"}, "waypoint"),
        ({"destination": "waypoint.shop.svc.cluster.local"}, "waypoint"),
        ({"address": {"address": "/10.96.0.50"}}, "waypoint"),
        ({"destination": "shop/waypoint.shop.svc.cluster.local", "hboneMtlsPort": 15008}, "waypoint"),
        ({"hostname": {"hostname": {"namespace": "shop", "hostname": "waypoint.shop.svc.cluster.local"}}}, "waypoint"),
        ({"destination": "other/waypoint.shop.svc.cluster.local"}, "waypoint.shop.svc.cluster.local"),
        ({"destination": "/10.1.2.3"}, "10.1.2.3"),
        ({"destination": "shop/gone.shop.svc.cluster.local"}, "gone.shop.svc.cluster.local"),
        ({"destination": "", "hboneMtlsPort": 15008}, "NA"),
    ],
    ids=[
        "no waypoint prints None",
        "a waypoint VIP prints the service that owns it",
        "an IPv6 VIP with a network prefix is found too",
        "a waypoint given by hostname prints the service name",
        "a nested address object is understood",
        "ztunnel's namespace/hostname destination prints the service name",
        "a nested namespaced hostname object is understood",
        "a hostname of another namespace is not taken for the service",
        "an address no service owns prints the bare address",
        "a hostname no service has prints the bare hostname",
        "a waypoint with an empty destination prints NA",
    ],
)
def test_waypoint_column_names_the_waypoint_service(waypoint: Any, expected: str) -> None:
    workload = {"name": "x", "namespace": "shop", "workloadIps": ["1.1.1.1"], "waypoint": waypoint}
    _, rows = zc.workload_table([workload], DUMP["services"])
    assert rows[0][4] == expected


@pytest.mark.parametrize(
    "gateway",
    [
        GatewayAddress(address=NetworkAddress("10.96.0.50")),
        GatewayAddress(hostname=NamespacedHostname("shop", "waypoint.shop.svc.cluster.local")),
    ],
    ids=["a waypoint bound by address", "a waypoint bound by hostname"],
)
def test_waypoint_column_reads_what_ztunnels_config_dump_writes(gateway: GatewayAddress) -> None:
    # The dump made by ztunnel's own admin code (not a hand-written copy of its shape).
    waypoint_svc = b.service("waypoint", "10.96.0.50", {15008: 15008}, namespace="shop")
    db_svc = b.service("db", "10.96.0.20", {5432: 5432}, namespace="shop", waypoint=gateway)
    db = b.workload("db-0", "10.0.0.12", namespace="shop", waypoint=gateway)
    web = b.workload("web-0", "10.0.0.11", namespace="shop")
    state = ProxyState.of(db, web, waypoint_svc, db_svc)
    dump = {
        "workloads": [workload_json(w) for w in (db, web)],
        "services": [service_json(s, state) for s in (db_svc, waypoint_svc)],
    }
    _, workload_rows = zc.workload_table(zc.filter_workloads(dump), dump["services"])
    assert [(r[1], r[4]) for r in workload_rows] == [("db-0", "waypoint"), ("web-0", "None")]
    _, service_rows = zc.service_table(zc.filter_services(dump), dump)
    assert [(r[1], r[3]) for r in service_rows] == [("db", "waypoint"), ("waypoint", "None")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("HBONE", "HBONE"), (1, "HBONE"), ("NONE", "TCP"), (0, "TCP"), ("TCP", "TCP"), (None, "NA"), (7, "7")],
    ids=[
        "HBONE stays HBONE",
        "enum number 1 is HBONE",
        "NONE is shown as TCP like istioctl",
        "enum number 0 is TCP",
        "TCP stays TCP",
        "a missing protocol prints NA",
        "an unknown number is printed as is",
    ],
)
def test_protocol_column_accepts_words_and_enum_numbers(value: Any, expected: str) -> None:
    _, rows = zc.workload_table([{"protocol": value}], [])
    assert rows[0][5] == expected


def test_workload_filters_by_namespace_address_and_node() -> None:
    assert [w["name"] for w in zc.filter_workloads(DUMP, namespace="SHOP")] == ["db-0", "db-1", "web-0"]
    assert [w["name"] for w in zc.filter_workloads(DUMP, address="127.0.0.13")] == ["db-1"]
    assert [w["name"] for w in zc.filter_workloads(DUMP, node="node-1")] == ["app-0", "web-0"]


def test_service_rows_count_healthy_known_endpoints_over_all() -> None:
    headers, rows = zc.service_table(zc.filter_services(DUMP), DUMP)
    assert headers == ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]
    assert rows == [
        ["shop", "db", "10.96.0.20", "waypoint", "1/3"],
        ["shop", "waypoint", "10.96.0.50,fd00::50", "None", "0/0"],
        ["shop", "web", "10.96.0.10", "None", "1/1"],
    ]


@pytest.mark.parametrize(
    ("action", "scope", "expected"),
    [
        ("Allow", "Global", ["Allow", "Global"]),
        ("DENY", "WORKLOAD_SELECTOR", ["Deny", "WorkloadSelector"]),
        (1, 1, ["Deny", "Namespace"]),
        (0, 2, ["Allow", "WorkloadSelector"]),
        (None, None, ["NA", "NA"]),
    ],
    ids=[
        "Istio's words are kept",
        "proto enum names become Istio's words",
        "enum numbers deny=1 namespace=1 are decoded",
        "enum numbers allow=0 workload-selector=2 are decoded",
        "missing values print NA",
    ],
)
def test_policy_action_and_scope(action: Any, scope: Any, expected: list[str]) -> None:
    _, rows = zc.policy_table([{"name": "p", "namespace": "n", "action": action, "scope": scope}])
    assert rows[0][2:] == expected


def test_policies_sorted_and_filtered_by_namespace() -> None:
    _, rows = zc.policy_table(zc.filter_policies(DUMP))
    assert [r[:2] for r in rows] == [
        ["istio-system", "mesh-wide"],
        ["shop", "allow-web"],
        ["shop", "deny-legacy"],
    ]
    assert [p["name"] for p in zc.filter_policies(DUMP, namespace="istio-system")] == ["mesh-wide"]


def test_certificate_rows_show_leaf_and_root_with_hex_serials_and_validity() -> None:
    headers, rows = zc.certificate_table(DUMP["certificates"], now=NOW)
    assert headers[0] == "CERTIFICATE NAME" and "SERIAL NUMBER" in headers
    assert rows == [
        [
            "spiffe://cluster.local/ns/shop/sa/web",
            "Leaf",
            "Available",
            "true",
            "ff",
            "2026-06-01T12:00:00Z",
            "2026-05-31T12:00:00Z",
        ],
        [
            "spiffe://cluster.local/ns/shop/sa/web",
            "Root",
            "Available",
            "true",
            "1000",
            "2035-01-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
        ],
        ["spiffe://cluster.local/ns/shop/sa/db", "NA", "Initializing", "false", "NA", "NA", "NA"],
    ]


@pytest.mark.parametrize(
    ("cert", "state", "expected"),
    [
        (
            {"validFrom": "2026-01-01T00:00:00Z", "expirationTime": "2026-02-01T00:00:00Z"},
            "Available",
            "false",
        ),
        (
            {"validFrom": "2026-07-01T00:00:00+00:00", "expirationTime": "2026-08-01T00:00:00+00:00"},
            "Available",
            "false",
        ),
        ({"validFrom": "garbage", "expirationTime": "2027-01-01T00:00:00Z"}, "Available", "false"),
        ({"validFrom": "2026-05-01T00:00:00", "expirationTime": "2026-07-01T00:00:00"}, "Available", "true"),
    ],
    ids=[
        "an expired certificate is not valid",
        "a not-yet-valid certificate is not valid",
        "an unparsable time is not valid",
        "times without a zone are read as UTC",
    ],
)
def test_valid_cert_column(cert: dict[str, str], state: str, expected: str) -> None:
    _, rows = zc.certificate_table([{"identity": "i", "state": state, "certChain": [cert]}], now=NOW)
    assert rows[0][3] == expected


def test_unavailable_state_drops_the_error_text() -> None:
    entry = {"identity": "i", "state": "Unavailable: CA unreachable", "certChain": []}
    _, rows = zc.certificate_table([entry], now=NOW)
    assert rows[0][2] == "Unavailable"


@pytest.mark.parametrize(
    ("serial", "expected"),
    [(255, "ff"), ("255", "ff"), ("0xABCD", "abcd"), ("ab:cd", "abcd"), (None, "NA")],
    ids=[
        "an integer is printed in hex",
        "a decimal string is printed in hex",
        "a 0x hex string is kept in lower case",
        "a colon-separated hex string loses its colons",
        "a missing serial prints NA",
    ],
)
def test_serial_numbers_are_hex(serial: Any, expected: str) -> None:
    assert zc._serial_hex(serial) == expected


def test_admin_connections_map_to_istio_local_remote_target() -> None:
    assert RECORDS[0] == {
        "workload": "web-0.shop",
        "direction": "outbound",
        "local": "127.0.0.11:40000",
        "remote": "127.0.0.12:15008",
        "target": "10.96.0.20:5432",
        "protocol": "HBONE",
    }
    assert (RECORDS[1]["local"], RECORDS[1]["remote"], RECORDS[1]["target"]) == (
        "127.0.0.12:5432",
        "127.0.0.11:50000",
        "db.shop.svc.cluster.local",
    )


def test_connections_show_names_unless_raw() -> None:
    _, named = zc.connection_table(zc.filter_connections(RECORDS), DUMP, raw=False)
    assert named == [
        ["db-0.shop", "Inbound", "db-0.shop:5432", "web-0.shop:50000", "db.shop.svc.cluster.local", "HBONE"],
        [
            "web-0.shop",
            "Outbound",
            "web-0.shop:40000",
            "db-0.shop:15008",
            "db.shop.svc.cluster.local:5432",
            "HBONE",
        ],
    ]
    _, raw = zc.connection_table(zc.filter_connections(RECORDS), DUMP, raw=True)
    assert raw[1][2:5] == ["127.0.0.11:40000", "127.0.0.12:15008", "10.96.0.20:5432"]


def test_connection_filters_by_direction_and_namespace() -> None:
    assert [c["workload"] for c in zc.filter_connections(RECORDS, direction="inbound")] == ["db-0.shop"]
    assert zc.filter_connections(RECORDS, namespace="other") == []


def test_connections_can_come_from_istio_workload_state() -> None:
    dump = {
        "workloadState": {
            "uid-1": {
                "state": "Up",
                "info": {"name": "web-0", "namespace": "shop"},
                "connections": {
                    "inbound": [{"src": "1.1.1.1:5", "originalDst": "2.2.2.2:80", "actualDst": "2.2.2.2:80"}],
                    "outbound": [
                        {"src": "2.2.2.2:6", "originalDst": "3.3.3.3:80", "actualDst": "4.4.4.4:15008"}
                    ],
                },
            }
        }
    }
    conns = zc.connections_from_workload_state(dump)
    assert [(c["direction"], c["local"], c["remote"], c["target"]) for c in conns] == [
        ("inbound", "2.2.2.2:80", "1.1.1.1:5", "2.2.2.2:80"),
        ("outbound", "2.2.2.2:6", "4.4.4.4:15008", "3.3.3.3:80"),
    ]


def test_sections_given_as_maps_by_older_ztunnels_are_read() -> None:
    dump = {"workloads": {"/127.0.0.11": DUMP["workloads"][0]}}
    assert [w["name"] for w in zc.filter_workloads(dump)] == ["web-0"]


def test_a_dump_with_missing_or_odd_sections_gives_empty_tables() -> None:
    dump = {"workloads": "nonsense", "services": [1, "x"], "policies": None}
    assert zc.workload_table(zc.filter_workloads(dump), [])[1] == []
    assert zc.service_table(zc.filter_services(dump), dump)[1] == []
    assert zc.policy_table(zc.filter_policies(dump))[1] == []


# --- CLI against a local admin server -------------------------------------------------------------


class _Admin(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, body = self.routes.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(routes: dict[str, tuple[int, bytes]]) -> Iterator[str]:
    handler = type("Handler", (_Admin,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def admin() -> Iterator[str]:
    yield from _serve(
        {
            "/config_dump": (200, json.dumps(DUMP).encode()),
            "/connections": (200, json.dumps(CONNECTIONS).encode()),
        }
    )


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def fails(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_workloads_prints_istio_columns(admin: str) -> None:
    lines = ok("ztunnel-config", "workloads", "--admin", admin).splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    assert lines[-1].split() == ["shop", "web-0", "127.0.0.11", "node-1", "None", "HBONE"]
    assert len(lines) == 5


@pytest.mark.parametrize(
    "args",
    [("zc", "w"), ("zc", "workload"), ("ztunnel-config", "workloads")],
    ids=["zc w is an alias", "singular workload is an alias", "the long form works"],
)
def test_cli_aliases_reach_the_same_command(admin: str, args: tuple[str, ...]) -> None:
    assert "web-0" in ok(*args, "--admin", admin)


def test_cli_services_policies_certificates(admin: str) -> None:
    svc = ok("zc", "svc", "--admin", admin, "--service-namespace", "shop").splitlines()
    assert svc[1].split() == ["shop", "db", "10.96.0.20", "waypoint", "1/3"]
    pol = ok("zc", "pol", "--admin", admin).splitlines()
    assert pol[0].split() == ["NAMESPACE", "POLICY", "NAME", "ACTION", "SCOPE"]
    assert pol[3].split() == ["shop", "deny-legacy", "Deny", "Namespace"]
    certs = ok("zc", "certs", "--admin", admin).splitlines()
    assert certs[0].split()[:3] == ["CERTIFICATE", "NAME", "TYPE"]
    assert certs[3].split()[:3] == ["spiffe://cluster.local/ns/shop/sa/db", "NA", "Initializing"]


def test_cli_connections_prefer_the_dumps_workload_state() -> None:
    state = {
        "u": {
            "info": {"name": "web-0", "namespace": "shop"},
            "connections": {
                "inbound": [],
                "outbound": [
                    {"src": "127.0.0.11:7", "originalDst": "10.96.0.10:80", "actualDst": "127.0.0.9:15008"}
                ],
            },
        }
    }
    routes = {
        "/config_dump": (200, json.dumps({**DUMP, "workloadState": state}).encode()),
        "/connections": (500, b"must not be asked"),
    }
    for base in _serve(routes):
        lines = ok("zc", "cons", "--admin", base, "--raw").splitlines()
        assert lines[1].split() == [
            "web-0.shop",
            "Outbound",
            "127.0.0.11:7",
            "127.0.0.9:15008",
            "10.96.0.10:80",
            "NA",
        ]


def test_cli_connections_from_the_connections_endpoint(admin: str) -> None:
    lines = ok("zc", "cons", "--admin", admin, "--direction", "outbound").splitlines()
    assert lines[0].split() == ["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE", "TARGET", "PROTOCOL"]
    assert lines[1:] == [lines[1]] and "db.shop.svc.cluster.local:5432" in lines[1]


def test_cli_json_and_yaml_print_the_filtered_items(admin: str) -> None:
    items = json.loads(ok("zc", "workloads", "--admin", admin, "-o", "json", "--workload-node", "node-2"))
    assert [w["name"] for w in items] == ["db-0", "db-1"]
    svcs = yaml.safe_load(ok("zc", "services", "--admin", admin, "-o", "yaml"))
    assert [s["name"] for s in svcs] == ["db", "waypoint", "web"]
    everything = json.loads(ok("zc", "all", "--admin", admin, "-o", "json"))
    assert set(everything) >= {"workloads", "services", "policies", "certificates", "connections"}


def test_cli_all_prints_every_section(admin: str) -> None:
    out = ok("zc", "all", "--admin", admin)
    titles = [line for line in out.splitlines() if line.startswith("------")]
    assert titles == [
        "------ WORKLOAD INFO ------",
        "------ SERVICE INFO ------",
        "------ POLICY INFO ------",
        "------ SECRET INFO ------",
        "------ CONNECTIONS INFO ------",
    ]


def test_cli_reads_a_saved_dump_with_connections_from_workload_state(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    state = {
        "u": {"info": {"name": "web-0", "namespace": "shop"}, "connections": {"inbound": [], "outbound": []}}
    }
    path.write_text(json.dumps({**DUMP, "workloadState": state}))
    assert "web-0" in ok("zc", "workloads", "-f", str(path))
    assert ok("zc", "cons", "-f", str(path)).splitlines()[0].startswith("WORKLOAD")


def test_cli_unreachable_admin_is_one_actionable_line() -> None:
    # A port we just had and closed: nothing listens there.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    port = server.server_address[1]
    server.server_close()
    line = fails("zc", "workloads", "--admin", f"http://127.0.0.1:{port}")
    assert f"cannot reach the ztunnel admin endpoint at http://127.0.0.1:{port}" in line
    assert "--admin" in line


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({}, "answered HTTP 404 for /config_dump"),
        ({"/config_dump": (200, b"<html>")}, "did not return JSON"),
        ({"/config_dump": (200, b"[1, 2]")}, "not a JSON object"),
        ({"/config_dump": (500, b"{}")}, "answered HTTP 500"),
    ],
    ids=[
        "a server without /config_dump is not a ztunnel",
        "HTML instead of JSON is refused",
        "JSON that is not an object is refused",
        "a server error is reported with its status",
    ],
)
def test_cli_wrong_endpoint_is_reported(routes: dict[str, tuple[int, bytes]], message: str) -> None:
    for base in _serve(routes):
        assert message in fails("zc", "policies", "--admin", base)


def test_cli_node_without_a_local_cluster_says_so(tmp_path: Path) -> None:
    line = fails("--state-dir", str(tmp_path), "zc", "workloads", "--node", "node-1")
    assert "node-1" in line and "local cluster" in line


def test_cli_admin_and_node_together_are_refused() -> None:
    assert "either --admin or --node" in fails(
        "zc", "workloads", "--node", "n", "--admin", "http://127.0.0.1:1"
    )


def test_cli_admin_without_scheme_is_taken_as_http(admin: str) -> None:
    assert "web-0" in ok("zc", "workloads", "--admin", admin.removeprefix("http://"))


def test_cli_https_admin_is_refused() -> None:
    assert "plain http" in fails("zc", "workloads", "--admin", "https://127.0.0.1:15000")
