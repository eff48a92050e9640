"""The waypoint's view of the mesh: one immutable snapshot of what istiod_lite pushed to it.

``WaypointState`` holds the mesh's workloads, services and L4 policies (a ``ProxyState``, Istio's
``Address`` and ``Authorization`` types), the waypoint's L7 policies (``L7Authorization`` by
``namespace/name``) and the traffic config of each destination service (``ServiceTraffic`` by service
key ``namespace/hostname``). ``WAYPOINT_KINDS`` is the xDS client's registry for it: the four type URLs, each
applied to its part of the snapshot, so one delta-ADS stream keeps the whole thing current and a bad
resource of any kind is NACKed alone. Pure values; the xDS client publishes new snapshots through a
``StateCell``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL, l7_authorization_from_proto
from meshcore.model.convert_traffic import SERVICE_TRAFFIC_TYPE_URL, service_traffic_from_proto
from meshcore.model.l7 import L7Authorization
from meshcore.model.traffic import ServiceTraffic
from meshcore.proto import traffic_pb2, waypoint_pb2
from meshcore.state import ProxyState
from meshcore.state.kinds import EMPTY, PROXY_STATE_KINDS, ResourceKind, focus, map_kind


@dataclass(frozen=True, slots=True)
class WaypointState:
    proxy: ProxyState = field(default_factory=ProxyState.empty)
    l7_policies: Mapping[str, L7Authorization] = field(default_factory=lambda: EMPTY)
    traffic: Mapping[str, ServiceTraffic] = field(default_factory=lambda: EMPTY)

    @property
    def version(self) -> int:
        return self.proxy.version


def _decode_l7(raw: bytes) -> L7Authorization:
    return l7_authorization_from_proto(waypoint_pb2.L7Authorization.FromString(raw))


def _decode_traffic(raw: bytes) -> ServiceTraffic:
    return service_traffic_from_proto(traffic_pb2.ServiceTraffic.FromString(raw))


L7_POLICY_KIND = map_kind(L7_AUTHORIZATION_TYPE_URL, _decode_l7, lambda policy: policy.key)
SERVICE_TRAFFIC_KIND = map_kind(SERVICE_TRAFFIC_TYPE_URL, _decode_traffic, lambda traffic: traffic.key)

WAYPOINT_KINDS: tuple[ResourceKind[WaypointState], ...] = (
    *(focus(kind, lambda s: s.proxy, lambda s, p: replace(s, proxy=p)) for kind in PROXY_STATE_KINDS),
    focus(L7_POLICY_KIND, lambda s: s.l7_policies, lambda s, p: replace(s, l7_policies=p)),
    focus(SERVICE_TRAFFIC_KIND, lambda s: s.traffic, lambda s, t: replace(s, traffic=t)),
)
