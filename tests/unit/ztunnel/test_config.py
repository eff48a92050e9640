"""ztunnel configuration: defaults, flags over environment, and one actionable error per bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztunnel.config import (
    CaAuth,
    ConfigError,
    HostPort,
    ProxyMode,
    parse_config,
    parse_duration,
)

BASE = {"NODE_NAME": "node-1", "NODE_CREDENTIAL_DIR": "/etc/ztunnel/cred"}
LOCAL = {"NODE_NAME": "node-1", "LOCAL_XDS_PATH": "/tmp/mesh.yaml", "FAKE_CA": "true"}


def test_defaults_follow_istio_ports_and_the_control_plane_on_localhost():
    c = parse_config(BASE)
    assert c.node_name == "node-1" and c.proxy_mode is ProxyMode.DEDICATED
    assert (c.xds_address, c.ca_address) == ("localhost:15012", "localhost:15012")
    assert c.admin_addr == HostPort("127.0.0.1", 15000)
    assert (c.stats_addr.port, c.readiness_addr.port, c.socks5_addr, c.hbone_port) == (
        15020, 15021, HostPort("127.0.0.1", 15080), 15008
    )
    assert (c.inbound_plaintext_port, c.inbound_plaintext_target_port) == (15006, None)
    assert (c.trust_domain, c.cluster_id, c.drain_duration, c.secret_ttl_seconds) == (
        "cluster.local", "Kubernetes", 5.0, 86400
    )
    assert (c.pool_max_streams, c.pool_idle_timeout, c.log_level, c.log_format) == (100, 300.0, "info", "console")


def test_a_local_config_file_replaces_the_control_plane_and_the_fake_ca_needs_no_credential():
    c = parse_config(LOCAL)
    assert c.xds_address is None and c.ca_address is None and c.fake_ca
    assert c.local_xds_path == Path("/tmp/mesh.yaml") and c.node_credential_dir is None


def test_flags_win_over_the_environment():
    c = parse_config({**LOCAL, "LOG_LEVEL": "info"}, flags={"LOG_LEVEL": "debug", "NODE_NAME": "node-9"})
    assert (c.log_level, c.node_name) == ("debug", "node-9")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDS_ADDRESS": "https://istiod.istio-system.svc:15012"}, ("istiod.istio-system.svc:15012", "istiod.istio-system.svc:15012")),
        ({"XDS_ADDRESS": "10.0.0.1:15012", "CA_ADDRESS": "10.0.0.2:15012"}, ("10.0.0.1:15012", "10.0.0.2:15012")),
    ],
    ids=["an https xds address also serves as the ca address", "the ca address can differ from the xds address"],
)
def test_control_plane_addresses(env, expected):
    c = parse_config({**BASE, **env})
    assert (c.xds_address, c.ca_address) == expected


def test_durations_and_addresses_parse_in_their_usual_forms():
    c = parse_config({
        **LOCAL, "DRAIN_DURATION": "500ms", "SECRET_TTL": "1h", "POOL_UNUSED_RELEASE_TIMEOUT": "2m",
        "ADMIN_ADDR": ":0", "STATS_ADDR": "[::1]:9090", "SOCKS5_ADDR": "", "INBOUND_PLAINTEXT_TARGET_PORT": "8080",
    })
    assert (c.drain_duration, c.secret_ttl_seconds, c.pool_idle_timeout) == (0.5, 3600, 120.0)
    assert (c.admin_addr, c.stats_addr, c.socks5_addr) == (HostPort("127.0.0.1", 0), HostPort("::1", 9090), None)
    assert c.inbound_plaintext_target_port == 8080


def test_istios_connection_termination_deadline_is_honoured_when_drain_duration_is_unset():
    assert parse_config({**LOCAL, "CONNECTION_TERMINATION_DEADLINE": "12s"}).drain_duration == 12.0
    assert parse_config({**LOCAL, "CONNECTION_TERMINATION_DEADLINE": "12s", "DRAIN_DURATION": "1s"}).drain_duration == 1.0


@pytest.mark.parametrize(
    ("env", "variable", "hint"),
    [
        ({"NODE_NAME": ""}, "NODE_NAME", "spec.nodeName"),
        ({"PROXY_MODE": "sidecar"}, "PROXY_MODE", "dedicated, shared"),
        ({"TRUST_DOMAIN": "Bad Domain"}, "TRUST_DOMAIN", "trust domain"),
        ({"XDS_ADDRESS": "http://istiod:15012"}, "XDS_ADDRESS", "plaintext"),
        ({"XDS_ADDRESS": "istiod"}, "XDS_ADDRESS", "HOST:PORT"),
        ({"XDS_ADDRESS": "", "LOCAL_XDS_PATH": ""}, "XDS_ADDRESS", "one source"),
        ({"XDS_ADDRESS": "istiod:15012", "LOCAL_XDS_PATH": "/m.yaml"}, "XDS_ADDRESS", "one source"),
        ({"XDS_ADDRESS": "", "LOCAL_XDS_PATH": "/m.yaml"}, "CA_ADDRESS", "FAKE_CA=true"),
        ({"NODE_CREDENTIAL_DIR": ""}, "NODE_CREDENTIAL_DIR", "node-credential"),
        ({"FAKE_CA_DIR": "/tmp/ca"}, "FAKE_CA_DIR", "FAKE_CA=true"),
        ({"FAKE_CA": "maybe"}, "FAKE_CA", "boolean"),
        ({"ADMIN_ADDR": "localhost:15000"}, "ADMIN_ADDR", "IP address"),
        ({"STATS_ADDR": "0.0.0.0:99999"}, "STATS_ADDR", "HOST:PORT"),
        ({"HBONE_PORT": "0"}, "HBONE_PORT", "TCP port"),
        ({"INBOUND_PLAINTEXT_TARGET_PORT": "http"}, "INBOUND_PLAINTEXT_TARGET_PORT", "TCP port"),
        ({"DRAIN_DURATION": "soon"}, "DRAIN_DURATION", "duration"),
        ({"SECRET_TTL": "0s"}, "SECRET_TTL", "at least 1s"),
        ({"POOL_MAX_STREAMS_PER_CONNECTION": "0"}, "POOL_MAX_STREAMS_PER_CONNECTION", "positive"),
        ({"LOG_LEVEL": "trace"}, "LOG_LEVEL", "debug"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "console or json"),
    ],
    ids=[
        "a missing node name is refused",
        "an unknown proxy mode is refused",
        "an invalid trust domain is refused",
        "a plaintext control plane address is refused",
        "an xds address without a port is refused",
        "no configuration source at all is refused",
        "xds and a local file together are refused",
        "no ca without a control plane is refused unless the fake ca is on",
        "a control plane without a node credential is refused",
        "a fake ca directory without the fake ca is refused",
        "a non-boolean fake ca flag is refused",
        "a listen address that is a name is refused",
        "a port above 65535 is refused",
        "hbone port zero is refused",
        "a named plaintext target port is refused",
        "an unreadable drain duration is refused",
        "a zero certificate ttl is refused",
        "zero streams per pooled connection is refused",
        "an unknown log level is refused",
        "an unknown log format is refused",
    ],
)
def test_bad_settings_name_the_variable_and_say_what_to_do(env, variable, hint):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **env})
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ") and hint in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5.0), ("5s", 5.0), ("250ms", 0.25), ("1.5m", 90.0), ("24h", 86400.0), ("1d", 86400.0)],
    ids=["bare seconds", "seconds", "milliseconds", "fractional minutes", "hours", "days"],
)
def test_duration_forms(text, seconds):
    assert parse_duration(text, "X") == seconds


def test_the_admin_port_refuses_a_non_loopback_address_unless_explicitly_allowed():
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "ADMIN_ADDR": "0.0.0.0:15000"})
    assert err.value.variable == "ADMIN_ADDR" and "ADMIN_ALLOW_REMOTE=true" in str(err.value)
    c = parse_config({**BASE, "ADMIN_ADDR": "0.0.0.0:15000", "ADMIN_ALLOW_REMOTE": "true"})
    assert c.admin_addr == HostPort("0.0.0.0", 15000)
    assert parse_config({**BASE, "ADMIN_ADDR": "[::1]:15000"}).admin_addr == HostPort("::1", 15000)


# CA_AUTH=token: ztunnel on Kubernetes authenticates with its projected service-account token.
TOKEN = {"NODE_NAME": "node-1", "XDS_ADDRESS": "istiod.istio-system.svc:15012",
         "CA_ADDRESS": "istiod.istio-system.svc:15011", "CA_AUTH": "token"}


def test_token_mode_needs_no_node_credential_and_defaults_to_istios_paths_and_own_identity():
    c = parse_config(TOKEN)
    assert c.ca_auth is CaAuth.TOKEN and c.node_credential_dir is None
    assert (c.xds_address, c.ca_address) == ("istiod.istio-system.svc:15012", "istiod.istio-system.svc:15011")
    assert c.token_path == Path("/var/run/secrets/tokens/istio-token")
    assert c.ca_root_path == Path("/var/run/secrets/istio/root-cert.pem")
    assert (c.pod_namespace, c.service_account) == ("istio-system", "ztunnel")
    moved = parse_config({**TOKEN, "ISTIO_TOKEN_PATH": "/t/token", "CA_ROOT_CA": "/r/root.pem"})
    assert (moved.token_path, moved.ca_root_path) == (Path("/t/token"), Path("/r/root.pem"))


def test_the_local_cluster_keeps_the_node_credential_by_default():
    assert parse_config(BASE).ca_auth is CaAuth.NODE_CREDENTIAL


TOKEN_REFUSED = [
    ("an unknown ca authentication is refused", {"CA_AUTH": "password"}, "CA_AUTH", "node-credential, token"),
    ("a token and a node credential together are refused", {"NODE_CREDENTIAL_DIR": "/c"}, "NODE_CREDENTIAL_DIR",
     "one credential"),
    ("token mode without the token ca address is refused (15012 wants a client certificate)",
     {"CA_ADDRESS": None}, "CA_ADDRESS", "token CA port"),
    ("token mode with the fake ca is refused", {"FAKE_CA": "true"}, "CA_AUTH", "FAKE_CA"),
    ("an empty token path is refused", {"ISTIO_TOKEN_PATH": " "}, "ISTIO_TOKEN_PATH", "is empty"),
    ("an empty root path is refused", {"CA_ROOT_CA": ""}, "CA_ROOT_CA", "is empty"),
    ("an own service account that makes no identity is refused", {"SERVICE_ACCOUNT": "Zt/unnel"}, "SERVICE_ACCOUNT",
     "POD_NAMESPACE"),
]


@pytest.mark.parametrize(("changes", "variable", "hint"), [c[1:] for c in TOKEN_REFUSED],
                         ids=[c[0] for c in TOKEN_REFUSED])
def test_token_mode_refuses_what_it_cannot_use(changes, variable, hint):
    env = {k: v for k, v in {**TOKEN, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_config(env)
    assert info.value.variable == variable and hint in str(info.value)
