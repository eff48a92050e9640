"""The CNI plugin runs as a fresh process for every pod's ADD and DEL, so what it imports is paid per pod:
it must not load the node agent's kernel side (``ztunnel.redirect`` and pyroute2)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_plugin_module_loads_neither_pyroute2_nor_the_redirection_code() -> None:
    probe = (
        "import json, sys, ztunnel.cni.plugin; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2' "
        "or m.startswith('ztunnel.redirect'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_agent_settings_still_carry_the_redirect_options() -> None:
    from ztunnel.cni.config import parse_config

    config = parse_config({"NODE_NAME": "node-1", "AMBIENT_DNS_CAPTURE": "true"}, {})
    assert config.redirect.dns_capture is True and config.redirect.ipv6 is False
