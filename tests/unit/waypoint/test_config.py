"""The waypoint's settings: defaults, precedence and refusals that name the variable to fix."""

from __future__ import annotations

import pytest

from meshcore.config import ConfigError
from meshcore.identity import SpiffeId
from waypoint.config import parse_config

BASE = {"POD_NAME": "wp-0", "POD_NAMESPACE": "demo", "GATEWAY_NAME": "server-waypoint"}


def test_defaults_follow_istio():
    c = parse_config(BASE)
    assert c.identity == SpiffeId("cluster.local", "demo", "server-waypoint")
    assert c.gateway == "demo/server-waypoint"
    assert c.xds_address == c.ca_address == "istiod.istio-system.svc:15012"
    assert (c.hbone_port, str(c.admin_addr), str(c.stats_addr), str(c.readiness_addr)) == (
        15008, "127.0.0.1:15000", "0.0.0.0:15020", "0.0.0.0:15021")


def test_flags_win_over_the_environment_and_the_service_account_names_the_identity():
    c = parse_config({**BASE, "SERVICE_ACCOUNT": "sa1"}, {"CA_ADDRESS": "10.0.0.1:15011"})
    assert c.identity.service_account == "sa1" and c.gateway_name == "server-waypoint"
    assert c.ca_address == "10.0.0.1:15011" and c.xds_address == "istiod.istio-system.svc:15012"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"POD_NAMESPACE": "demo", "GATEWAY_NAME": "gw"}, "POD_NAME"),
        ({"POD_NAME": "p", "GATEWAY_NAME": "gw"}, "POD_NAMESPACE"),
        ({"POD_NAME": "p", "POD_NAMESPACE": "demo"}, "GATEWAY_NAME"),
        ({**BASE, "POD_IP": "not-an-ip"}, "POD_IP"),
        ({**BASE, "XDS_ADDRESS": "http://istiod:15012"}, "XDS_ADDRESS"),
        ({**BASE, "XDS_ADDRESS": "", "CA_ADDRESS": ""}, "CA_ADDRESS"),
        ({**BASE, "ADMIN_ADDR": "0.0.0.0:15000"}, "ADMIN_ADDR"),
        ({**BASE, "MAX_HEADER_BYTES": "0"}, "MAX_HEADER_BYTES"),
    ],
    ids=[
        "a missing pod name is refused", "a missing namespace is refused", "no gateway or account is refused",
        "a pod IP that is not an IP is refused", "a plaintext control plane is refused",
        "no CA at all is refused", "a non-loopback admin address is refused without the explicit allowance",
        "a zero header limit is refused",
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as err:
        parse_config(env)
    assert err.value.variable == variable


def test_a_remote_admin_address_is_allowed_when_asked_for_explicitly():
    c = parse_config({**BASE, "ADMIN_ADDR": "0.0.0.0:15000", "ADMIN_ALLOW_REMOTE": "true"})
    assert str(c.admin_addr) == "0.0.0.0:15000"
