"""The CNI plugin's settings: its network configuration JSON on stdin, decoded and checked.

``decode_plugin_config(stdin)`` -> ``PluginConfig``; keys as in a conflist entry (``cniVersion``,
``name``, ``type``, ``prevResult``) plus ours: ``enrollment`` (who decides whether a pod is enrolled:
``"store"``, the default and the local cluster's, the plugin itself from the embedded store; ``"agent"``,
written by the node agent's host install on Kubernetes, where a node has no store: the node agent, from its
view of the API server), ``state_dir`` (the embedded store, read in ``"store"`` mode), ``cni_event_address``
(the agent's event socket, Istio's key name) and ``event_timeout`` (seconds the plugin waits for the agent
to capture an enrolled pod). Unknown keys are ignored, as CNI
plugins must. Apart from the node agent's settings (``config``) because the plugin is a fresh process per
pod: this module imports only msgspec and the plugin's errors. Pure: reads only what it is given.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ztunnel.cni.errors import CniConfigInvalid, CniDecodeFailed, CniVersionUnsupported

SUPPORTED_CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
DEFAULT_EVENT_SOCKET = (
    "/var/run/ambient-cni/pluginevent.sock"  # istio-cni: /var/run/istio-cni/pluginevent.sock
)
DEFAULT_EVENT_TIMEOUT = 30.0
MAX_CONFIG_BYTES = 1 << 20
ENROLLMENT_STORE = "store"  # the plugin decides from the embedded store (the local cluster)
ENROLLMENT_AGENT = "agent"  # the node agent decides (Kubernetes: no store on the node)
Enrollment = Literal["store", "agent"]


class PluginConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin entry of a conflist as the runtime hands it over (with ``prevResult`` when chained)."""

    cni_version: str = msgspec.field(name="cniVersion")
    name: str = ""
    type: str = ""
    # Who decides whether a pod is enrolled: the plugin from the embedded store, or the node agent.
    enrollment: Enrollment = ENROLLMENT_STORE
    # Directory of the embedded store (``<state_dir>/store.db``); None: the default state directory.
    state_dir: str | None = None
    cni_event_address: str = DEFAULT_EVENT_SOCKET
    event_timeout: float = DEFAULT_EVENT_TIMEOUT
    # The previous plugin's result, passed through untouched (kept as raw JSON so nothing is lost);
    # empty when the runtime sent none (see ``prev_result_json``).
    prev_result: msgspec.Raw = msgspec.field(name="prevResult", default_factory=msgspec.Raw)

    @property
    def prev_result_json(self) -> bytes | None:
        """The previous result's JSON bytes, or None when there is none (absent or null)."""
        data = bytes(self.prev_result).strip()
        return None if data in (b"", b"null") else data


def decode_plugin_config(data: bytes) -> PluginConfig:
    """The network config on stdin; ``CniDecodeFailed`` for non-JSON, ``CniConfigInvalid`` for a bad
    field, ``CniVersionUnsupported`` for a cniVersion we do not speak."""
    if len(data) > MAX_CONFIG_BYTES:
        raise CniDecodeFailed(f"{len(data)} bytes, over the {MAX_CONFIG_BYTES}-byte limit")
    if not data.strip():
        raise CniDecodeFailed("stdin is empty")
    try:
        raw: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise CniDecodeFailed(str(e)) from None
    if not isinstance(raw, dict):
        raise CniDecodeFailed(f"expected a JSON object, got {type(raw).__name__}")
    try:
        conf = msgspec.json.decode(data, type=PluginConfig)
    except msgspec.ValidationError as e:
        raise CniConfigInvalid(str(e)) from None
    if conf.cni_version not in SUPPORTED_CNI_VERSIONS:
        raise CniVersionUnsupported(conf.cni_version, SUPPORTED_CNI_VERSIONS)
    if not conf.event_timeout > 0:
        raise CniConfigInvalid(
            f"event_timeout must be a positive number of seconds, got {conf.event_timeout}"
        )
    if not conf.cni_event_address:
        raise CniConfigInvalid("cni_event_address must be the path of the node agent's event socket")
    return conf
