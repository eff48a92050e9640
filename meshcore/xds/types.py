"""Value types of the delta-xDS client: the type URLs ambient uses and what one response delivers.

Plain immutable values; no protobuf parsing happens here (``protocol`` produces them, ``meshcore.state``
decodes the resource bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

# The types ztunnel subscribes to, in subscription order.
ZTUNNEL_TYPE_URLS: tuple[str, ...] = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)


@dataclass(frozen=True, slots=True)
class Received:
    """One delta response, checked at the protocol level and ready for ``apply_delta``."""

    type_url: str
    # Nonce to echo in the ACK/NACK.
    nonce: str
    # name -> version, and name -> serialized resource body (the Any's value bytes), for the same names.
    # Two flat maps rather than one of pairs: a full push holds 10,000s of them.
    versions: Mapping[str, str]
    bodies: Mapping[str, bytes]
    # Names the control plane removed.
    removals: tuple[str, ...]
    # name -> reason for resources rejected before decoding (no body, wrong Any type, duplicate name).
    # The driver must NACK these along with whatever ``apply_delta`` rejects.
    malformed: Mapping[str, str] = field(default_factory=dict)

    @property
    def updates(self) -> dict[str, tuple[str, bytes]]:
        """name -> (version, body) of every update."""
        return {name: (version, self.bodies[name]) for name, version in self.versions.items()}
