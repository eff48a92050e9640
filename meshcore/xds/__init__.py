"""Sans-IO delta-xDS client: subscriptions, nonces, resource versions, ACK/NACK bookkeeping, backoff.

The asyncio/gRPC driver is ``meshcore.aio.xds_client``; decoding resources into a snapshot is
``meshcore.state.apply_delta``. Nothing here imports asyncio, grpc or a clock.
"""

from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.xds.backoff import Backoff
from meshcore.xds.errors import (
    AckMismatch,
    MalformedResponse,
    ProtocolError,
    ProtocolMisuse,
    ResponseOutOfOrder,
    UnknownTypeUrl,
    XdsError,
)
from meshcore.xds.protocol import DeltaXdsClientProtocol, nack_message
from meshcore.xds.types import ZTUNNEL_TYPE_URLS, Received

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "ZTUNNEL_TYPE_URLS",
    "AckMismatch",
    "Backoff",
    "DeltaXdsClientProtocol",
    "MalformedResponse",
    "ProtocolError",
    "ProtocolMisuse",
    "Received",
    "ResponseOutOfOrder",
    "UnknownTypeUrl",
    "XdsError",
    "nack_message",
]
