"""Node agent settings: defaults, environment, flags over environment, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztunnel.cni.config import NodeAgentConfig, parse_config
from ztunnel.cni.errors import ConfigError
from ztunnel.config import HostPort
from ztunnel.redirect import RedirectOptions


def test_defaults_follow_istio() -> None:
    config = parse_config({"NODE_NAME": "node-1"})
    assert config == NodeAgentConfig(node_name="node-1")
    assert config.zds_socket == Path("/var/run/ztunnel/ztunnel.sock")
    assert config.monitoring_addr == HostPort("0.0.0.0", 15014)
    assert config.admin_addr == HostPort("127.0.0.1", 15015)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, HostPort("127.0.0.1", 15015)),
        ({"ADMIN_ADDR": "127.0.0.1:9901"}, HostPort("127.0.0.1", 9901)),
        ({"ADMIN_ADDR": ":9901"}, HostPort("127.0.0.1", 9901)),
        ({"ADMIN_ADDR": "[::1]:15015"}, HostPort("::1", 15015)),
        ({"ADMIN_ADDR": "0.0.0.0:15015", "ADMIN_ALLOW_REMOTE": "true"}, HostPort("0.0.0.0", 15015)),
        ({"ADMIN_ADDR": "10.0.0.7:15015", "ADMIN_ALLOW_REMOTE": "true"}, HostPort("10.0.0.7", 15015)),
        ({"ADMIN_ADDR": ""}, None),
        ({"MONITORING_ADDR": "127.0.0.1:15015", "ADMIN_ADDR": "127.0.0.2:15015"}, HostPort("127.0.0.2", 15015)),
    ],
    ids=[
        "the admin address defaults to loopback on 15015",
        "a loopback admin address is accepted",
        "a bare port binds loopback",
        "ipv6 loopback is loopback",
        "a wildcard admin bind is accepted when remote admin is allowed",
        "a node address is accepted when remote admin is allowed",
        "an empty admin address turns the debug endpoint off",
        "monitoring and admin may share a port on different addresses",
    ],
)
def test_the_admin_address(env: dict[str, str], expected: HostPort | None) -> None:
    assert parse_config({"NODE_NAME": "n", **env}).admin_addr == expected


@pytest.mark.parametrize(
    ("env", "variable", "says"),
    [
        ({"ADMIN_ADDR": "0.0.0.0:15015"}, "ADMIN_ADDR", "unless ADMIN_ALLOW_REMOTE=true"),
        ({"ADMIN_ADDR": "10.0.0.7:15015", "ADMIN_ALLOW_REMOTE": "false"}, "ADMIN_ADDR", "not a loopback address"),
        ({"ADMIN_ADDR": "[::]:15015"}, "ADMIN_ADDR", "unless ADMIN_ALLOW_REMOTE=true"),
        ({"ADMIN_ALLOW_REMOTE": "maybe"}, "ADMIN_ALLOW_REMOTE", "maybe"),
        ({"ADMIN_ADDR": "127.0.0.1:15014"}, "ADMIN_ADDR", "shares port 15014 with MONITORING_ADDR"),
        ({"ADMIN_ADDR": "localhost:15015"}, "ADMIN_ADDR", "localhost"),
        ({"ADMIN_ADDR": "0.0.0.0:15015"}, "ADMIN_ADDR", "shows every captured pod's network namespace"),
    ],
    ids=[
        "a wildcard admin bind is refused without the flag",
        "a node address is refused when remote admin is not allowed",
        "an ipv6 wildcard admin bind is refused without the flag",
        "the flag must be a boolean",
        "the admin address cannot take the monitoring port",
        "the admin address is an IP literal",
        "the refusal says what the node agent's admin port exposes (not a proxy's log levels)",
    ],
)
def test_a_remote_admin_bind_is_refused_without_the_flag(env: dict[str, str], variable: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"NODE_NAME": "n", **env})
    assert info.value.variable == variable
    assert says in str(info.value)


def test_environment_and_flags() -> None:
    config = parse_config(
        {
            "NODE_NAME": "n",
            "INPOD_UDS": "/tmp/a/ztunnel.sock",
            "MONITORING_ADDR": "",
            "ZDS_ACK_TIMEOUT": "500ms",
            "AMBIENT_DNS_CAPTURE": "true",
            "MAX_PARALLEL": "4",
        },
        flags={"INPOD_UDS": "/tmp/b/ztunnel.sock", "LOG_LEVEL": "DEBUG"},
    )
    assert config.zds_socket == Path("/tmp/b/ztunnel.sock")
    assert config.monitoring_addr is None
    assert config.zds_ack_timeout == 0.5
    assert config.redirect == RedirectOptions(dns_capture=True)
    assert (config.max_parallel, config.log_level) == (4, "debug")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "NODE_NAME"),
        ({"NODE_NAME": "n", "ZDS_ACK_TIMEOUT": "soon"}, "ZDS_ACK_TIMEOUT"),
        ({"NODE_NAME": "n", "ZDS_ACK_TIMEOUT": "0s"}, "ZDS_ACK_TIMEOUT"),
        ({"NODE_NAME": "n", "RETRY_INITIAL": "1m", "RETRY_MAX": "1s"}, "RETRY_INITIAL"),
        ({"NODE_NAME": "n", "MONITORING_ADDR": "localhost:15014"}, "MONITORING_ADDR"),
        ({"NODE_NAME": "n", "MAX_PARALLEL": "0"}, "MAX_PARALLEL"),
        ({"NODE_NAME": "n", "AMBIENT_IPV6": "maybe"}, "AMBIENT_IPV6"),
        ({"NODE_NAME": "n", "INPOD_UDS": " "}, "INPOD_UDS"),
        ({"NODE_NAME": "n", "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"NODE_NAME": "n", "STORE": "etcd"}, "STORE"),
        ({"NODE_NAME": "a,b", "STORE": "kubernetes"}, "NODE_NAME"),
    ],
    ids=[
        "the node name is required",
        "a duration must be a duration",
        "a timeout must be positive",
        "the first retry cannot wait longer than the cap",
        "listeners bind IP literals",
        "at least one pod at a time",
        "booleans are true or false",
        "a socket path cannot be blank",
        "the log format is console or json",
        "the store is sqlite or kubernetes",
        "on kubernetes the node name must not change the pods' field selector",
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ": ")


def test_the_store_is_chosen_with_istiods_setting_names() -> None:
    assert parse_config({"NODE_NAME": "n"}).store == "sqlite"
    config = parse_config({"NODE_NAME": "n", "STORE": " Kubernetes ", "KUBECONFIG": "/k/config",
                           "KUBE_CONTEXT": "prod"})
    assert (config.store, config.kubeconfig, config.kube_context) == ("kubernetes", "/k/config", "prod")
    in_cluster = parse_config({"NODE_NAME": "n", "STORE": "kubernetes", "KUBECONFIG": ""})
    assert (in_cluster.kubeconfig, in_cluster.kube_context) == (None, None)
