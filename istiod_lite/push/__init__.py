"""istiod_lite's delta ADS push: serve Address and Authorization resources to ztunnels and waypoints.

``PushServer`` (server.py) is the gRPC servicer and the only public entry point: the app feeds it protobuf
messages with ``set_resources`` and registers it on its gRPC server. ``state.py`` (per-stream protocol
bookkeeping) and ``debounce.py`` (when to push) are pure; ``errors.py`` holds the typed errors.
"""

from istiod_lite.push.errors import InvalidRequestError, PushError, PushUsageError
from istiod_lite.push.server import METRIC_TYPES, SERVED_TYPES, PushServer
from istiod_lite.push.state import StreamLimits

__all__ = [
    "METRIC_TYPES",
    "SERVED_TYPES",
    "InvalidRequestError",
    "PushError",
    "PushServer",
    "PushUsageError",
    "StreamLimits",
]
