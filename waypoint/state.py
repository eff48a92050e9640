"""The waypoint's view of the mesh: one immutable snapshot of what istiod_lite pushed to it.

``WaypointState`` holds the mesh's workloads, services and L4 policies (a ``ProxyState``, Istio's
``Address`` and ``Authorization`` types) and the waypoint's L7 policies (``L7Authorization`` by
``namespace/name``). ``WAYPOINT_KINDS`` is the xDS client's registry for it: the three type URLs, each
applied to its part of the snapshot, so one delta-ADS stream keeps the whole thing current and a bad
resource of any kind is NACKed alone. Pure values; the xDS client publishes new snapshots through a
``StateCell``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL, l7_authorization_from_proto
from meshcore.model.l7 import L7Authorization
from meshcore.proto import waypoint_pb2
from meshcore.state import ProxyState
from meshcore.state.kinds import EMPTY, PROXY_STATE_KINDS, ResourceKind, focus, map_kind


@dataclass(frozen=True, slots=True)
class WaypointState:
    proxy: ProxyState = field(default_factory=ProxyState.empty)
    l7_policies: Mapping[str, L7Authorization] = field(default_factory=lambda: EMPTY)

    @property
    def version(self) -> int:
        return self.proxy.version


def _decode_l7(raw: bytes) -> L7Authorization:
    return l7_authorization_from_proto(waypoint_pb2.L7Authorization.FromString(raw))


L7_POLICY_KIND = map_kind(L7_AUTHORIZATION_TYPE_URL, _decode_l7, lambda policy: policy.key)

WAYPOINT_KINDS: tuple[ResourceKind[WaypointState], ...] = (
    *(focus(kind, lambda s: s.proxy, lambda s, p: replace(s, proxy=p)) for kind in PROXY_STATE_KINDS),
    focus(L7_POLICY_KIND, lambda s: s.l7_policies, lambda s, p: replace(s, l7_policies=p)),
)
