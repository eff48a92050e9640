"""Errors of the state package.

Only local misuse raises here: bad *peer* input never raises out of ``apply_delta``, it becomes a
``Rejection`` for that one resource while the rest of the delta applies.
"""

from __future__ import annotations


class StateError(Exception):
    """Base class for errors raised by ``meshcore.state``."""


class UnsupportedTypeUrl(StateError):
    """``apply_delta`` was handed a type URL the state does not hold (a caller bug: the xDS protocol
    layer must only forward subscribed types)."""

    def __init__(self, type_url: str, supported: tuple[str, ...]) -> None:
        super().__init__(
            f"cannot apply resources of type {type_url!r}; ProxyState holds only {', '.join(supported)}"
        )
        self.type_url = type_url
