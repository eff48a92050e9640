"""The proxy's view of the mesh: an immutable ``ProxyState`` snapshot with lookup indexes, and
``apply_delta`` which builds the next snapshot from one delta-xDS response (bad resources rejected alone).

``DeltaApplier`` does what ``apply_delta`` does in bounded steps (for an event loop that must keep
serving); ``StateEditor`` is the copy-on-write draft both use; ``FrozenMap`` (``frozenmap``) is the sharded
immutable map behind the snapshot's indexes, so a one-resource delta copies only what it touches.
Pure (sans-IO): no asyncio, sockets, gRPC or clocks. Publication to readers is ``meshcore.aio.state_cell``.
"""

from meshcore.state.apply import SUPPORTED_TYPE_URLS, DeltaApplier, Rejection, apply_delta
from meshcore.state.errors import StateError, UnsupportedTypeUrl
from meshcore.state.snapshot import ProxyState, StateEditor

__all__ = [
    "SUPPORTED_TYPE_URLS",
    "DeltaApplier",
    "ProxyState",
    "Rejection",
    "StateEditor",
    "StateError",
    "UnsupportedTypeUrl",
    "apply_delta",
]
