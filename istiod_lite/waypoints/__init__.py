"""istiod_lite.waypoints: the waypoint controller (Gateway of class ``istio-waypoint`` -> its ServiceAccount,
Deployment and Service in the store, and the Gateway's status). ``objects`` is the pure part; ``controller``
the store-writing shell istiod_lite's app runs (the only writer of these objects)."""

from istiod_lite.waypoints.controller import WaypointController
from istiod_lite.waypoints.objects import ControllerSettings, desired, gateway_status

__all__ = ["ControllerSettings", "WaypointController", "desired", "gateway_status"]
