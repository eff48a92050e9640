"""The token CA settings: where istiod-lite serves it, how it is turned off, what waypoint pods are told."""

from __future__ import annotations

from pathlib import Path

import pytest

from istiod_lite.config import ConfigError, parse_config

CASES = [
    ("by default the token CA is on the xDS host at 15011", {}, None, ("0.0.0.0", 15011)),
    ("it follows an xDS address bound to one IP", {"ISTIOD_XDS_ADDRESS": "10.1.2.3:15012"}, None, ("10.1.2.3", 15011)),
    ("the environment sets it", {"ISTIOD_TOKEN_CA_ADDRESS": "127.0.0.1:9911"}, None, ("127.0.0.1", 9911)),
    ("the flag wins over the environment", {"ISTIOD_TOKEN_CA_ADDRESS": "127.0.0.1:9911"}, "127.0.0.2:9912",
     ("127.0.0.2", 9912)),
    ("off disables it", {}, "off", None),
    ("port 0 picks a free port, as for every other address", {}, "127.0.0.1:0", ("127.0.0.1", 0)),
]


@pytest.mark.parametrize(("env", "flag", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_token_ca_address(tmp_path: Path, env, flag, want):
    config = parse_config(state_dir=str(tmp_path), token_ca_address=flag, env=env)
    got = None if config.token_ca_port is None else (config.token_ca_host, config.token_ca_port)
    assert got == want


def test_a_bad_token_ca_address_names_the_setting(tmp_path: Path):
    with pytest.raises(ConfigError, match="ISTIOD_TOKEN_CA_ADDRESS"):
        parse_config(state_dir=str(tmp_path), env={"ISTIOD_TOKEN_CA_ADDRESS": "nowhere"})


WAYPOINT_CA = [
    ("waypoints dial the default istiod name at the token port", {}, "istiod.istio-system.svc:15011"),
    ("waypoints dial the waypoint xDS host at the token port", {"WAYPOINT_XDS_ADDRESS": "172.30.0.254:15012"},
     "172.30.0.254:15011"),
    ("a token CA on another port is what waypoints are told",
     {"WAYPOINT_XDS_ADDRESS": "172.30.0.254:15012", "ISTIOD_TOKEN_CA_ADDRESS": "0.0.0.0:16011"}, "172.30.0.254:16011"),
    ("WAYPOINT_CA_ADDRESS wins", {"WAYPOINT_CA_ADDRESS": "ca.example:443"}, "ca.example:443"),
]


@pytest.mark.parametrize(("env", "want"), [c[1:] for c in WAYPOINT_CA], ids=[c[0] for c in WAYPOINT_CA])
def test_waypoint_ca_address(tmp_path: Path, env, want):
    assert parse_config(state_dir=str(tmp_path), env=env).waypoint_ca_address == want


def test_a_bad_waypoint_ca_address_names_the_setting(tmp_path: Path):
    with pytest.raises(ConfigError, match="WAYPOINT_CA_ADDRESS"):
        parse_config(state_dir=str(tmp_path), env={"WAYPOINT_CA_ADDRESS": "no-port"})
